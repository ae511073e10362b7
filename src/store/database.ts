/**
 * Opens the database: PostgreSQL through `pg` pools when DATABASE_URL is set (postgres.ts),
 * else the embedded PGlite database under DATA_DIR (embedded.ts, one process at a time,
 * guarded by a lock file). Both give the same `Database`: the same drizzle handle, the same
 * migrations.
 */
import { sql, type SQL } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../reconciler.js';
import { UserError } from '../errors.js';
import { DEFAULT_ENGINE_SCHEMA, engineSchemaProblem, useEngineSchema } from './schema.js';
import { openEmbedded } from './embedded.js';
import { freshConnectionAnswers, openPostgres } from './postgres.js';

export { freshConnectionAnswers };

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
export const EXPLAIN_SETTINGS = "SET LOCAL enable_seqscan = off; SET LOCAL statement_timeout = '5s'";
export const explainText = (statement: Statement) => `EXPLAIN (FORMAT JSON) ${statement.text}`;
export const rootPlan = (rows: Record<string, unknown>[]): PlanNode => {
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
export const quoteChannel = (channel: string) => `"${channel.replace(/"/g, '""')}"`;

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

/** Rows of a raw query, the same shape from `pg` and from PGlite. */
export async function queryRows<Row>(db: Db, query: SQL): Promise<Row[]> {
  const result = (await db.execute(query)) as unknown as { rows: Row[] };
  return result.rows;
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

