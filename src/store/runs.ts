/** The `runs` table: the history of passes, for `reconciler history` and for operators. */
import { and, desc, eq, inArray, sql } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from './database.js';
import { engineSchema, type runs } from './schema.js';

export type RunRow = typeof runs.$inferSelect;

/** Which passes to list: of one reconciler, status, trigger and partition, when given. */
export interface RunFilter {
  reconciler?: string;
  status?: string;
  trigger?: string;
  partition?: number;
  limit: number;
}

/** Passes, newest first, and how many match in all. */
export async function listRuns(db: Db, filter: RunFilter): Promise<{ runs: RunRow[]; total: number }> {
  const { runs } = engineSchema();
  const where = and(
    filter.reconciler === undefined ? undefined : eq(runs.reconciler, filter.reconciler),
    filter.status === undefined ? undefined : eq(runs.status, filter.status),
    filter.trigger === undefined ? undefined : eq(runs.trigger, filter.trigger),
    filter.partition === undefined ? undefined : eq(runs.partition, filter.partition),
  );
  const rows = await db.select().from(runs).where(where).orderBy(desc(runs.id)).limit(filter.limit);
  // Counted apart, so that the page is read newest first by the index, not sorted out of every match.
  const total = rows.length < filter.limit ? rows.length : Number((await queryRows<{ n: number }>(db, sql`SELECT count(*)::int AS n FROM ${runs} WHERE ${where ?? sql`true`}`))[0]?.n ?? 0);
  return { runs: rows, total };
}

/** A reconciler partition whose passes keep breaking (status `error`: the scan threw, the database went away). */
export interface PassError {
  reconciler: string;
  partition: number;
  /** The start of the first pass of the current run of errors (since the last pass that did not break). */
  failingSince: Date;
  lastAt: Date;
  /** Passes in a row that broke. */
  passes: number;
  /** The newest one's error. */
  error: string;
}

/**
 * The partitions whose latest finished pass broke (their state row says `error`), each with the
 * run of errors since its last pass that did not break (as far as history goes). Only failing
 * partitions are looked into, each by the history index.
 */
export async function passErrors(db: Db, reconciler?: string): Promise<PassError[]> {
  const { runs, state } = engineSchema();
  const rows = await queryRows<{ reconciler: string; partition: number; failing_since: string; last_at: string; passes: number; error: string | null }>(
    db,
    sql`SELECT s.reconciler, s.partition, e.failing_since, e.last_at, e.passes, e.error
        FROM ${state} s
        CROSS JOIN LATERAL (
          SELECT min(r.started_at) AS failing_since, max(r.started_at) AS last_at, count(*)::int AS passes,
                 (array_agg(r.error ORDER BY r.id DESC))[1] AS error
          FROM ${runs} r
          WHERE r.reconciler = s.reconciler AND r.partition = s.partition AND r.status = 'error'
            AND r.id > coalesce((SELECT max(o.id) FROM ${runs} o
                                 WHERE o.reconciler = s.reconciler AND o.partition = s.partition AND o.status IN ('succeeded', 'failed')), 0)) e
        WHERE s.last_status = 'error' AND e.passes > 0 AND ${reconciler === undefined ? sql`true` : sql`s.reconciler = ${reconciler}`}
        ORDER BY s.reconciler, s.partition`,
  );
  return rows.map((r) => ({
    reconciler: r.reconciler, partition: Number(r.partition), failingSince: new Date(r.failing_since), lastAt: new Date(r.last_at),
    passes: Number(r.passes), error: r.error ?? 'no error recorded',
  }));
}

/** One bucket of a reconciler's throughput chart. */
export interface ChartBucket {
  start: Date;
  passes: number;
  found: number;
  changed: number;
  failed: number;
  maxDurationMs: number;
  avgDurationMs: number;
}

/** Each reconciler's finished passes over the last `hours`, in buckets of `bucketMinutes`, oldest first (empty buckets left out). */
export async function passChart(db: Db, hours = 24, bucketMinutes = 15): Promise<Map<string, ChartBucket[]>> {
  const { runs } = engineSchema();
  const seconds = bucketMinutes * 60;
  const rows = await queryRows<{ reconciler: string; bucket: number; passes: number; found: number; changed: number; failed: number; max_ms: number; avg_ms: number }>(
    db,
    sql`SELECT reconciler, (floor(extract(epoch FROM started_at) / ${seconds}) * ${seconds})::float8 AS bucket, count(*)::int AS passes,
               sum(found)::int AS found, sum(changed)::int AS changed, sum(failed)::int AS failed,
               coalesce(max(duration_ms), 0)::int AS max_ms, coalesce(avg(duration_ms), 0)::float8 AS avg_ms
        FROM ${runs} WHERE started_at > now() - ${hours} * interval '1 hour' AND status <> 'running'
        GROUP BY 1, 2 ORDER BY 1, 2`,
  );
  const chart = new Map<string, ChartBucket[]>();
  for (const r of rows) {
    const buckets = chart.get(r.reconciler) ?? [];
    buckets.push({
      start: new Date(Number(r.bucket) * 1000), passes: Number(r.passes), found: Number(r.found), changed: Number(r.changed), failed: Number(r.failed),
      maxDurationMs: Number(r.max_ms), avgDurationMs: Math.round(Number(r.avg_ms)),
    });
    chart.set(r.reconciler, buckets);
  }
  return chart;
}

/** The passes with these ids. */
export async function readRuns(db: Db, ids: readonly number[]): Promise<RunRow[]> {
  if (ids.length === 0) return [];
  const { runs } = engineSchema();
  return db.select().from(runs).where(inArray(runs.id, [...ids]));
}

/** Deletes up to `batch` finished runs older than the retention; returns how many went. */
export async function pruneRuns(db: Db, retentionMs: number, batch = 5_000): Promise<number> {
  const { runs } = engineSchema();
  const rows = await queryRows<{ id: string }>(
    db,
    sql`DELETE FROM ${runs} WHERE id IN (
          SELECT id FROM ${runs}
          WHERE started_at < now() - ${retentionMs} * interval '1 millisecond' AND status <> 'running'
          LIMIT ${batch})
        RETURNING id`,
  );
  return rows.length;
}

export async function readRun(db: Db, id: number): Promise<RunRow | undefined> {
  const { runs } = engineSchema();
  const rows = await db.select().from(runs).where(eq(runs.id, id));
  return rows[0];
}
