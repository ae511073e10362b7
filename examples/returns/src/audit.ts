/**
 * The exactly-once audit: compares what should have happened (the settlement rule applied to
 * every return) with the payments ledger in the database and the effects at the provider.
 * Used by the fault runner and the tests; an operator can run the same check.
 */
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from 'reconciler';
import { decideSettlement, signedMinor, type Settlement } from './settlement.js';

/** One effect applied by the provider (its `GET /v1/ledger`). */
export interface ProviderEffect {
  id: string;
  kind: string;
  amount: number;
  idempotencyKey: string;
  returnId: string;
}

export interface SettlementAudit {
  returns: number;
  /** Returns the rule says need a charge or a refund. */
  needingEffect: number;
  /** Provider effects for these returns. */
  effects: number;
  /** Returns with more than one effect at the provider. */
  duplicates: number;
  /** Returns needing an effect that have none and are not declined. */
  missing: number;
  /** Effects whose amount, kind or key differ from the payment intent, or intents marked succeeded without their effect. */
  disagreements: number;
  declined: number;
  /** Returns a person settled by hand (settled-by-hand: their intent declined or never sent): no effect, and none missing. */
  settledByHand: number;
  /** Returns still unsettled (other than declined ones). */
  unsettled: number;
  /** The most idempotency keys seen for one return at the provider (1 is right). */
  maxKeysPerReturn: number;
}

interface AuditedReturn {
  id: number;
  fix_id: number;
  settled: boolean;
  currency: string;
  fee: number;
  prepaid: number;
  /** The Fix's items: the ids this return sent back, and every item's price. */
  items: { id: number; priceMinor: number; returnedHere: boolean }[] | null;
}

interface AuditedPayment {
  id: number;
  return_id: number;
  kind: string;
  amount_minor: number;
  idempotency_key: string;
  state: string;
  provider_ref: string | null;
  resolved: boolean;
}

/**
 * What the rule expects of each return: the Fix's returns replayed in the order their decisions
 * were taken (by their intents' order; returns without an intent last, by id), each counting the
 * items of those before it as returned and what they moved (once final) as paid, as
 * decideAndRecord does. A return decided "nothing due" has no intent to order it by: on a Fix
 * with several returns it may be replayed later than it was decided.
 */
function expectedSettlements(returns: readonly AuditedReturn[], paymentOf: ReadonlyMap<string, AuditedPayment>): Map<number, Settlement> {
  const byFix = new Map<number, AuditedReturn[]>();
  for (const ret of returns) byFix.set(Number(ret.fix_id), [...(byFix.get(Number(ret.fix_id)) ?? []), ret]);
  const expected = new Map<number, Settlement>();
  const order = (ret: AuditedReturn) => Number(paymentOf.get(String(ret.id))?.id ?? Number.MAX_SAFE_INTEGER);
  for (const fixReturns of byFix.values()) {
    const counted = new Set<number>();
    let movedMinor = 0;
    for (const ret of [...fixReturns].sort((a, b) => order(a) - order(b) || Number(a.id) - Number(b.id))) {
      const items = ret.items ?? [];
      for (const item of items) if (item.returnedHere) counted.add(Number(item.id));
      const decision = decideSettlement({ currency: ret.currency, stylingFeeMinor: Number(ret.fee), prepaidMinor: Number(ret.prepaid), movedMinor, items: items.map((item) => ({ priceMinor: Number(item.priceMinor), returned: counted.has(Number(item.id)) })) });
      expected.set(Number(ret.id), decision);
      // What a return moved counts for the next once final: succeeded, or resolved by hand (as the service decides).
      const payment = paymentOf.get(String(ret.id));
      if (decision.kind !== 'none' && payment && (payment.state === 'succeeded' || payment.resolved)) movedMinor += signedMinor(decision.kind, decision.amountMinor);
    }
  }
  return expected;
}

export async function auditSettlement(db: Db, ledger: readonly ProviderEffect[]): Promise<SettlementAudit> {
  const returns = await queryRows<AuditedReturn>(
    db,
    sql`SELECT r.id, r.fix_id, r.settled_at IS NOT NULL AS settled, f.currency, f.styling_fee_minor AS fee, f.prepaid_minor AS prepaid,
               (SELECT json_agg(json_build_object('id', fi.id, 'priceMinor', fi.price_minor, 'returnedHere', ri.return_id IS NOT NULL))
                  FROM fix_items fi LEFT JOIN return_items ri ON ri.fix_item_id = fi.id AND ri.return_id = r.id WHERE fi.fix_id = f.id) AS items
        FROM returns r JOIN fixes f ON f.id = r.fix_id`,
  );
  const payments = await queryRows<AuditedPayment>(
    db,
    sql`SELECT id, return_id, kind, amount_minor, idempotency_key, state, provider_ref, resolved_at IS NOT NULL AS resolved FROM payments`,
  );
  const paymentOf = new Map(payments.map((p) => [String(p.return_id), p]));
  const expected = expectedSettlements(returns, paymentOf);
  const ids = new Set(returns.map((r) => String(r.id)));
  const effectsOf = new Map<string, ProviderEffect[]>();
  for (const effect of ledger) if (ids.has(effect.returnId)) effectsOf.set(effect.returnId, [...(effectsOf.get(effect.returnId) ?? []), effect]);

  const audit: SettlementAudit = { returns: returns.length, needingEffect: 0, effects: 0, duplicates: 0, missing: 0, disagreements: 0, declined: 0, settledByHand: 0, unsettled: 0, maxKeysPerReturn: 0 };
  for (const ret of returns) {
    const key = String(ret.id);
    const effects = effectsOf.get(key) ?? [];
    const payment = paymentOf.get(key);
    const decision = expected.get(Number(ret.id))!;
    audit.effects += effects.length;
    audit.maxKeysPerReturn = Math.max(audit.maxKeysPerReturn, new Set(effects.map((e) => e.idempotencyKey)).size);
    if (effects.length > 1) audit.duplicates++;
    if (payment?.state === 'declined') audit.declined++;
    else if (!ret.settled) audit.unsettled++;
    if (payment?.resolved) audit.settledByHand++;
    if (decision.kind === 'none') {
      if (effects.length > 0 || payment) audit.disagreements++;
      continue;
    }
    audit.needingEffect++;
    if (effects.length === 0 && payment?.state !== 'declined' && !payment?.resolved) audit.missing++;
    const effect = effects[0];
    if (
      effect &&
      (!payment || payment.state !== 'succeeded' || effect.kind !== payment.kind || Number(effect.amount) !== Number(payment.amount_minor) || effect.idempotencyKey !== payment.idempotency_key || effect.id !== payment.provider_ref)
    ) {
      audit.disagreements++;
    }
    if (payment && (payment.kind !== decision.kind || Number(payment.amount_minor) !== decision.amountMinor)) audit.disagreements++;
    if (payment?.state === 'succeeded' && !effect) audit.disagreements++;
  }
  return audit;
}
