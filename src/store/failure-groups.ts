/**
 * Failures by kind: items whose last errors differ only in ids, numbers and quoted values share
 * an error group ("declined: the refund of return N (\"…\")"), named by a short stable id. The
 * console and the CLI list groups, and retry or clear a whole group, through the one expression
 * below, so a group means the same everywhere.
 */
import { sql, type SQL } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from './database.js';
import { engineSchema } from './schema.js';

/**
 * What varies between errors of one kind, replaced in this order: uuids, quoted values, any word
 * holding a digit (ids, amounts, counts, `ch_3Nx…`), then numbers with decimals (`N.N` → `N`).
 */
const VARYING: readonly [pattern: string, replacement: string][] = [
  ['[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '<id>'],
  ['"[^"]*"', '"…"'],
  ['\\m\\w*[0-9]\\w*\\M', 'N'],
  ['N([.,]N)+', 'N'],
];

/** `last_error` normalised: what the items of one group share (the first 1,000 characters). */
export function normalisedError(error: SQL = sql.raw('last_error')): SQL {
  return VARYING.reduce<SQL>((text, [pattern, replacement]) => sql`regexp_replace(${text}, ${pattern}, ${replacement}, 'g')`, sql`left(${error}, 1000)`);
}

/** The group id of a failure row: 10 hex characters of the reconciler and normalised error. */
export function errorGroupId(): SQL {
  return sql`left(md5(reconciler || E'\\n' || ${normalisedError()}), 10)`;
}

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

/** Groups of failing items, biggest first, and how many groups there are in all. */
export async function failureGroups(db: Db, options: { reconciler?: string; deadOnly?: boolean; limit: number }): Promise<{ groups: FailureGroup[]; total: number }> {
  const { failures } = engineSchema();
  const where = sql`${options.reconciler === undefined ? sql`true` : sql`reconciler = ${options.reconciler}`} AND ${options.deadOnly ? sql`dead_at IS NOT NULL` : sql`true`}`;
  const rows = await queryRows<{ id: string; reconciler: string; error: string; sample: string; count: number; dead: number; first_seen: Date | string; last_seen: Date | string; sample_keys: string[]; total: number }>(
    db,
    sql`SELECT id, reconciler, min(normalised) AS error, (array_agg(last_error ORDER BY last_failed_at DESC))[1] AS sample,
               count(*)::int AS count, count(*) FILTER (WHERE dead_at IS NOT NULL)::int AS dead,
               min(first_failed_at) AS first_seen, max(last_failed_at) AS last_seen,
               (array_agg(key ORDER BY last_failed_at DESC))[1:3] AS sample_keys, (count(*) OVER ())::int AS total
        FROM (SELECT *, ${normalisedError()} AS normalised, ${errorGroupId()} AS id FROM ${failures} WHERE ${where}) f
        GROUP BY reconciler, id ORDER BY count(*) DESC, max(last_failed_at) DESC LIMIT ${options.limit}`,
  );
  return {
    groups: rows.map((r) => ({
      id: r.id, reconciler: r.reconciler, error: r.error, sample: r.sample, count: Number(r.count), dead: Number(r.dead),
      firstSeen: new Date(r.first_seen), lastSeen: new Date(r.last_seen), sampleKeys: r.sample_keys,
    })),
    total: Number(rows[0]?.total ?? 0),
  };
}
