/**
 * The embedded database: PGlite in DATA_DIR, for trying reconciler out and for the demo. One
 * process owns the directory at a time (a lock file says which, and is cleared when that
 * process is gone), so an in-process lock is the whole cluster's.
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, join, resolve } from 'node:path';
import type { Db } from '../reconciler.js';
import { UserError, coerceError } from '../errors.js';
import { EXPLAIN_SETTINGS, explainText, quoteChannel, rootPlan, type Database, type OpenOptions, type PlanNode } from './database.js';

/** How this process was started, for the lock file: `reconciler daemon`, or the script an application runs (`node demo.ts`). */
function commandLine(): string {
  const script = basename(process.argv[1] ?? 'node');
  return /^reconciler(\.js)?$/.test(script) ? ['reconciler', ...process.argv.slice(2)].join(' ') : ['node', script, ...process.argv.slice(2)].join(' ');
}

/** The lock file that keeps a second process off the embedded database directory. */
function lockEmbeddedDirectory(dataDir: string): () => void {
  mkdirSync(dataDir, { recursive: true });
  const lockFile = join(dataDir, 'reconciler.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lockFile, 'wx');
      writeSync(fd, JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString(), command: commandLine() }));
      closeSync(fd);
      const release = () => rmSync(lockFile, { force: true });
      process.once('exit', release);
      return () => {
        process.off('exit', release);
        release();
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const holder = readHolder(lockFile);
      if (holder && holder.host !== hostname()) {
        throw new UserError(
          `the embedded database in ${dataDir} is locked by process ${holder.pid} on host ${holder.host} (since ${holder.since}); ` +
            `if that process is gone, delete ${lockFile}; to share a database between hosts, set DATABASE_URL`,
        );
      }
      if (holder && isAlive(holder.pid)) {
        throw new UserError(
          `the embedded database in ${dataDir} is in use by process ${holder.pid} (\`${holder.command}\`, since ${holder.since}); ` +
            'it allows one process at a time: stop that process, or set DATABASE_URL to a PostgreSQL server that several processes can share',
        );
      }
      rmSync(lockFile, { force: true }); // left behind by a process that died
    }
  }
  throw new UserError(`cannot lock the embedded database in ${dataDir}: ${lockFile} keeps coming back; is another process starting?`);
}

function readHolder(lockFile: string): { pid: number; host: string; since: string; command: string } | undefined {
  try {
    return JSON.parse(readFileSync(lockFile, 'utf8'));
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function openEmbedded(options: OpenOptions): Promise<Database> {
  const dataDir = resolve(options.dataDir);
  const shown = options.dataDir;
  const unlock = lockEmbeddedDirectory(dataDir);
  try {
    const [{ PGlite }, { drizzle }] = await Promise.all([
      import('@electric-sql/pglite').catch((error: unknown) => {
        if ((error as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw error;
        throw new UserError('DATABASE_URL is not set, and the embedded database needs the package @electric-sql/pglite, which is not installed: set DATABASE_URL to your PostgreSQL, or `npm install @electric-sql/pglite` to try reconciler out on the embedded one');
      }),
      import('drizzle-orm/pglite'),
    ]);
    const client = await PGlite.create(join(dataDir, 'pglite'));
    const db = drizzle(client) as unknown as Db;
    let queue: Promise<unknown> = Promise.resolve();
    return {
      db,
      control: db,
      kind: 'embedded',
      target: `embedded database in ${shown}`,
      pools: [],
      answersFresh: async () => true,
      // One process owns the directory, so a lock inside this process is the whole cluster.
      withExclusiveLock(_lockKey, fn) {
        const run = queue.then(() => fn(db));
        queue = run.catch(() => undefined);
        return run;
      },
      // In-process: notifications sent by this process (the only one) arrive; the session never breaks.
      async listen(channels, onNotify) {
        const stops = await Promise.all(channels.map((channel) => client.listen(quoteChannel(channel), (payload) => onNotify(channel, payload))));
        // PGlite's UNLISTEN does not quote the name; closing the database ends the listening anyway.
        return { close: async () => void (await Promise.all(stops.map((stop) => stop().catch(() => undefined)))) };
      },
      async explain(statements) {
        await client.exec(`BEGIN READ ONLY; ${EXPLAIN_SETTINGS}`);
        try {
          const plans: PlanNode[] = [];
          for (const statement of statements) plans.push(rootPlan((await client.query<Record<string, unknown>>(explainText(statement), statement.params)).rows));
          return plans;
        } finally {
          await client.exec('ROLLBACK').catch(() => undefined);
        }
      },
      async close() {
        try {
          await client.close();
        } finally {
          unlock();
        }
      },
    };
  } catch (error) {
    unlock();
    if (error instanceof UserError) throw error;
    throw new UserError(`cannot open the embedded database in ${shown}: ${coerceError(error).message}`);
  }
}
