/**
 * The public API of `reconciler`: what a job file imports.
 *
 *     import { defineReconciler, TerminalError } from '../src/index.js';
 */
export { defineReconciler, partitionOf } from './reconciler.js';
export type { Db, Outcome, Partition, ReconcileContext, ReconcileResult, ReconcilerDefinition, RetryPolicy, ScanRequest } from './reconciler.js';
export type { Duration } from './duration.js';
export { TerminalError } from './errors.js';
/** drizzle's `sql` template, re-exported so a job file needs one import. */
export { sql } from 'drizzle-orm';
/** SQL for a migration: the trigger that notifies a channel when a table changes, for `wakeOn`. */
export { notifyTrigger } from './store/notify.js';
