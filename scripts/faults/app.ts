/**
 * The build, laid out as the container image has it: bin/ and dist/, no src/, with the
 * returns example compiled beside the engine (dist/examples/). Fault runs exercise what
 * ships, and each of their thousands of processes runs JavaScript, not TypeScript.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../../testkit/jobs.js';

export interface App {
  /** The build's `reconciler.js`, to run with `node`. */
  bin: string;
  /** A module of the build, e.g. `src/index.js`, as an absolute path a job file can import. */
  module(path: string): string;
  /** `--import` this (the build's bin/register.js) to run a module that imports 'reconciler'. */
  register: string;
  remove(): void;
}

export async function buildApp(): Promise<App> {
  const dir = join(REPO_ROOT, 'test', '.tmp', `faults-app-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  const tsc = join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const config = join('scripts', 'faults', 'tsconfig.app.json');
  await promisify(execFile)(process.execPath, [tsc, '-p', config, '--outDir', join(dir, 'dist'), '--rootDir', REPO_ROOT], { cwd: REPO_ROOT }).catch((error: { stdout?: string }) => {
    throw new Error(`the build failed (tsc -p ${config}):\n${error.stdout ?? String(error)}`);
  });
  cpSync(join(REPO_ROOT, 'src', 'store', 'migrations'), join(dir, 'dist', 'src', 'store', 'migrations'), { recursive: true });
  cpSync(join(REPO_ROOT, 'examples', 'returns', 'migrations'), join(dir, 'dist', 'examples', 'returns', 'migrations'), { recursive: true });
  mkdirSync(join(dir, 'bin'));
  for (const file of ['reconciler.js', 'register.js', 'module-hooks.js']) copyFileSync(join(REPO_ROOT, 'bin', file), join(dir, 'bin', file));
  return {
    bin: join(dir, 'bin', 'reconciler.js'),
    register: join(dir, 'bin', 'register.js'),
    module: (path) => join(dir, 'dist', path),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
