/**
 * Closing Fixes: a Fix is done once every return of it is settled and nothing more can come
 * back. Database-only work, and set-based: the scan reads the ready Fixes in keyset pages over
 * the partial index `fixes_open`, and a whole batch is closed by ONE statement that checks the
 * condition again, so a Fix that changed since the scan (a new return, closed by someone else)
 * is never closed wrongly.
 *
 * Ready to close (`readyToClose`, the one definition the scan and the close share):
 * - open (`closed_at IS NULL`);
 * - its return window is over: shipped at least RETURN_WINDOW_DAYS ago, so nothing more comes back;
 * - no return of it is still to settle (settle-returns, or a person with settled-by-hand, settled each);
 * - it came back at least once (the warehouse records a return, with no items when the customer
 *   kept everything, and settle-returns charges what is owed), or, with no return at all, the
 *   customer prepaid exactly what keeping everything costs. A Fix with no return and money due
 *   stays open: closing it would hide that money (no reconciler here collects it).
 */
import { sql } from 'drizzle-orm';
import { queryRows, sqlArray, type Db, type ReconcileResult } from 'reconciler';
import { money } from './settlement.js';
import { explainMissingTables } from './service.js';

/** How long after shipping a customer may still send items back. */
export const RETURN_WINDOW_DAYS = 7;
const returnWindow = sql.raw(`interval '${RETURN_WINDOW_DAYS} days'`);

/** An item of the close-fixes scan: a Fix ready to close. */
export interface FixToClose {
  id: number;
  /** Since when it could have been closed: the end of its return window, or its last return's settling if later. */
  readySince: Date;
}

/** close-fixes' key, `fix:<id>`. */
export const fixKey = (id: number): string => `fix:${id}`;

/**
 * The condition, on `fixes f`, of a Fix ready to close (see the module's comment): every return
 * settled, or with no return (bool_and of no rows is null) prepaid in full. It is one lookup of
 * the Fix's own returns through returns_by_fix, evaluated per Fix: a NOT EXISTS here would be
 * planned as an anti join that walks returns_by_fix from the first Fix at every page, and an
 * EXISTS inside an OR as a hashed subplan that reads every return there is.
 */
const readyToClose = sql`f.closed_at IS NULL
  AND f.shipped_at <= now() - ${returnWindow}
  AND (SELECT coalesce(bool_and(r.settled_at IS NOT NULL),
                       f.prepaid_minor = f.styling_fee_minor + (SELECT coalesce(sum(fi.price_minor), 0) FROM fix_items fi WHERE fi.fix_id = f.id))
       FROM returns r WHERE r.fix_id = f.id)`;

/** Fixes ready to close, in keyset pages by id, through the partial index `fixes_open` (open Fixes only). */
export async function findFixesToClose(db: Db, afterId: number, limit: number): Promise<FixToClose[]> {
  const rows = await queryRows<{ id: number; ready_ms: number }>(
    db,
    sql`SELECT f.id, (extract(epoch FROM greatest(f.shipped_at + ${returnWindow}, (SELECT max(r.settled_at) FROM returns r WHERE r.fix_id = f.id))) * 1000)::float8 AS ready_ms
        FROM fixes f WHERE f.id > ${afterId} AND ${readyToClose} ORDER BY f.id LIMIT ${limit}`,
  ).catch(explainMissingTables);
  return rows.map((row) => ({ id: Number(row.id), readySince: new Date(Number(row.ready_ms)) }));
}

interface BatchRow {
  id: number;
  /** This statement closed it (or, in a dry run, would). */
  acted: boolean;
  exists: boolean;
  closed_at: string | null;
  returns: number;
  unsettled: string | null;
  days_since_shipped: number | null;
  days_since_window: number | null;
  currency: string | null;
  due_minor: number | null;
}

/**
 * Closes the Fixes `fixIds` that are ready, in one statement that checks `readyToClose` again
 * (under `dryRun`, the same statement with a SELECT in place of the UPDATE: nothing changes).
 * Returns each Fix's outcome by its key: `changed` (closed, or would be), `unchanged` (closed
 * already, by someone else, or gone), `skipped` (no longer ready: a return came in since the
 * scan), each with a note that says why.
 */
export async function closeFixes(db: Db, fixIds: readonly number[], dryRun: boolean): Promise<Map<string, ReconcileResult>> {
  const ids = sqlArray(fixIds, 'int');
  const act = dryRun
    ? sql`SELECT f.id FROM fixes f WHERE f.id = ANY(${ids}) AND ${readyToClose}`
    : sql`UPDATE fixes f SET closed_at = now() WHERE f.id = ANY(${ids}) AND ${readyToClose} RETURNING f.id`;
  // The outer SELECT sees the Fixes as they were when the statement began: what explains a Fix it did not close.
  const rows = await queryRows<BatchRow>(
    db,
    sql`WITH acted AS (${act})
        SELECT b.id, a.id IS NOT NULL AS acted, f.id IS NOT NULL AS exists, f.closed_at::text AS closed_at,
               (SELECT count(*) FROM returns r WHERE r.fix_id = b.id)::int AS returns,
               (SELECT string_agg('return ' || r.id, ', ' ORDER BY r.id) FROM returns r WHERE r.fix_id = b.id AND r.settled_at IS NULL) AS unsettled,
               floor(extract(epoch FROM now() - f.shipped_at) / 86400)::int AS days_since_shipped,
               floor(extract(epoch FROM now() - f.shipped_at - ${returnWindow}) / 86400)::int AS days_since_window,
               f.currency,
               (f.styling_fee_minor + (SELECT coalesce(sum(fi.price_minor), 0) FROM fix_items fi WHERE fi.fix_id = f.id) - f.prepaid_minor)::int AS due_minor
        FROM unnest(${ids}) AS b(id) LEFT JOIN fixes f ON f.id = b.id LEFT JOIN acted a ON a.id = b.id`,
  );
  return new Map(rows.map((row) => [fixKey(Number(row.id)), outcomeOf(row, dryRun)]));
}

const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;

/** One Fix's outcome, and the note that says why. */
function outcomeOf(row: BatchRow, dryRun: boolean): ReconcileResult {
  const fix = `Fix ${row.id}`;
  if (row.acted) {
    const returns = Number(row.returns);
    const why = returns === 0 ? 'no returns, prepaid in full (the customer kept everything)' : `${plural(returns, 'return')}, all settled`;
    const days = Number(row.days_since_window);
    return { outcome: 'changed', note: `${dryRun ? 'would close' : 'closed'} ${fix}: ${why}; its return window ended ${days === 0 ? 'today' : `${plural(days, 'day')} ago`}` };
  }
  if (!row.exists) return { outcome: 'unchanged', note: `${fix} no longer exists: nothing to close` };
  if (row.closed_at !== null) return { outcome: 'unchanged', note: `${fix} was closed already (at ${row.closed_at})` };
  if (row.unsettled !== null) return { outcome: 'skipped', note: `${fix} is not closed: it has a return to settle (${row.unsettled})` };
  if (Number(row.days_since_window) < 0) return { outcome: 'skipped', note: `${fix} is not closed: shipped ${plural(Number(row.days_since_shipped), 'day')} ago, items may still come back` };
  if (Number(row.returns) === 0 && Number(row.due_minor) !== 0) {
    const due = Number(row.due_minor);
    return { outcome: 'skipped', note: `${fix} is not closed: no return was recorded, and keeping everything leaves ${money(Math.abs(due), row.currency!)} ${due > 0 ? 'to charge' : 'to refund'}` };
  }
  return { outcome: 'unchanged', note: `${fix} was closed by someone else during this batch` };
}
