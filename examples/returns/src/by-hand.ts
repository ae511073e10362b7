/**
 * settled-by-hand: settle-returns' manual action. A person settled a return's money outside the
 * provider (refunded by phone, wrote the charge off) and records it, so that the scan stops
 * finding the return. It never calls the provider.
 *
 * The rule, safest first: it settles a return only when the provider cannot have applied (and
 * will never apply) its charge or refund, that is when the payment intent
 * - was declined by the provider (the item is dead: the usual case), or
 * - was written but its key never sent (or there is no intent yet: the action writes the one the
 *   rule asks for, so that the ledger holds what was settled by hand).
 * - was sent, but its key can no longer apply (the provider replayed a saved answer for it, or it
 *   is retired) and its outcome is unknown: the item parked for a person, who looked it up at
 *   the provider and did not find it (if they did, adopt-effect records it).
 * It refuses when the provider confirmed the effect (the reconciler settles that return itself),
 * when the intent's key was sent and its outcome is not known (it may be in flight or applied:
 * settling it by hand could move the money twice; `reconciler retry` asks the provider with the
 * same key instead), when nothing is due, and when the return is already settled.
 *
 * In the transaction that also writes the audit row: the return is locked (`FOR UPDATE`, which
 * also holds back the foreign-key check of a concurrent intent insert), then the intent is
 * resolved by a compare-and-set on "never sent". settleReturn's send is the other half of the
 * fence: a compare-and-set on "not resolved, return not settled". So either the send comes first
 * and this refuses, or this comes first and nothing is sent.
 */
import { queryRows, sql, type ActionContext, type Db, type ManualAction } from 'reconciler';
import { decideAndRecord, intentOf, loadReturn, type Intent } from './service.js';
import { keyCanNoLongerApply, keySpentForSql } from './resolution.js';
import { DEFAULT_SEARCH_LAG_MS, loadProviderConfig } from './config.js';
import { money } from './settlement.js';

export const settledByHand: ManualAction = {
  description: 'records the return as settled by hand (the money moved outside the provider), with no provider call; only if the provider declined it or never got it',
  run: settleByHand,
};

/** The largest `returns.id` (a PostgreSQL integer). */
const MAX_ID = 2_147_483_647;

/** `return:16` → 16; anything else is refused with the form it expects. */
export function parseReturnKey(key: string): number {
  const match = /^return:([1-9][0-9]{0,9})$/.exec(key);
  const id = match ? Number(match[1]) : Number.NaN;
  if (!(id <= MAX_ID)) throw new Error(`expected a key like return:16, not ${JSON.stringify(key.slice(0, 60))}`);
  return id;
}

interface LockedReturn {
  /** `2026-12-05 08:40:12`, UTC */
  settled_at: string | null;
  settlement: string | null;
  kind: string | null;
  provider_ref: string | null;
  resolved_by: string | null;
}

export async function settleByHand(key: string, ctx: ActionContext): Promise<string> {
  const returnId = parseReturnKey(key);
  // The Fix first, then the return: the order settleReturn's decision takes them in (see decideAndRecord).
  await queryRows(ctx.db, sql`SELECT f.id FROM fixes f JOIN returns r ON r.fix_id = f.id WHERE r.id = ${returnId} FOR UPDATE OF f`);
  const [locked] = await queryRows<LockedReturn>(
    ctx.db,
    sql`SELECT to_char(r.settled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS settled_at, r.settlement, p.kind, p.provider_ref, p.resolved_by
        FROM returns r LEFT JOIN payments p ON p.return_id = r.id
        WHERE r.id = ${returnId} FOR UPDATE OF r`,
  );
  if (!locked) throw new Error(`there is no return ${returnId}`);
  if (locked.settled_at !== null) throw new Error(`return ${returnId} is already settled: ${howSettled(locked)}`);

  // A new statement, after the lock: it sees an intent inserted or sent by an attempt that committed meanwhile.
  const row = (await loadReturn(ctx.db, returnId))!;
  const intent = intentOf(row) ?? (await intendedNow(ctx.db, returnId));
  const what = `${intent.kind} of ${money(intent.amountMinor, intent.currency)} to ${row.customer_name}`;
  const lagMs = searchLagMs();
  refuseUnlessSafe(returnId, intent, what, lagMs);

  const resolved = await queryRows<{ state: string }>(
    ctx.db,
    sql`UPDATE payments SET resolved_at = now(), resolved_by = ${ctx.actor}, resolution_note = ${ctx.note}, updated_at = now()
        WHERE id = ${intent.id} AND resolved_at IS NULL AND idempotency_key = ${intent.idempotencyKey}
          AND (state = 'declined' OR (state = 'pending' AND first_sent_at IS NULL) OR ${keySpentForSql(lagMs)})
        RETURNING state`,
  );
  if (resolved.length === 0) throw new Error(`the ${what} (return ${returnId}) changed while this action ran: look at it again`);
  await queryRows(ctx.db, sql`UPDATE returns SET settled_at = now(), settlement = 'by-hand' WHERE id = ${returnId}`);
  const why = intent.state === 'declined' ? 'declined at the provider' : intent.state === 'unknown' ? 'its key spent, and not found at the provider by the person who looked' : 'never sent to the provider';
  return `return ${returnId} marked settled by hand (${what} ${why})`;
}

/** No intent yet: the one the rule asks for, written now (never sent), so that the ledger says what was settled by hand. */
async function intendedNow(db: Db, returnId: number): Promise<Intent> {
  const decided = await decideAndRecord(db, returnId);
  if (decided === 'none' || decided === 'settled') {
    throw new Error(`nothing is due for return ${returnId}, so there is nothing to settle by hand: \`reconciler run settle-returns --key return:${returnId}\` settles it with no provider call`);
  }
  return decided;
}

/** The provider's search lag as configured (PAYMENT_PROVIDER_SEARCH_LAG), or its default when the configuration cannot be read. */
function searchLagMs(): number {
  try {
    return loadProviderConfig()?.searchLagMs ?? DEFAULT_SEARCH_LAG_MS;
  } catch {
    return DEFAULT_SEARCH_LAG_MS;
  }
}

function refuseUnlessSafe(returnId: number, intent: Intent, what: string, lagMs: number): void {
  if (intent.state === 'succeeded') {
    throw new Error(`the provider already confirmed the ${what} (${intent.providerRef}); run \`reconciler run settle-returns --key return:${returnId}\` instead`);
  }
  if (intent.state === 'declined' || (intent.state === 'pending' && intent.hoursSinceFirstSend === null)) return;
  // A spent key (replayed saved answer, or retired) that a search would show by now: the person who looked it up says it did not apply.
  if (keyCanNoLongerApply(intent, lagMs)) return;
  const sent = intent.hoursSinceFirstSend === null ? '' : ` ${formatHours(intent.hoursSinceFirstSend)} ago`;
  throw new Error(
    `the ${what} (return ${returnId}) was sent to the provider${sent} and its outcome is unknown: it may be in flight or applied, so settling it by hand could move the money twice; ` +
      `\`reconciler retry settle-returns return:${returnId}\` asks the provider again (idempotency key ${intent.idempotencyKey}), and looks the outcome up there if it stays unknown; ` +
      `if you found it at the provider, \`reconciler act settle-returns return:${returnId} adopt-effect --note <its id>\` records it`,
  );
}

function howSettled(r: LockedReturn): string {
  const at = `on ${r.settled_at} UTC`;
  if (r.settlement === 'by-hand') return `by hand${r.resolved_by === null ? '' : ` by ${r.resolved_by}`} ${at}`;
  if (r.settlement === 'none') return `nothing was due, ${at}`;
  if ((r.settlement === 'charge' || r.settlement === 'refund') && r.kind === r.settlement) return `${r.settlement === 'charge' ? 'charged' : 'refunded'} at the provider (${r.provider_ref}) ${at}`;
  return `${r.settlement ?? 'with no settlement recorded'}, ${at}`;
}

function formatHours(hours: number): string {
  return hours < 1 ? `${Math.max(1, Math.round(hours * 60))} min` : `${Math.floor(hours)} h`;
}
