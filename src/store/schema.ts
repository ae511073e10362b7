/**
 * The engine's own tables. The system's state is the queue, so the engine stores only
 * what state cannot tell: who holds a pass (and since when), what each pass did, and
 * which items keep failing. Migrations are generated from this file by drizzle-kit.
 */
import { sql } from 'drizzle-orm';
import { bigint, bigserial, boolean, index, integer, pgTable, primaryKey, text, timestamp, uuid } from 'drizzle-orm/pg-core';

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

/**
 * One row per reconciler (and partition): its pass lease and its schedule memory.
 * The lease (holder_*, lease_expires_at) is taken with one conditional upsert that uses
 * database time, so it works across replicas, through poolers, and on the embedded database.
 */
export const reconcilerState = pgTable(
  'reconciler_state',
  {
    reconciler: text('reconciler').notNull(),
    partition: integer('partition').notNull().default(0),
    /** How many partitions the reconciler had when this row's lease was last taken. */
    partitions: integer('partitions').notNull().default(1),
    holderId: uuid('holder_id'),
    holderHost: text('holder_host'),
    holderPid: integer('holder_pid'),
    holderSince: ts('holder_since'),
    leaseExpiresAt: ts('lease_expires_at'),
    currentRunId: bigint('current_run_id', { mode: 'number' }),
    /** The scheduled tick the latest scheduled or catch-up pass served. */
    lastTickAt: ts('last_tick_at'),
    lastStartedAt: ts('last_started_at'),
    lastFinishedAt: ts('last_finished_at'),
    lastSucceededAt: ts('last_succeeded_at'),
    lastStatus: text('last_status'),
    lastRunId: bigint('last_run_id', { mode: 'number' }),
    skippedTicks: bigint('skipped_ticks', { mode: 'number' }).notNull().default(0),
    lastSkippedTickAt: ts('last_skipped_tick_at'),
  },
  (t) => [primaryKey({ columns: [t.reconciler, t.partition] })],
);

/** Run history: one row per pass, written when it starts and completed when it ends. */
export const reconcilerRuns = pgTable(
  'reconciler_runs',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    reconciler: text('reconciler').notNull(),
    partition: integer('partition').notNull().default(0),
    /** schedule | manual | startup | retry */
    trigger: text('trigger').notNull(),
    /** running | succeeded | failed | error | aborted | abandoned */
    status: text('status').notNull(),
    startedAt: ts('started_at').notNull().default(sql`now()`),
    finishedAt: ts('finished_at'),
    durationMs: integer('duration_ms'),
    found: integer('found').notNull().default(0),
    changed: integer('changed').notNull().default(0),
    unchanged: integer('unchanged').notNull().default(0),
    skipped: integer('skipped').notNull().default(0),
    failed: integer('failed').notNull().default(0),
    deferred: integer('deferred').notNull().default(0),
    dead: integer('dead').notNull().default(0),
    /** False when the pass stopped early (item or time budget, abort): the rest waits for the next pass. */
    complete: boolean('complete').notNull().default(false),
    host: text('host').notNull(),
    pid: integer('pid').notNull(),
    error: text('error'),
  },
  (t) => [index('reconciler_runs_by_reconciler').on(t.reconciler, t.id), index('reconciler_runs_by_start').on(t.startedAt)],
);

/**
 * Failure memory: only items that failed are remembered. A success deletes the row, and
 * a complete pass deletes the rows of items its scan no longer finds (fixed elsewhere).
 */
export const reconcilerFailures = pgTable(
  'reconciler_failures',
  {
    reconciler: text('reconciler').notNull(),
    key: text('key').notNull(),
    partition: integer('partition').notNull().default(0),
    attempts: integer('attempts').notNull(),
    lastError: text('last_error').notNull(),
    firstFailedAt: ts('first_failed_at').notNull().default(sql`now()`),
    lastFailedAt: ts('last_failed_at').notNull().default(sql`now()`),
    nextAttemptAt: ts('next_attempt_at').notNull(),
    /** Set when attempts ran out or a TerminalError was thrown: skipped until `retry` or `clear`. */
    deadAt: ts('dead_at'),
    lastSeenAt: ts('last_seen_at').notNull().default(sql`now()`),
  },
  (t) => [primaryKey({ columns: [t.reconciler, t.key] }), index('reconciler_failures_by_seen').on(t.reconciler, t.partition, t.lastSeenAt)],
);
