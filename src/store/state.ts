/**
 * reconciler_state: the pass lease and the schedule memory of each reconciler.
 *
 * A pass starts with one statement that takes the lease (only if it is free or expired,
 * judged by database time), marks a run left behind by a dead holder as abandoned, and
 * writes the new run's history row. It ends with one statement that records the run and
 * gives the lease back. Replicas racing for the same scheduled tick are decided by the
 * same statement: it also requires that no pass has served that tick yet.
 */
import { and, asc, eq, sql } from 'drizzle-orm';
import type { Db, Partition } from '../reconciler.js';
import { queryRows } from './database.js';
import { reconcilerState } from './schema.js';
import type { PassCounts, PassStatus, Trigger } from './runs.js';

/** The process asking for a lease. `id` is fresh per pass: it is the lease's fencing token. */
export interface Holder {
  id: string;
  host: string;
  pid: number;
}

export interface AcquireRequest {
  reconciler: string;
  partition: Partition;
  holder: Holder;
  trigger: Trigger;
  leaseMs: number;
  /** For scheduled and catch-up passes: the tick this pass serves. Taken only if no pass started at or after it. */
  tick?: Date;
}

export type AcquireResult =
  | { acquired: true; runId: number; startedAt: Date }
  | { acquired: false; reason: 'held'; holder: LeaseHolder }
  | { acquired: false; reason: 'already-served' };

/** Who holds a lease, as shown to people. */
export interface LeaseHolder {
  host: string;
  pid: number;
  since: Date;
  expiresAt: Date;
  runId: number | null;
}

export type StateRow = typeof reconcilerState.$inferSelect;

const toDate = (value: unknown): Date => (value instanceof Date ? value : new Date(String(value)));

export async function acquireLease(db: Db, request: AcquireRequest): Promise<AcquireResult> {
  const { reconciler, holder, trigger, tick } = request;
  const partition = request.partition.index;
  const tickParam = tick ? tick.toISOString() : null;
  const rows = await queryRows<{ run_id: string | number; started_at: Date | string }>(
    db,
    sql`
    WITH previous AS (
      SELECT current_run_id FROM reconciler_state WHERE reconciler = ${reconciler} AND partition = ${partition}
    ), acquired AS (
      INSERT INTO reconciler_state AS s
        (reconciler, partition, holder_id, holder_host, holder_pid, holder_since, lease_expires_at, current_run_id, last_started_at, last_tick_at)
      VALUES (${reconciler}, ${partition}, ${holder.id}, ${holder.host}, ${holder.pid}, now(),
              now() + ${request.leaseMs} * interval '1 millisecond',
              nextval(pg_get_serial_sequence('reconciler_runs', 'id')), now(), ${tickParam}::timestamptz)
      ON CONFLICT (reconciler, partition) DO UPDATE SET
        holder_id = excluded.holder_id, holder_host = excluded.holder_host, holder_pid = excluded.holder_pid,
        holder_since = excluded.holder_since, lease_expires_at = excluded.lease_expires_at,
        current_run_id = excluded.current_run_id, last_started_at = excluded.last_started_at,
        last_tick_at = coalesce(excluded.last_tick_at, s.last_tick_at)
      WHERE (s.holder_id IS NULL OR s.lease_expires_at < now())
        AND (${tickParam}::timestamptz IS NULL OR (
              coalesce(s.last_tick_at, '-infinity') < ${tickParam}::timestamptz
          AND coalesce(s.last_started_at, '-infinity') < ${tickParam}::timestamptz))
      RETURNING s.current_run_id AS run_id, s.last_started_at AS started_at
    ), abandoned AS (
      UPDATE reconciler_runs SET status = 'abandoned', finished_at = now(),
        error = 'the process running this pass stopped renewing its lease (killed, or cut off from the database)'
      WHERE id = (SELECT current_run_id FROM previous) AND status = 'running' AND EXISTS (SELECT 1 FROM acquired)
    ), run AS (
      INSERT INTO reconciler_runs (id, reconciler, partition, trigger, status, started_at, host, pid)
      SELECT run_id, ${reconciler}, ${partition}, ${trigger}, 'running', started_at, ${holder.host}, ${holder.pid} FROM acquired
    )
    SELECT run_id, started_at FROM acquired`,
  );
  const row = rows[0];
  if (row) return { acquired: true, runId: Number(row.run_id), startedAt: toDate(row.started_at) };
  const current = await readLeaseHolder(db, reconciler, partition);
  return current ? { acquired: false, reason: 'held', holder: current } : { acquired: false, reason: 'already-served' };
}

/** The current holder, or undefined when the lease is free or expired. */
export async function readLeaseHolder(db: Db, reconciler: string, partition: number): Promise<LeaseHolder | undefined> {
  const rows = await queryRows<{ host: string; pid: number; since: Date | string; expires_at: Date | string; run_id: string | null }>(
    db,
    sql`SELECT holder_host AS host, holder_pid AS pid, holder_since AS since, lease_expires_at AS expires_at, current_run_id AS run_id
        FROM reconciler_state
        WHERE reconciler = ${reconciler} AND partition = ${partition} AND holder_id IS NOT NULL AND lease_expires_at >= now()`,
  );
  const row = rows[0];
  return row && { host: row.host, pid: Number(row.pid), since: toDate(row.since), expiresAt: toDate(row.expires_at), runId: row.run_id === null ? null : Number(row.run_id) };
}

/** Extends the lease. False means it was lost (expired and taken over): the pass must stop. */
export async function renewLease(db: Db, reconciler: string, partition: number, holderId: string, leaseMs: number): Promise<boolean> {
  const rows = await queryRows<{ ok: number }>(
    db,
    sql`UPDATE reconciler_state SET lease_expires_at = now() + ${leaseMs} * interval '1 millisecond'
        WHERE reconciler = ${reconciler} AND partition = ${partition} AND holder_id = ${holderId}
        RETURNING 1 AS ok`,
  );
  return rows.length > 0;
}

export interface FinishRequest {
  reconciler: string;
  partition: number;
  holderId: string;
  runId: number;
  status: PassStatus;
  counts: PassCounts;
  complete: boolean;
  durationMs: number;
  error: string | null;
}

/** Records the run's outcome and gives the lease back (if this holder still has it). */
export async function finishAndRelease(db: Db, f: FinishRequest): Promise<void> {
  const c = f.counts;
  await queryRows(
    db,
    sql`
    WITH run AS (
      UPDATE reconciler_runs SET status = ${f.status}, finished_at = now(), duration_ms = ${Math.round(f.durationMs)},
        found = ${c.found}, changed = ${c.changed}, unchanged = ${c.unchanged}, skipped = ${c.skipped},
        failed = ${c.failed}, deferred = ${c.deferred}, dead = ${c.dead}, complete = ${f.complete}, error = ${f.error}
      WHERE id = ${f.runId}
      RETURNING id
    )
    UPDATE reconciler_state SET holder_id = NULL, holder_host = NULL, holder_pid = NULL, holder_since = NULL,
      lease_expires_at = NULL, current_run_id = NULL, last_finished_at = now(), last_status = ${f.status},
      last_run_id = ${f.runId},
      last_succeeded_at = CASE WHEN ${f.status} = 'succeeded' THEN now() ELSE last_succeeded_at END
    WHERE reconciler = ${f.reconciler} AND partition = ${f.partition} AND holder_id = ${f.holderId}`,
  );
}

/**
 * Counts a scheduled tick that found a pass still running, once per tick across all
 * replicas (each replica sees the same tick). Returns false when another replica counted it.
 */
export async function countSkippedTick(db: Db, reconciler: string, partition: number, tick: Date): Promise<boolean> {
  const rows = await queryRows<{ ok: number }>(
    db,
    sql`UPDATE reconciler_state SET skipped_ticks = skipped_ticks + 1, last_skipped_tick_at = ${tick.toISOString()}::timestamptz
        WHERE reconciler = ${reconciler} AND partition = ${partition}
          AND last_skipped_tick_at IS DISTINCT FROM ${tick.toISOString()}::timestamptz
        RETURNING 1 AS ok`,
  );
  return rows.length > 0;
}

/** Every reconciler's state row, for `reconciler list` and catch-up. */
export async function readStates(db: Db): Promise<StateRow[]> {
  return db.select().from(reconcilerState).orderBy(asc(reconcilerState.reconciler), asc(reconcilerState.partition));
}

export async function readState(db: Db, reconciler: string, partition = 0): Promise<StateRow | undefined> {
  const rows = await db
    .select()
    .from(reconcilerState)
    .where(and(eq(reconcilerState.reconciler, reconciler), eq(reconcilerState.partition, partition)));
  return rows[0];
}
