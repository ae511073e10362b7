/**
 * The pass lease: who may run a pass of a reconciler partition now, cluster-wide. It lives in
 * the `state` table (see state.ts for the rest of that row: the schedule memory).
 *
 * A pass starts with one statement that takes the lease (only if it is free or expired,
 * judged by database time), marks a run left behind by a dead holder as abandoned, and
 * writes the new run's history row. It ends with one statement that records the run and
 * gives the lease back. Replicas racing for the same scheduled tick are decided by the
 * same statement: it also requires that no pass has served that tick yet.
 */
import { sql } from 'drizzle-orm';
import type { Db, Partition } from '../reconciler.js';
import { queryRows } from './database.js';
import { inPartition } from './partition.js';
import { engineSchema } from './schema.js';
import type { StateRow } from './state.js';
import type { PassCounts, PassStatus, Trigger } from '../engine/result.js';

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
  /**
   * For scheduled and catch-up passes: the tick this pass serves. Taken only if no pass
   * served this tick or a later one yet. Ticks are compared with ticks (every replica
   * computes the same tick from the cron), never with a clock.
   */
  tick?: Date;
  /**
   * Compare-and-set for catch-up: taken only if the reconciler's last finished run is
   * still this one (0 = none), i.e. nobody has finished a pass since the caller looked.
   * It replaces the tick condition (a catch-up may repeat a tick whose pass was aborted).
   */
  expectLastRunId?: number;
  /** A pass over part of the items (`run --key`): it does not count as the reconciler's last pass. */
  partial?: boolean;
}

export type AcquireResult =
  | { acquired: true; runId: number; startedAt: Date }
  | { acquired: false; reason: 'held'; holder: LeaseHolder }
  | { acquired: false; reason: 'already-served'; /** Who is running it now, if anyone. */ holder?: LeaseHolder }
  /** Refused, but by the time we asked why, the lease was free and the tick unserved: ask again. */
  | { acquired: false; reason: 'released' };

/** Who holds a lease, as shown to people. */
export interface LeaseHolder {
  host: string;
  pid: number;
  since: Date;
  expiresAt: Date;
  runId: number | null;
  /** The reconciler's last finished run when we looked: a takeover runs only if it is still the last (the holder never finished). */
  lastRunId: number;
  /** Which partition the holder's pass covers, of how many (absent for an unpartitioned reconciler). */
  partition?: { index: number; count: number };
}

/**
 * Takes the lease, or says why not. A partitioned reconciler's lease is taken in a short
 * transaction that first takes a transaction-level advisory lock on the reconciler: the rule
 * that passes of two partition counts never overlap reads other rows than the one it writes,
 * and without the lock two such statements at the same instant would both pass it (each
 * reads before the other commits). An unpartitioned reconciler has one row, which the upsert
 * itself serialises: one statement, no transaction.
 */
export async function acquireLease(db: Db, request: AcquireRequest): Promise<AcquireResult> {
  if (request.partition.count === 1) return acquireIn(db, request);
  return db.transaction(async (tx) => {
    // A transaction left open by a connection that went away (its COMMIT lost on the way) holds the
    // lock until the server gives up on it: no longer than the lease it was taking.
    await queryRows(tx as unknown as Db, sql`SELECT set_config('idle_in_transaction_session_timeout', ${String(Math.max(1_000, Math.round(request.leaseMs)))}, true)`);
    await queryRows(tx as unknown as Db, sql`SELECT pg_advisory_xact_lock(${LEASE_LOCK_NAMESPACE}::int, hashtext(${request.reconciler}))`);
    return acquireIn(tx as unknown as Db, request);
  });
}

/** pg_advisory_xact_lock's first key for reconciler leases: "leas" in ASCII (migrations use "reco"). */
export const LEASE_LOCK_NAMESPACE = 0x6c656173;

/**
 * Times here are `statement_timestamp()`, not `now()`: inside the partitioned path's
 * transaction, `now()` is when it began, before the wait for the lock, and a lease must not
 * look as if it started before the pass it waited for had ended.
 */
async function acquireIn(db: Db, request: AcquireRequest): Promise<AcquireResult> {
  const { reconciler, holder, trigger } = request;
  const partition = request.partition.index;
  const count = request.partition.count;
  const tick = request.tick ? request.tick.toISOString() : null;
  const expect = request.expectLastRunId ?? null;
  const partial = Boolean(request.partial);
  const t = engineSchema();
  const rows = await queryRows<{ run_id: string | number; started_ms: number }>(
    db,
    sql`
    WITH previous AS (
      SELECT current_run_id FROM ${t.state} WHERE reconciler = ${reconciler} AND partition = ${partition}
    ), acquired AS (
      INSERT INTO ${t.state} AS s
        (reconciler, partition, partitions, holder_id, holder_host, holder_pid, holder_since, lease_expires_at, current_run_id, last_started_at, last_tick_at)
      SELECT ${reconciler}, ${partition}, ${count}::int, ${holder.id}::uuid, ${holder.host}, ${holder.pid}::int, statement_timestamp(),
              statement_timestamp() + ${request.leaseMs} * interval '1 millisecond',
              nextval(pg_get_serial_sequence(${t.runsName}, 'id')),
              CASE WHEN ${partial} THEN NULL ELSE statement_timestamp() END, ${tick}::timestamptz
      -- After a change of partition count, a pass of the new count waits until every pass of the old one has
      -- ended (or its lease lapsed): their slices overlap, and two holders must never work one item at once.
      WHERE NOT EXISTS (SELECT 1 FROM ${t.state} o WHERE o.reconciler = ${reconciler} AND o.partitions <> ${count}::int
                          AND o.holder_id IS NOT NULL AND o.lease_expires_at >= statement_timestamp())
      ON CONFLICT (reconciler, partition) DO UPDATE SET
        partitions = excluded.partitions,
        holder_id = excluded.holder_id, holder_host = excluded.holder_host, holder_pid = excluded.holder_pid,
        holder_since = excluded.holder_since, lease_expires_at = excluded.lease_expires_at,
        current_run_id = excluded.current_run_id,
        last_started_at = CASE WHEN ${partial} THEN s.last_started_at ELSE excluded.last_started_at END,
        last_tick_at = coalesce(excluded.last_tick_at, s.last_tick_at)
      WHERE (s.holder_id IS NULL OR s.lease_expires_at < statement_timestamp())
        AND CASE WHEN ${expect}::bigint IS NOT NULL THEN coalesce(s.last_run_id, 0) = ${expect}::bigint
                 WHEN ${tick}::timestamptz IS NOT NULL THEN coalesce(s.last_tick_at, '-infinity') < ${tick}::timestamptz
                 ELSE true END
      RETURNING s.current_run_id AS run_id, s.holder_since AS started_at, (extract(epoch FROM s.holder_since) * 1000)::float8 AS started_ms
    ), abandoned AS (
      UPDATE ${t.runs} SET status = 'abandoned', finished_at = statement_timestamp(),
        error = 'its process stopped renewing the lease (killed, stalled, or cut off from the database) and another took over'
      WHERE id = (SELECT current_run_id FROM previous) AND status = 'running' AND EXISTS (SELECT 1 FROM acquired)
    ), run AS (
      INSERT INTO ${t.runs} (id, reconciler, partition, trigger, status, started_at, host, pid)
      SELECT run_id, ${reconciler}, ${partition}, ${trigger}, 'running', started_at, ${holder.host}, ${holder.pid} FROM acquired
    )
    SELECT run_id, started_ms FROM acquired`,
  );
  const row = rows[0];
  if (row) return { acquired: true, runId: Number(row.run_id), startedAt: new Date(Number(row.started_ms)) };
  return whyNotTaken(db, request);
}

/** The lease was not taken: this tick (or the expected run) was already served, or the lease is held. */
async function whyNotTaken(db: Db, request: AcquireRequest): Promise<AcquireResult> {
  const { reconciler } = request;
  const partition = request.partition.index;
  const count = request.partition.count;
  const tick = request.tick ? request.tick.toISOString() : null;
  const expect = request.expectLastRunId ?? null;
  const t = engineSchema();
  const [why] = await queryRows<{ served: boolean; held: boolean; host: string | null; pid: number | null; since: number | null; expires_at: number | null; run_id: string | null; partition: number; partitions: number; last_run_id: string | null }>(
    db,
    sql`SELECT CASE WHEN partition <> ${partition} THEN false
                    WHEN ${expect}::bigint IS NOT NULL THEN coalesce(last_run_id, 0) <> ${expect}::bigint
                    WHEN ${tick}::timestamptz IS NOT NULL THEN coalesce(last_tick_at, '-infinity') >= ${tick}::timestamptz
                    ELSE false END AS served,
               holder_id IS NOT NULL AND lease_expires_at >= statement_timestamp() AS held,
               holder_host AS host, holder_pid AS pid, (extract(epoch FROM holder_since) * 1000)::float8 AS since,
               (extract(epoch FROM lease_expires_at) * 1000)::float8 AS expires_at, current_run_id AS run_id, partition, partitions,
               (SELECT last_run_id FROM ${t.state} WHERE reconciler = ${reconciler} AND partition = ${partition}) AS last_run_id
        FROM ${t.state} WHERE reconciler = ${reconciler}
          AND (partition = ${partition} OR (partitions <> ${count}::int AND holder_id IS NOT NULL AND lease_expires_at >= statement_timestamp()))
        -- a live holder first: this partition's, or that of a pass of another partition count, which holds this one back
        ORDER BY holder_id IS NOT NULL AND lease_expires_at >= statement_timestamp() DESC, partition = ${partition} DESC
        LIMIT 1`,
  );
  if (why?.held) {
    const holder = leaseHolder({
      host: why.host, pid: why.pid, since: new Date(Number(why.since)), expiresAt: new Date(Number(why.expires_at)),
      runId: why.run_id, lastRunId: why.last_run_id, partition: Number(why.partition), partitions: Number(why.partitions),
    });
    return why.served ? { acquired: false, reason: 'already-served', holder } : { acquired: false, reason: 'held', holder };
  }
  // Neither held nor served now: the holder released between the two statements. Worth asking again.
  return why && !why.served ? { acquired: false, reason: 'released' } : { acquired: false, reason: 'already-served' };
}

/** Extends the lease. False means it was lost (expired and taken over): the pass must stop. */
export async function renewLease(db: Db, reconciler: string, partition: number, holderId: string, leaseMs: number): Promise<boolean> {
  const t = engineSchema();
  const rows = await queryRows<{ ok: number }>(
    db,
    sql`UPDATE ${t.state} SET lease_expires_at = now() + ${leaseMs} * interval '1 millisecond'
        WHERE reconciler = ${reconciler} AND partition = ${partition} AND holder_id = ${holderId}
        RETURNING 1 AS ok`,
  );
  return rows.length > 0;
}

export interface FinishRequest {
  reconciler: string;
  partition: Partition;
  holderId: string;
  runId: number;
  status: PassStatus;
  counts: PassCounts;
  complete: boolean;
  durationMs: number;
  error: string | null;
  /** The oldest `since(item)` among the items it found (staleness), when the reconciler defines `since`. */
  oldestItemAt?: Date | null;
  /** A `run --key` pass: recorded in history, but not as the reconciler's last pass. */
  partial: boolean;
  /**
   * A complete pass: forget the failed items its scan no longer finds (their work was done
   * elsewhere); every item it found was stamped after it started.
   */
  forgetUnseen: boolean;
}

/**
 * Records the run's outcome, forgets what a complete pass no longer finds, and gives the
 * lease back (if this holder still has it): one statement, so that an idle pass costs three
 * (lease, scan, this). Returns how many failure records were forgotten.
 */
export async function finishAndRelease(db: Db, f: FinishRequest): Promise<number> {
  const t = engineSchema();
  const c = f.counts;
  const [row] = await queryRows<{ forgotten: number }>(
    db,
    sql`
    WITH run AS (
      UPDATE ${t.runs} SET status = ${f.status}, finished_at = now(), duration_ms = ${Math.round(f.durationMs)},
        found = ${c.found}, changed = ${c.changed}, unchanged = ${c.unchanged}, skipped = ${c.skipped},
        failed = ${c.failed}, deferred = ${c.deferred}, dead = ${c.dead}, complete = ${f.complete}, error = ${f.error},
        oldest_item_at = ${f.oldestItemAt ? f.oldestItemAt.toISOString() : null}::timestamptz
      WHERE id = ${f.runId}
      RETURNING started_at
    ), forgotten AS (
      DELETE FROM ${t.failures}
      WHERE ${f.forgetUnseen} AND reconciler = ${f.reconciler}
        AND ${inPartition(sql`key`, f.partition)}
        AND last_seen_at < (SELECT started_at FROM run)
      RETURNING 1
    ), released AS (
    UPDATE ${t.state} SET holder_id = NULL, holder_host = NULL, holder_pid = NULL, holder_since = NULL,
      lease_expires_at = NULL, current_run_id = NULL,
      last_finished_at = CASE WHEN ${f.partial} THEN last_finished_at ELSE now() END,
      last_status = CASE WHEN ${f.partial} THEN last_status ELSE ${f.status} END,
      last_run_id = CASE WHEN ${f.partial} THEN last_run_id ELSE ${f.runId} END,
      last_succeeded_at = CASE WHEN ${f.status} = 'succeeded' AND NOT ${f.partial} THEN now() ELSE last_succeeded_at END
    WHERE reconciler = ${f.reconciler} AND partition = ${f.partition.index} AND holder_id = ${f.holderId}
    RETURNING 1
    )
    SELECT (SELECT count(*) FROM forgotten)::int AS forgotten`,
  );
  return Number(row?.forgotten ?? 0);
}

/** A lease's holder from the columns that say who it is: one mapping for both ways the lease is read. */
function leaseHolder(c: { host: string | null; pid: number | null; since: Date | null; expiresAt: Date | null; runId: string | number | null; lastRunId: string | number | null; partition: number; partitions: number }): LeaseHolder {
  return {
    host: c.host ?? '?',
    pid: Number(c.pid ?? 0),
    since: c.since ?? new Date(0),
    expiresAt: c.expiresAt ?? new Date(0),
    runId: c.runId === null ? null : Number(c.runId),
    lastRunId: Number(c.lastRunId ?? 0),
    ...(c.partitions > 1 ? { partition: { index: c.partition, count: c.partitions } } : {}),
  };
}

/** The holder of a state row's lease, as `acquireLease` describes one (call it only for a row whose lease is live). */
export function holderOfRow(row: StateRow): LeaseHolder {
  return leaseHolder({
    host: row.holderHost, pid: row.holderPid, since: row.holderSince, expiresAt: row.leaseExpiresAt,
    runId: row.currentRunId, lastRunId: row.lastRunId, partition: row.partition, partitions: row.partitions,
  });
}

