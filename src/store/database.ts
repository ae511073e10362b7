/**
 * Opens the database: PostgreSQL through a `pg` pool when DATABASE_URL is set, else the
 * embedded PGlite database under DATA_DIR (one process at a time, guarded by a lock file).
 * Both give the same drizzle handle and run the same migrations.
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, join, resolve } from 'node:path';
import pg from 'pg';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { sql, type SQL } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../reconciler.js';
import { ExitCode, UserError, coerceError, isDatabaseUnavailable } from '../errors.js';
import { describeUrl } from '../secrets.js';
import { DEFAULT_ENGINE_SCHEMA, engineSchema, engineSchemaProblem, useEngineSchema } from './schema.js';

export interface Database {
  db: Db;
  /**
   * Lease traffic (take, renew, release) on its own small pool with a query timeout, so
   * that it never waits behind the items' queries. The same handle as `db` when embedded.
   */
  control: Db;
  kind: 'postgres' | 'embedded';
  /** Where the data lives, safe to print: `postgres://app:***@db:5432/app` or `embedded database in ./.data`. */
  target: string;
  /** Runs `fn` while holding a cluster-wide lock, on one dedicated connection. */
  withExclusiveLock<T>(lockKey: number, fn: (db: Db) => Promise<T>): Promise<T>;
  /**
   * LISTENs on `channels` on a session of its own (never a pooled one: a pooled connection
   * is handed to others between queries), through the listen URL when one is set. Calls `onNotify` with the channel and payload of each
   * notification, and `onLost` once if the session breaks; then it is closed, and the caller
   * listens again. Rejects when the session cannot be opened.
   */
  listen(channels: readonly string[], onNotify: (channel: string, payload: string) => void, onLost: (error: Error) => void): Promise<ListenSession>;
  /**
   * `EXPLAIN (FORMAT JSON)` of each statement, planned with sequential scans disabled (so a
   * usable index shows even on a small table), in a read-only transaction that is rolled back.
   * Nothing is executed. Resolves with each statement's plan (the root plan node).
   */
  explain(statements: readonly Statement[]): Promise<PlanNode[]>;
  /** The PostgreSQL connection pools, for liveness: each with the last time it handed a connection out. None when embedded. */
  pools: PoolProgress[];
  /** True when a fresh connection of its own (not a pooled one) gets an answer within 5 s: the database is up, whatever the pools do. */
  answersFresh(): Promise<boolean>;
  close(): Promise<void>;
}

export interface PoolProgress {
  /** `database` (DATABASE_POOL_SIZE: scans, items, records) or `lease` (take, renew, release). */
  name: string;
  db: Db;
  /** performance.now() of the last connection handed out. */
  lastHandedOut(): number;
  /** Connections open, of which idle, and callers waiting for one. */
  counts(): { total: number; idle: number; waiting: number };
}

/** A statement as the driver sends it: text with $1… placeholders, and their values. */
export interface Statement {
  text: string;
  params: unknown[];
}

/** A node of an EXPLAIN (FORMAT JSON) plan. */
export interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  /** A condition checked on each row after it was read: rows read and thrown away. */
  Filter?: string;
  Plans?: PlanNode[];
}

/** Sequential scans cost so much that the planner takes any index it can; 5 s bounds a statement's planning. */
const EXPLAIN_SETTINGS = "SET LOCAL enable_seqscan = off; SET LOCAL statement_timeout = '5s'";
const explainText = (statement: Statement) => `EXPLAIN (FORMAT JSON) ${statement.text}`;
const rootPlan = (rows: Record<string, unknown>[]): PlanNode => {
  const value = rows[0]?.['QUERY PLAN'];
  const plan = (typeof value === 'string' ? JSON.parse(value) : value) as { Plan: PlanNode }[];
  return plan[0]!.Plan;
};

/** Where this process stands among the daemons sharing the database: `rank` of `count`, 0-based. */
export interface Membership {
  rank: number;
  count: number;
}

export const ALONE: Membership = { rank: 0, count: 1 };

export interface ListenSession {
  close(): Promise<void>;
}


/** A channel name as a quoted identifier, so that LISTEN matches pg_notify('<name>') exactly, case included. */
const quoteChannel = (channel: string) => `"${channel.replace(/"/g, '""')}"`;

export interface OpenOptions {
  databaseUrl: string | undefined;
  /** A direct connection for the LISTEN session (LISTEN_DATABASE_URL), when `databaseUrl` goes through a transaction-mode pooler. */
  listenUrl?: string | undefined;
  dataDir: string;
  log: Logger;
  /** Pool size for PostgreSQL. */
  poolSize?: number;
  /** The engine's schema (default: RECONCILER_SCHEMA, else `reconciler`); the CLI and daemon pass the configured one. */
  schema?: string;
  /** Longest wait for the answer to one query of the main pool (DATABASE_QUERY_TIMEOUT). Default 60 s. */
  queryTimeoutMs?: number;
  /** The same for lease traffic. Default 10 s. */
  controlQueryTimeoutMs?: number;
}

/** TCP keepalive on every connection: a peer that vanished is noticed by the socket, not only by a timeout. */
const KEEPALIVE = { keepAlive: true, keepAliveInitialDelayMillis: 10_000 } as const;

/** Rows of a raw query, the same shape from `pg` and from PGlite. */
export async function queryRows<Row>(db: Db, query: SQL): Promise<Row[]> {
  const result = (await db.execute(query)) as unknown as { rows: Row[] };
  return result.rows;
}

/** True if a new connection of its own (no pool) to `url` answers `SELECT 1` within `timeoutMs`. */
export async function freshConnectionAnswers(url: string, timeoutMs = 5_000): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: timeoutMs, query_timeout: timeoutMs, application_name: 'reconciler-check' });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    void client.end().catch(() => undefined);
  }
}

/** True if the database answers a trivial query: to tell an outage from a query's own connection error. */
export async function databaseAnswers(db: Db): Promise<boolean> {
  return queryRows(db, sql`SELECT 1`).then(
    () => true,
    () => false,
  );
}

export async function openDatabase(options: OpenOptions): Promise<Database> {
  const schema = options.schema ?? (process.env.RECONCILER_SCHEMA || DEFAULT_ENGINE_SCHEMA);
  const problem = engineSchemaProblem(schema);
  if (problem) throw new UserError(`invalid RECONCILER_SCHEMA (got ${JSON.stringify(schema)}): ${problem}`);
  useEngineSchema(schema);
  return options.databaseUrl === undefined ? openEmbedded(options) : openPostgres(options.databaseUrl, options);
}

async function openPostgres(url: string, options: OpenOptions): Promise<Database> {
  const target = describeUrl(url);
  const pool = new pg.Pool({
    connectionString: url,
    max: options.poolSize ?? 10,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    query_timeout: options.queryTimeoutMs ?? 60_000,
    ...KEEPALIVE,
    application_name: 'reconciler',
  });
  const guard = guardConnections(options.log);
  guard(pool);
  try {
    const client = await pool.connect();
    client.release();
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw new UserError(`cannot connect to PostgreSQL at ${target}: ${coerceError(error).message || (error as { code?: string }).code}`, ExitCode.usage, { cause: error });
  }
  const controlPool = new pg.Pool({
    connectionString: url,
    max: 2,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    query_timeout: options.controlQueryTimeoutMs ?? 10_000,
    ...KEEPALIVE,
    application_name: 'reconciler-lease',
  });
  guard(controlPool);
  const db = withReleasingTransactions(drizzlePg(pool) as unknown as Db, pool);
  const control = withReleasingTransactions(drizzlePg(controlPool) as unknown as Db, controlPool);
  return {
    db,
    control,
    kind: 'postgres',
    target,
    pools: [progressOf('database', pool, db), progressOf('lease', controlPool, control)],
    answersFresh: () => freshConnectionAnswers(url),
    async withExclusiveLock(lockKey, fn) {
      const client = await pool.connect();
      let broken: Error | undefined;
      try {
        await client.query('SELECT pg_advisory_lock($1)', [lockKey]);
        try {
          return await fn(drizzlePg(client) as unknown as Db);
        } finally {
          await client.query('SELECT pg_advisory_unlock($1)', [lockKey]);
        }
      } catch (error) {
        broken = coerceError(error);
        throw error;
      } finally {
        client.release(broken); // a client that failed mid-lock is discarded, never reused
      }
    },
    async listen(channels, onNotify, onLost) {
      const client = new pg.Client({ connectionString: options.listenUrl ?? url, connectionTimeoutMillis: 5_000, ...KEEPALIVE, application_name: engineSchema().listenApplicationName });
      /** Set once LISTEN went through: only then is a break reported (before, `listen` rejects instead). */
      let armed = false;
      let over = false;
      let heartbeat: NodeJS.Timeout | undefined;
      const end = async () => {
        over = true;
        clearInterval(heartbeat);
        // A half-open socket can keep end() waiting for minutes: give it 2 s, then cut it.
        const ended = await Promise.race([client.end().then(() => true, () => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), 2_000).unref())]);
        if (!ended) (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
      };
      const lost = (error: Error) => {
        if (over || !armed) return;
        void end();
        onLost(error);
      };
      client.on('error', lost);
      client.on('end', () => lost(new Error('the connection closed')));
      client.on('notification', (message) => onNotify(message.channel, message.payload ?? ''));
      try {
        await client.connect();
        for (const channel of channels) await client.query(`LISTEN ${quoteChannel(channel)}`);
      } catch (error) {
        await end();
        throw error;
      }
      armed = true;
      // A session that dies silently (a NAT or load balancer dropping it, a failover) sends no error:
      // ask it something every 30 s, and call it lost when it does not answer within 10 s.
      heartbeat = setInterval(() => {
        const timeout = setTimeout(() => lost(new Error('the connection did not answer a heartbeat within 10s')), 10_000);
        client.query('SELECT 1').then(
          () => clearTimeout(timeout),
          (error: unknown) => {
            clearTimeout(timeout);
            lost(coerceError(error));
          },
        );
      }, 30_000);
      heartbeat.unref();
      return { close: end };
    },
    async explain(statements) {
      const client = await pool.connect();
      let broken: Error | undefined;
      try {
        await client.query('BEGIN READ ONLY');
        await client.query(EXPLAIN_SETTINGS);
        const plans: PlanNode[] = [];
        for (const statement of statements) plans.push(rootPlan((await client.query(explainText(statement), statement.params)).rows));
        return plans;
      } catch (error) {
        broken = coerceError(error);
        throw error;
      } finally {
        // A client whose ROLLBACK failed may still be in the read-only transaction, sequential scans off: never reuse it.
        await client.query('ROLLBACK').catch((error: unknown) => (broken ??= coerceError(error)));
        client.release(broken);
      }
    },
    close: async () => {
      await Promise.all([pool.end(), controlPool.end()]);
    },
  };
}

function progressOf(name: string, pool: pg.Pool, db: Db): PoolProgress {
  let last = performance.now();
  pool.on('acquire', () => (last = performance.now()));
  return { name, db, lastHandedOut: () => last, counts: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }) };
}

/**
 * A database restart sends every open connection an error. `pg`'s pool listens for it on idle
 * connections only: a connection checked out between two queries (inside a transaction) has
 * no listener, and an unhandled 'error' event ends the process. The query in flight fails by
 * itself and the pool discards the broken connection; this keeps the process alive and says
 * so at most every 10 s, whichever pool lost it.
 *
 * And a query whose answer never comes (a stall that lost its bytes) fails after the pool's
 * query_timeout, but `pg` keeps the connection waiting for that answer: every later query on it
 * queues behind the lost one. drizzle's transactions hand such a connection back to the pool as
 * healthy, and a small pool then never works again. So a connection whose query timed out is
 * closed at once: the pool sees it is not queryable and throws it away when it comes back.
 */
function guardConnections(log: Logger): (pool: pg.Pool) => void {
  let lastReported = 0;
  const lost = (error: Error) => {
    if (Date.now() - lastReported > 10_000) log.warn({ event: 'database:connection-lost', err: error }, `lost a database connection (${error.message}); the pool reconnects`);
    lastReported = Date.now();
  };
  return (pool) => {
    pool.on('error', lost);
    pool.on('connect', (client) => {
      client.on('error', lost);
      const query = client.query.bind(client) as (...args: unknown[]) => unknown;
      (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
        const result = query(...args);
        // Chained, not beside: the connection is closed before the caller hears of the timeout (and gives it back).
        if (!(result instanceof Promise)) return result;
        return result.catch((error: unknown) => {
          if ((error as Error | undefined)?.message === QUERY_TIMED_OUT) closeOutOfStep(client);
          throw error;
        });
      };
    });
  };
}

/**
 * drizzle's `transaction()` on a pool sends BEGIN before the `try` whose `finally` gives the
 * connection back: a BEGIN that fails (its answer lost, a reset) keeps the connection checked
 * out forever, and a few of those exhaust the pool (every later checkout: "timeout exceeded when
 * trying to connect"). Here the connection is checked out and given back around the whole of
 * drizzle's transaction, run on that one connection; one that broke is not queryable, and the
 * pool throws it away when it comes back.
 */
function withReleasingTransactions(db: Db, pool: pg.Pool): Db {
  const transaction = async (run: (tx: never) => Promise<unknown>, config?: unknown) => {
    const client = await pool.connect();
    let broken: Error | undefined;
    try {
      return await (drizzlePg(client) as unknown as { transaction(run: unknown, config?: unknown): Promise<unknown> }).transaction(run, config);
    } catch (error) {
      // A connection that timed out or broke goes back with its error: the pool closes it, never reuses it.
      if (connectionLost(error)) broken = coerceError(error);
      throw error;
    } finally {
      client.release(broken);
    }
  };
  return Object.assign(db, { transaction }) as Db;
}

/** True when `error` (or its cause) says the connection itself failed: it timed out, reset, or went away. */
function connectionLost(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e.message === QUERY_TIMED_OUT) return true;
  }
  return isDatabaseUnavailable(error);
}

/** pg's error for a query that got no answer within query_timeout. */
const QUERY_TIMED_OUT = 'Query read timeout';

function closeOutOfStep(client: pg.PoolClient): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

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

async function openEmbedded(options: OpenOptions): Promise<Database> {
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
