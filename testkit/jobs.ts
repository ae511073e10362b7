/**
 * Job files for tests, written to a temporary folder inside the repository (so that
 * their imports resolve like those of jobs/), removed by `cleanup()`.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
/** The import specifier job files use for the public API. */
export const API = join(REPO_ROOT, 'src', 'index.js');

export interface JobsDir {
  dir: string;
  write(file: string, source: string): string;
  remove(file: string): void;
  cleanup(): void;
}

export function jobsDir(files: Record<string, string> = {}): JobsDir {
  const dir = join(REPO_ROOT, 'test', '.tmp', `jobs-${randomBytes(4).toString('hex')}`);
  mkdirSync(dir, { recursive: true });
  const jobs: JobsDir = {
    dir,
    write(file, source) {
      const path = join(dir, file);
      writeFileSync(path, source);
      return path;
    },
    remove(file) {
      rmSync(join(dir, file), { force: true });
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
  for (const [file, source] of Object.entries(files)) jobs.write(file, source);
  return jobs;
}

/**
 * A job file over a test table `items(id serial, name text, done boolean)`: it finds the
 * rows not done yet and marks them done. Options tune its behaviour for a test.
 */
export function tableJob(options: { /** The import specifier of the public API (default: this checkout's sources). */ api?: string; schedule?: string; table?: string; delayMs?: number; failKeys?: string[]; /** Fail at the first attempt only. */ failOnceKeys?: string[]; concurrency?: number; /** Split by `reconciler.partition_of(name, n)`; the scan filters on it. */ partitions?: number; /** Each item first waits until this file exists: a test opens the gate when it is ready. */ gate?: string; extra?: string } = {}): string {
  const table = options.table ?? 'items';
  return `
import { defineReconciler, sql, TerminalError } from ${JSON.stringify(options.api ?? API)};
const failKeys = new Set(${JSON.stringify(options.failKeys ?? [])});
const failOnceKeys = new Set(${JSON.stringify(options.failOnceKeys ?? [])});
export default defineReconciler({
  schedule: ${JSON.stringify(options.schedule ?? '0 0 1 1 *')},
  description: 'marks ${table} done',
  concurrency: ${options.concurrency ?? 4},
  pageSize: 50,${options.partitions ? `
  partitions: ${options.partitions},` : ''}
  scan: async ({ db, after, limit, partition }) => {
    const result = await db.execute(sql\`SELECT id, name FROM ${table} WHERE NOT done AND id > \${after?.id ?? 0}${options.partitions ? ' AND reconciler.partition_of(name, \${partition.count}::int) = \${partition.index}::int' : ''} ORDER BY id LIMIT \${limit}\`);
    return result.rows as { id: number; name: string }[];
  },
  key: (item) => item.name,
  reconcile: async (item, ctx) => {
    if (failKeys.has(item.name) || (failOnceKeys.has(item.name) && ctx.attempt === 1)) throw new Error('cannot reconcile ' + item.name);
    ${options.gate ? `while (!(await import('node:fs')).existsSync(${JSON.stringify(options.gate)})) { ctx.signal.throwIfAborted(); await new Promise((resolve) => setTimeout(resolve, 20)); }` : ''}
    ${options.delayMs ? `await new Promise((resolve, reject) => { const t = setTimeout(resolve, ${options.delayMs}); ctx.signal.addEventListener('abort', () => { clearTimeout(t); reject(ctx.signal.reason); }); });` : ''}
    if (ctx.dryRun) return { outcome: 'changed', note: 'would mark ' + item.name };
    await ctx.db.execute(sql\`UPDATE ${table} SET done = true, touched = touched + 1 WHERE id = \${item.id}\`);
    return 'changed';
  },
  ${options.extra ?? ''}
});
`;
}

/** SQL that creates the table `tableJob` works on, with `count` rows named item-1…item-N. */
export function tableSql(count: number, table = 'items'): string {
  return `CREATE TABLE ${table} (id serial PRIMARY KEY, name text NOT NULL, done boolean NOT NULL DEFAULT false, touched int NOT NULL DEFAULT 0);
          INSERT INTO ${table} (name) SELECT 'item-' || n FROM generate_series(1, ${count}) AS n;`;
}
