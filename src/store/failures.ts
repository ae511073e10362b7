/**
 * The `failures` table: failure memory. Only failures are remembered; the system's state
 * is the queue. Looking failures up costs one query per scanned page, never one per item.
 */
import { and, asc, eq, inArray, sql, type SQL } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from './database.js';
import { engineSchema, type failures } from './schema.js';

/** What failure memory knows of one item. */
export interface FailureMemory {
  attempts: number;
  dead: boolean;
  /** True while `next_attempt_at` is in the future (database time). */
  inBackoff: boolean;
  nextAttemptAt: Date;
}

/** A failure row as people see it (its error group is named `group` where it is listed). */
export type FailureRow = Omit<typeof failures.$inferSelect, 'errorGroup'>;


/**
 * Failure memory of a page of keys, in one query. Unless `readOnly`, it also stamps the
 * rows as seen, so that a complete pass can forget the items its scan no longer finds.
 */
export async function lookupFailures(db: Db, reconciler: string, keys: readonly string[], readOnly: boolean): Promise<Map<string, FailureMemory>> {
  const found = new Map<string, FailureMemory>();
  if (keys.length === 0) return found;
  const keyArray = sql`${`{${keys.map((k) => `"${k.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`).join(',')}}`}::text[]`;
  const columns = sql`key, attempts, dead_at IS NOT NULL AS dead, next_attempt_at > now() AS in_backoff, (extract(epoch FROM next_attempt_at) * 1000)::float8 AS next_attempt_at`;
  const rows = await queryRows<{ key: string; attempts: number; dead: boolean; in_backoff: boolean; next_attempt_at: number }>(
    db,
    readOnly
      ? sql`SELECT ${columns} FROM ${engineSchema().failures} WHERE reconciler = ${reconciler} AND key = ANY(${keyArray})`
      : sql`UPDATE ${engineSchema().failures} SET last_seen_at = now() WHERE reconciler = ${reconciler} AND key = ANY(${keyArray}) RETURNING ${columns}`,
  );
  for (const row of rows) {
    found.set(row.key, { attempts: Number(row.attempts), dead: row.dead, inBackoff: row.in_backoff, nextAttemptAt: new Date(Number(row.next_attempt_at)) });
  }
  return found;
}

export interface FailureRecord {
  reconciler: string;
  partition: number;
  key: string;
  error: string;
  /** Delay before the next attempt, from the attempt number the pass saw. */
  delayMs: number;
  /** A TerminalError: dead at once. */
  terminal: boolean;
  maxAttempts: number;
}

/**
 * Remembers a failed attempt: attempts + 1 (counted in SQL, so a concurrent `retry` is
 * not undone), the last error, the next attempt time (database clock), dead or not.
 * Returns the attempts so far and whether the item is now dead.
 */
export async function recordFailure(db: Db, f: FailureRecord): Promise<{ attempts: number; dead: boolean }> {
  const [row] = await queryRows<{ attempts: number; dead: boolean }>(
    db,
    sql`INSERT INTO ${engineSchema().failures} AS f (reconciler, key, partition, attempts, last_error, next_attempt_at, dead_at)
        VALUES (${f.reconciler}, ${f.key}, ${f.partition}, 1, ${f.error},
                now() + ${Math.round(f.delayMs)} * interval '1 millisecond',
                CASE WHEN ${f.terminal} OR ${f.maxAttempts} <= 1 THEN now() END)
        ON CONFLICT (reconciler, key) DO UPDATE SET
          attempts = f.attempts + 1, last_error = excluded.last_error, last_failed_at = now(),
          next_attempt_at = excluded.next_attempt_at, last_seen_at = now(), partition = excluded.partition,
          dead_at = CASE WHEN ${f.terminal} OR f.attempts + 1 >= ${f.maxAttempts} THEN now() END
        RETURNING attempts, dead_at IS NOT NULL AS dead`,
  );
  return { attempts: Number(row?.attempts ?? 1), dead: Boolean(row?.dead) };
}

/** Forgets items that succeeded (one statement for all of them). */
export async function forgetFailures(db: Db, reconciler: string, keys: readonly string[]): Promise<void> {
  if (keys.length === 0) return;
  const { failures } = engineSchema();
  await db.delete(failures).where(and(eq(failures.reconciler, reconciler), keys.length === 1 ? eq(failures.key, keys[0]!) : inArray(failures.key, [...keys])));
}

/**
 * Which failing items an action aims at: one key, one error group (failure-groups.ts), or every
 * one of a reconciler; `deadOnly` narrows a group or all to the dead items.
 */
export type FailureTarget = { key: string } | { group: string; deadOnly?: boolean } | { all: true; deadOnly?: boolean };

function targetCondition(target: FailureTarget | undefined): SQL {
  if (target === undefined) return sql`true`;
  if ('key' in target) return sql`key = ${target.key}`;
  const dead = target.deadOnly ? sql`dead_at IS NOT NULL` : sql`true`;
  return 'group' in target ? sql`error_group = ${target.group} AND ${dead}` : dead;
}

/** The target in a few words, for the audit log: `key k`, `group g`, `dead in group g`, `all`, `all dead`. */
export function describeTarget(target: FailureTarget): string {
  if ('key' in target) return `key ${target.key}`;
  if ('group' in target) return `${target.deadOnly ? 'dead in ' : ''}group ${target.group}`;
  return target.deadOnly ? 'all dead' : 'all';
}

/** Failing items (oldest failure first) with their error group, of one reconciler, group and key if given, and how many match in all. */
export async function listFailures(
  db: Db,
  options: { reconciler?: string; deadOnly?: boolean; group?: string; key?: string; limit: number },
): Promise<{ items: (FailureRow & { group: string })[]; total: number }> {
  const { failures } = engineSchema();
  const where = sql`${options.reconciler === undefined ? sql`true` : sql`reconciler = ${options.reconciler}`}
    AND ${options.deadOnly ? sql`dead_at IS NOT NULL` : sql`true`}
    AND ${targetCondition(options.group === undefined ? undefined : { group: options.group })}
    AND ${targetCondition(options.key === undefined ? undefined : { key: options.key })}`;
  const rows = await db.select().from(failures).where(where).orderBy(asc(failures.reconciler), asc(failures.lastFailedAt)).limit(options.limit);
  // Counted apart, so that the page of rows is read by the index, not sorted out of every match.
  const total = rows.length < options.limit ? rows.length : Number((await queryRows<{ n: number }>(db, sql`SELECT count(*)::int AS n FROM ${failures} WHERE ${where}`))[0]?.n ?? 0);
  return { items: rows.map(({ errorGroup, ...row }) => ({ ...row, group: errorGroup })), total };
}

/** Per reconciler: items in backoff and dead items. */
export async function countFailures(db: Db): Promise<Map<string, { backoff: number; dead: number }>> {
  const rows = await queryRows<{ reconciler: string; backoff: number; dead: number }>(
    db,
    sql`SELECT reconciler, count(*) FILTER (WHERE dead_at IS NULL)::int AS backoff, count(*) FILTER (WHERE dead_at IS NOT NULL)::int AS dead
        FROM ${engineSchema().failures} GROUP BY reconciler`,
  );
  return new Map(rows.map((r) => [r.reconciler, { backoff: Number(r.backoff), dead: Number(r.dead) }]));
}

/**
 * `retry`: makes failed items due now with a fresh attempt budget, dead or not. The last error
 * stays visible until the next attempt. Returns the keys it changed.
 */
export async function retryFailures(db: Db, reconciler: string, target: FailureTarget): Promise<string[]> {
  const rows = await queryRows<{ key: string }>(
    db,
    sql`UPDATE ${engineSchema().failures} SET attempts = 0, dead_at = NULL, next_attempt_at = now()
        WHERE reconciler = ${reconciler} AND ${targetCondition(target)} RETURNING key`,
  );
  return rows.map((r) => r.key);
}

/** `clear`: forgets failed items. If the scan still finds them, they start over as new. Returns the keys it forgot. */
export async function clearFailures(db: Db, reconciler: string, target: FailureTarget): Promise<string[]> {
  const rows = await queryRows<{ key: string }>(db, sql`DELETE FROM ${engineSchema().failures} WHERE reconciler = ${reconciler} AND ${targetCondition(target)} RETURNING key`);
  return rows.map((r) => r.key);
}
