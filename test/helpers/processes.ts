/** The testkit's processes (testkit/processes.ts), and a vitest hook that cleans up after each test. */
import { afterEach } from 'vitest';
import type { JobsDir } from '../../testkit/jobs.js';
import type { RunningProcess } from '../../testkit/processes.js';

export * from '../../testkit/processes.js';

/**
 * The child processes and job folders a test file starts: push them on the returned lists,
 * and each is killed (SIGKILL) or removed after every test, whatever the test did.
 */
export function useCleanup(): { children: RunningProcess[]; dirs: JobsDir[] } {
  const children: RunningProcess[] = [];
  const dirs: JobsDir[] = [];
  afterEach(async () => {
    await Promise.all(children.splice(0).map((child) => child.kill('SIGKILL')));
    for (const dir of dirs.splice(0)) dir.cleanup();
  });
  return { children, dirs };
}
