import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { sql } from 'drizzle-orm';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { jobsDir, tableJob, tableSql, type JobsDir } from './helpers/jobs.js';
import { BIN, childEnv } from './helpers/processes.js';

/** Runs the CLI under a pseudo-terminal (util-linux `script`), as a person at a terminal would. */
async function onTerminal(args: string[], env: Record<string, string>): Promise<string> {
  const command = [process.execPath, BIN, ...args].map((a) => `'${a}'`).join(' ');
  const { stdout } = await promisify(execFile)('script', ['-qec', command, '/dev/null'], { env: childEnv(env) });
  return stdout;
}

let t: TestDatabase;
let jobs: JobsDir;
beforeAll(async () => {
  t = await createTestDatabase();
  await t.rows(sql.raw(tableSql(8)));
  jobs = jobsDir({ 'items.ts': tableJob({ delayMs: 120, concurrency: 1 }) });
});
afterAll(async () => {
  jobs.cleanup();
  await t.drop();
});

describe('on a terminal', () => {
  it('a manual pass shows a live progress line with done/found, failed and rate', async () => {
    const output = await onTerminal(['run', 'items'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir });
    expect(output).toMatch(/\r\x1b\[2Kitems: \d+\/8 done, 0 failed, \d+\/s/);
    expect(output).toContain('items: pass 1 succeeded');
  });

  it('logs are human-readable, not JSON', async () => {
    const output = await onTerminal(['run', 'items', '--dry-run'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info' });
    expect(output).toMatch(/INFO.*items: dry run succeeded/);
    expect(output).not.toContain('"level":');
  });

  it('--json output carries no colour and no progress, even on a terminal', async () => {
    const output = await onTerminal(['run', 'items', '--json', '--dry-run'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir });
    expect(output).not.toContain('\x1b[');
    const lines = output.trim().split(/\r?\n/).map((line) => JSON.parse(line));
    expect(lines.at(-1)).toMatchObject({ type: 'pass', reconciler: 'items', dryRun: true, status: 'succeeded' });
  });
});
