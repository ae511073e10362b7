/**
 * The public API of `reconciler`: what a job file imports, and what an application that embeds
 * the daemon uses.
 *
 *     import { defineReconciler, TerminalError, sql } from 'reconciler';
 */
export { defineReconciler } from './reconciler.js';
export type { ActionContext, BatchContext, BatchOutcomes, Db, ManualAction, Outcome, Partition, ReconcileContext, ReconcileResult, ReconcilerDefinition, RetryAfter, RetryPolicy, ScanRequest } from './reconciler.js';
export type { Duration } from './duration.js';
export { TerminalError, coerceError, errorSummary } from './errors.js';
/** drizzle's `sql` template, re-exported so a job file needs one import. */
export { sql } from 'drizzle-orm';
/** SQL for a migration: the trigger that notifies a channel when a table changes, for `wakeOn`. */
export { notifyTrigger } from './store/notify.js';
/**
 * Partitions: `partitionOf(key, count)` in JavaScript; in SQL, `inPartition(key, partition)` for
 * the scan's filter and `partitionIndexExpression(key, count)` for its index, both the engine's
 * one hash, so that the scan and its index cannot get out of step.
 */
export { inPartition, partitionIndexExpression, partitionOf } from './store/partition.js';
/** Marks a value (an API key a job reads) as secret: it is masked in every log line, error and CLI output. */
export { registerSecret } from './secrets.js';
export { openDatabase } from './store/database.js';
/**
 * `queryRows<Row>(db, sql\`…\`)`: runs a statement and returns its rows typed as `Row[]`, on
 * PostgreSQL and on the embedded database alike: a job file needs no cast of `db.execute`.
 */
export { queryRows } from './store/database.js';
/** `sqlArray(ids, 'bigint')`: an array as one parameter, for `WHERE id = ANY(${…})` in set-based work (`reconcileBatch`). */
export { sqlArray, type SqlArrayType } from './store/sql-array.js';
export type { Database, OpenOptions } from './store/database.js';
export { migrateDatabase } from './store/migrate.js';
export type { DaemonOptions } from './daemon.js';

import type { DaemonOptions } from './daemon.js';
/**
 * Runs the daemon in this process, as `reconciler daemon` does, until SIGTERM or SIGINT;
 * resolves with the exit code. For an application that embeds the engine (the returns demo does).
 */
export async function runDaemon(options: DaemonOptions = {}): Promise<number> {
  return (await import('./daemon.js')).runDaemon(options);
}
