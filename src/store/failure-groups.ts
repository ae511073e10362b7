/**
 * Failures by kind: items whose last errors differ only in ids, numbers and quoted values (those
 * holding a digit or longer than 40 characters; short codes such as "card_declined" stay) share
 * an error group ("declined: the refund of return N (\"…\")"), named by a short stable id. The
 * normalisation is one SQL function of the engine schema (`normalised_error`, migration 0003),
 * and each failure row's group is a column PostgreSQL generates from its last error
 * (`error_group`), so that listing groups and acting on one read an index, however many items fail.
 */
import { sql, type SQL } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from './database.js';
import { engineSchema } from './schema.js';

/** True when `id` looks like a group id (before any query is spent on it). */
export const GROUP_ID = /^[0-9a-f]{10}$/;

export interface FailureGroup {
  /** Stable for the same reconciler and normalised error. */
  id: string;
  reconciler: string;
  /** The normalised error the group's items share. */
  error: string;
  /** One item's whole last error (the newest). */
  sample: string;
  count: number;
  dead: number;
  firstSeen: Date;
  lastSeen: Date;
  /** Up to 3 keys, newest failure first. */
  sampleKeys: string[];
}

interface GroupRow {
  id: string;
  reconciler: string;
  error: string;
  sample: string;
  count: number;
  dead: number;
  first_seen: Date | string;
  last_seen: Date | string;
  sample_keys: string[];
  total: number;
}

/**
 * Groups of failing items, biggest first, and how many groups there are in all. One aggregate
 * over the index, then the newest item of each group shown, by the group index.
 */
export async function failureGroups(db: Db, options: { reconciler?: string; deadOnly?: boolean; limit: number }): Promise<{ groups: FailureGroup[]; total: number }> {
  const t = engineSchema();
  const where = sql`${options.reconciler === undefined ? sql`true` : sql`reconciler = ${options.reconciler}`} AND ${options.deadOnly ? sql`dead_at IS NOT NULL` : sql`true`}`;
  const newest = (columns: SQL, limit: number) =>
    sql`SELECT ${columns} FROM ${t.failures} f WHERE f.reconciler = g.reconciler AND f.error_group = g.id AND ${where} ORDER BY f.last_failed_at DESC LIMIT ${limit}`;
  const rows = await queryRows<GroupRow>(
    db,
    sql`WITH g AS (
          SELECT reconciler, error_group AS id, count(*)::int AS count, count(*) FILTER (WHERE dead_at IS NOT NULL)::int AS dead,
                 min(first_failed_at) AS first_seen, max(last_failed_at) AS last_seen, (count(*) OVER ())::int AS total
          FROM ${t.failures} WHERE ${where}
          GROUP BY reconciler, error_group ORDER BY count(*) DESC, max(last_failed_at) DESC LIMIT ${options.limit})
        SELECT g.*, s.last_error AS sample, ${t.normalisedErrorOf}(s.last_error) AS error, k.keys AS sample_keys
        FROM g
        CROSS JOIN LATERAL (${newest(sql`f.last_error`, 1)}) s
        CROSS JOIN LATERAL (SELECT array_agg(key) AS keys FROM (${newest(sql`f.key`, 3)}) x) k
        ORDER BY g.count DESC, g.last_seen DESC`,
  );
  return {
    groups: rows.map((r) => ({
      id: r.id, reconciler: r.reconciler, error: r.error, sample: r.sample, count: Number(r.count), dead: Number(r.dead),
      firstSeen: new Date(r.first_seen), lastSeen: new Date(r.last_seen), sampleKeys: r.sample_keys,
    })),
    total: Number(rows[0]?.total ?? 0),
  };
}

/** Of one reconciler's dead items: since when the first died, and the error most of them share. */
export interface DeadSummary {
  reconciler: string;
  since: Date;
  /** The biggest group of dead items: its id, its normalised error, and how many of the dead it holds. */
  group: string;
  error: string;
  count: number;
}

/** Per reconciler with dead items, what the overview says of them: since when, and mostly why. */
export async function deadSummaries(db: Db): Promise<DeadSummary[]> {
  const t = engineSchema();
  const rows = await queryRows<{ reconciler: string; since: Date | string; group: string; error: string; count: number }>(
    db,
    sql`WITH g AS (
          SELECT reconciler, error_group, count(*)::int AS n, min(dead_at) AS since FROM ${t.failures} WHERE dead_at IS NOT NULL GROUP BY 1, 2),
        top AS (
          SELECT DISTINCT ON (reconciler) reconciler, error_group, n, min(since) OVER (PARTITION BY reconciler) AS since FROM g ORDER BY reconciler, n DESC)
        SELECT top.reconciler, top.since, top.error_group AS group, top.n AS count, ${t.normalisedErrorOf}(s.last_error) AS error
        FROM top CROSS JOIN LATERAL (
          SELECT last_error FROM ${t.failures} f WHERE f.reconciler = top.reconciler AND f.error_group = top.error_group ORDER BY f.last_failed_at DESC LIMIT 1) s
        ORDER BY top.reconciler`,
  );
  return rows.map((r) => ({ reconciler: r.reconciler, since: new Date(r.since), group: r.group, error: r.error, count: Number(r.count) }));
}
