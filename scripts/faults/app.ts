/**
 * The build, laid out as the container image has it: bin/ and dist/, no src/. Fault runs
 * exercise what ships, and each of their thousands of processes starts on plain Node in a
 * third of the CPU time that tsx needs.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../../test/helpers/jobs.js';

export interface App {
  /** The build's `reconciler.js`, to run with `node`. */
  bin: string;
  /** A module of the build, e.g. `src/index.js`, as an absolute path a job file can import. */
  module(path: string): string;
  remove(): void;
}

export async function buildApp(): Promise<App> {
  const dir = join(REPO_ROOT, 'test', '.tmp', `faults-app-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  const tsc = join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  await promisify(execFile)(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', join(dir, 'dist')], { cwd: REPO_ROOT }).catch((error: { stdout?: string }) => {
    throw new Error(`the build failed (tsc -p tsconfig.build.json):\n${error.stdout ?? String(error)}`);
  });
  cpSync(join(REPO_ROOT, 'src', 'store', 'migrations'), join(dir, 'dist', 'src', 'store', 'migrations'), { recursive: true });
  mkdirSync(join(dir, 'bin'));
  copyFileSync(join(REPO_ROOT, 'bin', 'reconciler.js'), join(dir, 'bin', 'reconciler.js'));
  return {
    bin: join(dir, 'bin', 'reconciler.js'),
    module: (path) => join(dir, 'dist', path),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
