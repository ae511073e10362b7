/**
 * PostgreSQL through two `pg` pools (items and leases), hardened against connections that
 * break or stall: a restart's error on a checked-out connection never ends the process, a
 * connection whose answer was lost is closed, and a transaction whose BEGIN failed gives its
 * connection back. LISTEN runs on a session of its own, watched by a heartbeat.
 */
import pg from 'pg';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import type { Logger } from 'pino';
import type { Db } from '../reconciler.js';
import { ExitCode, UserError, coerceError, isDatabaseUnavailable } from '../errors.js';
import { describeUrl } from '../secrets.js';
import { engineSchema } from './schema.js';
import { EXPLAIN_SETTINGS, explainText, quoteChannel, rootPlan, type Database, type ListenSession, type OpenOptions, type PlanNode, type PoolProgress } from './database.js';
import { settlesWithin, within } from '../timeout.js';

/** TCP keepalive on every connection: a peer that vanished is noticed by the socket, not only by a timeout. */
const KEEPALIVE = { keepAlive: true, keepAliveInitialDelayMillis: 10_000 } as const;

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

/** A pool of `name` (its application_name) with the engine's timeouts and keepalive. */
function newPool(url: string, name: string, max: number, queryTimeoutMs: number): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max, connectionTimeoutMillis: 5_000, idleTimeoutMillis: 30_000, query_timeout: queryTimeoutMs, ...KEEPALIVE, application_name: name });
  keepConnectionsAfterQueryErrors(pool);
  return pool;
}

/**
 * `pool.query` (what drizzle calls) as pg-pool's, except for what a failed query does to its
 * connection. pg-pool closes the connection after ANY error, a constraint violation included, so
 * the next query paid for a new connection (about 45 ms here): an item that fails, and each
 * statement of a set-based batch that a poison row breaks, cost a reconnection. An error the
 * server answered with (pg's DatabaseError) leaves the connection ready for the next query; only
 * a connection that timed out, reset or went away is closed.
 */
function keepConnectionsAfterQueryErrors(pool: pg.Pool): void {
  pool.query = (async (...args: unknown[]) => {
    if (typeof args[args.length - 1] === 'function') throw new TypeError('pool.query with a callback is not supported here; use the promise');
    const client = await pool.connect();
    let broken: Error | undefined;
    try {
      return await (client.query as (...a: unknown[]) => Promise<unknown>).apply(client, args);
    } catch (error) {
      if (!(error instanceof pg.DatabaseError) || connectionLost(error)) broken = coerceError(error);
      throw error;
    } finally {
      client.release(broken);
    }
  }) as unknown as typeof pool.query;
}

export async function openPostgres(url: string, options: OpenOptions): Promise<Database> {
  const target = describeUrl(url);
  const pool = newPool(url, 'reconciler', options.poolSize ?? 10, options.queryTimeoutMs ?? 60_000);
  const guard = guardConnections(options.log);
  guard(pool);
  try {
    const client = await pool.connect();
    client.release();
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw new UserError(`cannot connect to PostgreSQL at ${target}: ${coerceError(error).message || (error as { code?: string }).code}`, ExitCode.usage, { cause: error });
  }
  const controlPool = newPool(url, 'reconciler-lease', 2, options.controlQueryTimeoutMs ?? 10_000);
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
    withExclusiveLock: (lockKey, fn) => onOneClient(pool, async (client) => {
      await client.query('SELECT pg_advisory_lock($1)', [lockKey]);
      try {
        return await fn(drizzlePg(client) as unknown as Db);
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [lockKey]);
      }
    }),
    listen: (channels, onNotify, onLost) => listenSession(options.listenUrl ?? url, channels, onNotify, onLost),
    explain: (statements) => onOneClient(pool, async (client, discard) => {
      try {
        await client.query('BEGIN READ ONLY');
        await client.query(EXPLAIN_SETTINGS);
        const plans: PlanNode[] = [];
        for (const statement of statements) plans.push(rootPlan((await client.query(explainText(statement), statement.params)).rows));
        return plans;
      } finally {
        // A client whose ROLLBACK failed may still be in the read-only transaction, sequential scans off: never reuse it.
        await client.query('ROLLBACK').catch(discard);
      }
    }),
    close: async () => {
      await Promise.all([pool.end(), controlPool.end()]);
    },
  };
}

/**
 * Runs `fn` on one connection of `pool`. A connection that failed under it (or that `fn` says
 * to discard) is closed when it goes back, never reused.
 */
async function onOneClient<T>(pool: pg.Pool, fn: (client: pg.PoolClient, discard: (error: unknown) => void) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    return await fn(client, (error) => (broken ??= coerceError(error)));
  } catch (error) {
    broken = coerceError(error);
    throw error;
  } finally {
    client.release(broken);
  }
}

/**
 * LISTENs on a session of its own (see Database.listen). A session that dies silently (a NAT or
 * load balancer dropping it, a failover) sends no error: it is asked something every 30 s, and
 * called lost when it does not answer within 10 s.
 */
async function listenSession(url: string, channels: readonly string[], onNotify: (channel: string, payload: string) => void, onLost: (error: Error) => void): Promise<ListenSession> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000, ...KEEPALIVE, application_name: engineSchema().listenApplicationName });
  /** Set once LISTEN went through: only then is a break reported (before, `listen` rejects instead). */
  let armed = false;
  let over = false;
  let heartbeat: NodeJS.Timeout | undefined;
  const end = async () => {
    over = true;
    clearInterval(heartbeat);
    // A half-open socket can keep end() waiting for minutes: give it 2 s, then cut it.
    if (!(await settlesWithin(client.end().catch(() => undefined), 2_000, { unref: true }))) closeOutOfStep(client);
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
  heartbeat = setInterval(() => {
    within(client.query('SELECT 1'), 10_000, () => new Error('the connection did not answer a heartbeat within 10s')).catch((error: unknown) => lost(coerceError(error)));
  }, 30_000);
  heartbeat.unref();
  return { close: end };
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

function closeOutOfStep(client: pg.ClientBase): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

