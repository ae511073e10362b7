/**
 * Realistic returns for the demo and for load: `npm run seed -- --returns N`. Each return
 * needs a charge, a refund, or nothing, in a mix; the counts printed come from the same
 * rule the service applies (decideSettlement), so they are what settling will do.
 *
 * Fixes are priced in their currency's minor units (USD by default; `currencies` mixes others,
 * e.g. JPY with no decimals and KWD with three). What a customer prepaid was charged at
 * checkout: given a provider (`checkout`), the seed makes that charge there and records it on
 * the Fix (`checkout_charge_ref`), the original payment that the Fix's refunds are made against.
 */
import { sql } from 'drizzle-orm';
import { queryRows, sqlArray, type Db } from 'reconciler';
import { decideSettlement, money } from './settlement.js';
import { minorPerMajor } from './money.js';
import { ProviderError, type EffectRequest, type EffectResult, type PaymentProvider } from './provider.js';
import { dice } from './dice.js';

export interface SeedCounts {
  returns: number;
  charge: number;
  refund: number;
  none: number;
  /** What settling will charge and refund, per currency, in minor units. */
  chargeMinor: Record<string, number>;
  refundMinor: Record<string, number>;
  /** Checkout charges made at the provider for prepaid Fixes. */
  checkoutCharges: number;
}

export interface SeedOptions {
  /** The currencies of the Fixes, drawn in turn by the dice (repeat one to weigh it). Default: USD only. */
  currencies?: readonly string[];
  /** The provider to charge prepaid Fixes at checkout; without one, they have no checkout charge and their refunds are parked. */
  checkout?: PaymentProvider;
}

/** A Fix's prices in its currency: the same draws, scaled to what an item costs there (about 15 to 115 USD). */
const PRICE_UNIT_MINOR: Readonly<Record<string, number>> = { USD: 100, EUR: 100, GBP: 100, JPY: 150, KWD: 300 };
const unitOf = (currency: string) => PRICE_UNIT_MINOR[currency] ?? minorPerMajor(currency);
/** How many checkout charges are in flight at once. */
const CHECKOUT_CONCURRENCY = 16;

const ITEMS_PER_FIX = 5;
const STYLING_FEE_CENTS = 2_000;
const BATCH = 2_000;
const NAMES = ['Ada Lovelace', 'Grace Hopper', 'Alan Turing', 'Katherine Johnson', 'Edsger Dijkstra', 'Barbara Liskov', 'Donald Knuth', 'Frances Allen'];
const GOODS = ['linen shirt', 'denim jacket', 'wool sweater', 'chinos', 'sneakers', 'silk scarf', 'midi dress', 'leather belt'];

/** Adds `count` returns (with their customers, Fixes and items); returns what settling them will take. */
export async function seedReturns(db: Db, count: number, seed = 1, options: SeedOptions = {}): Promise<SeedCounts> {
  const roll = dice(seed);
  const currencies = options.currencies ?? ['USD'];
  for (const currency of currencies) minorPerMajor(currency); // an unknown code fails here, before anything is written
  const counts: SeedCounts = { returns: 0, charge: 0, refund: 0, none: 0, chargeMinor: {}, refundMinor: {}, checkoutCharges: 0 };
  for (let done = 0; done < count; done += BATCH) {
    const n = Math.min(BATCH, count - done);
    // As it happens: the Fixes ship (and are charged at checkout) before any of them comes back. The returns of a
    // batch appear in one transaction, each with its returned items, as when the warehouse records them.
    const shipped = await db.transaction(async (tx) => shipFixes(tx as unknown as Db, n, roll, currencies));
    if (options.checkout) counts.checkoutCharges += await chargeAtCheckout(db, options.checkout, shipped.fixIds);
    await db.transaction(async (tx) => recordReturns(tx as unknown as Db, shipped, counts));
  }
  return counts;
}

/**
 * Charges the prepaid amount of each Fix of `fixIds` at the provider, as checkout did, and
 * records the charge on the Fix. Idempotent: its key derives from the Fix, and a Fix that has
 * its charge is skipped. Returns how many it charged.
 */
export async function chargeAtCheckout(db: Db, provider: PaymentProvider, fixIds: readonly number[]): Promise<number> {
  if (fixIds.length === 0) return 0;
  const fixes = await queryRows<{ id: number; public_id: string; currency: string; prepaid_minor: number; customer_ref: string; payment_method: string }>(
    db,
    sql`SELECT f.id, f.public_id, f.currency, f.prepaid_minor, 'cus_' || c.id AS customer_ref, c.payment_method
        FROM fixes f JOIN customers c ON c.id = f.customer_id
        WHERE f.id = ANY(${sqlArray(fixIds, 'int')}) AND f.prepaid_minor > 0 AND f.checkout_charge_ref IS NULL ORDER BY f.id`,
  );
  let next = 0;
  const worker = async () => {
    for (let fix = fixes[next++]; fix; fix = fixes[next++]) {
      const intentKey = `fix:${fix.public_id}:checkout`;
      const charged = await chargeRetrying(provider, {
        kind: 'charge',
        idempotencyKey: `${intentKey}:v1`,
        intentKey,
        amountMinor: Number(fix.prepaid_minor),
        currency: fix.currency,
        customer: fix.customer_ref,
        paymentMethod: fix.payment_method,
        metadata: { fix_id: String(fix.id), fix_public_id: fix.public_id },
      });
      await queryRows(db, sql`UPDATE fixes SET checkout_charge_ref = ${charged.id} WHERE id = ${fix.id}`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(CHECKOUT_CONCURRENCY, fixes.length) }, worker));
  return fixes.length;
}

/** Tries of one checkout charge whose outcome stays unknown (a dropped connection, a 500, a rate limit). */
const CHECKOUT_TRIES = 8;

/**
 * One checkout charge, retried as a shop retries it: with the same idempotency key, so that a
 * charge whose answer was lost is answered again instead of made twice. A decline, or an unknown
 * outcome after CHECKOUT_TRIES, is thrown.
 */
async function chargeRetrying(provider: PaymentProvider, request: EffectRequest): Promise<EffectResult> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await provider.charge(request, AbortSignal.timeout(30_000));
    } catch (error) {
      if (!(error instanceof ProviderError) || error.failure !== 'retryable' || attempt >= CHECKOUT_TRIES) throw error;
      await new Promise((resolve) => setTimeout(resolve, Math.min(2_000, 100 * 2 ** attempt)));
    }
  }
}

interface ShippedFix {
  currency: string;
  fee: number;
  prepaid: number;
  prices: number[];
  /** Which of its items will come back. */
  returned: boolean[];
}

interface Shipment {
  fixes: ShippedFix[];
  fixIds: number[];
  /** Their items' ids, ITEMS_PER_FIX per Fix, in order. */
  itemIds: number[];
}

/** Customers, their Fixes and the Fixes' items, drawn by `roll`. */
async function shipFixes(db: Db, n: number, roll: () => number, currencies: readonly string[]): Promise<Shipment> {
  const names = Array.from({ length: n }, () => NAMES[Math.floor(roll() * NAMES.length)]!);
  const customers = await queryRows<{ id: number }>(
    db,
    sql`INSERT INTO customers (name, email, payment_method)
        SELECT name, lower(replace(name, ' ', '.')) || '+' || floor(random() * 1e9)::bigint || '@example.com', 'pm_card_visa'
        FROM unnest(${sqlArray(names, 'text')}) AS name RETURNING id`,
  );
  const fixRows: (ShippedFix & { customerId: number })[] = customers.map((c) => {
    const currency = currencies[Math.floor(roll() * currencies.length)]!;
    const unit = unitOf(currency);
    const prices = Array.from({ length: ITEMS_PER_FIX }, () => (15 + Math.floor(roll() * 100)) * unit);
    const fee = 20 * unit;
    const scenario = roll();
    // ~45% kept things they had not paid for (charge); ~35% prepaid and sent things back (refund); ~20% prepaid exactly what they kept.
    const returned = prices.map(() => roll() < 0.5);
    if (scenario >= 0.45 && !returned.includes(true)) returned[0] = true;
    const kept = prices.reduce((sum, price, i) => sum + (returned[i] ? 0 : price), 0);
    const all = prices.reduce((sum, price) => sum + price, 0);
    const prepaid = scenario < 0.45 ? 0 : scenario < 0.8 ? fee + all : fee + kept;
    return { customerId: Number(c.id), currency, fee, prepaid, prices, returned };
  });
  const fixes = await queryRows<{ id: number }>(
    db,
    sql`INSERT INTO fixes (customer_id, currency, styling_fee_minor, prepaid_minor, shipped_at)
        SELECT customer_id, currency, fee, prepaid, now() - interval '10 days'
        FROM unnest(${sqlArray(fixRows.map((f) => f.customerId), 'int')}, ${sqlArray(fixRows.map((f) => f.currency), 'text')},
                    ${sqlArray(fixRows.map((f) => f.fee), 'int')}, ${sqlArray(fixRows.map((f) => f.prepaid), 'int')}) WITH ORDINALITY AS t(customer_id, currency, fee, prepaid, ord)
        ORDER BY ord RETURNING id`,
  );
  const fixIds = fixes.map((f) => Number(f.id));
  const items = await queryRows<{ id: number }>(
    db,
    sql`INSERT INTO fix_items (fix_id, sku, description, price_minor)
        SELECT fix_id, 'SKU-' || lpad((floor(random() * 99999))::text, 5, '0'), description, price
        FROM unnest(${sqlArray(fixIds.flatMap((id) => Array(ITEMS_PER_FIX).fill(id)), 'int')},
                    ${sqlArray(fixRows.flatMap(() => Array.from({ length: ITEMS_PER_FIX }, () => GOODS[Math.floor(roll() * GOODS.length)]!)), 'text')},
                    ${sqlArray(fixRows.flatMap((f) => f.prices), 'int')}) WITH ORDINALITY AS t(fix_id, description, price, ord)
        ORDER BY ord RETURNING id`,
  );
  return { fixes: fixRows, fixIds, itemIds: items.map((item) => Number(item.id)) };
}

/** One return per shipped Fix, with the items that came back; counts what settling them will take. */
async function recordReturns(db: Db, { fixes, fixIds, itemIds }: Shipment, counts: SeedCounts): Promise<void> {
  const returns = await queryRows<{ id: number }>(
    db,
    sql`INSERT INTO returns (fix_id, received_at, recorded_by) SELECT fix_id, now() - interval '1 hour', 'warehouse-seed'
        FROM unnest(${sqlArray(fixIds, 'int')}) WITH ORDINALITY AS t(fix_id, ord) ORDER BY ord RETURNING id`,
  );
  const returnedPairs: [number, number][] = [];
  fixes.forEach((fix, f) => {
    fix.returned.forEach((back, i) => {
      if (back) returnedPairs.push([Number(returns[f]!.id), itemIds[f * ITEMS_PER_FIX + i]!]);
    });
    const decision = decideSettlement({ currency: fix.currency, stylingFeeMinor: fix.fee, prepaidMinor: fix.prepaid, items: fix.prices.map((priceMinor, i) => ({ priceMinor, returned: fix.returned[i]! })) });
    counts[decision.kind]++;
    if (decision.kind === 'charge') counts.chargeMinor[fix.currency] = (counts.chargeMinor[fix.currency] ?? 0) + decision.amountMinor;
    if (decision.kind === 'refund') counts.refundMinor[fix.currency] = (counts.refundMinor[fix.currency] ?? 0) + decision.amountMinor;
  });
  if (returnedPairs.length > 0) {
    await queryRows(
      db,
      sql`INSERT INTO return_items (return_id, fix_item_id)
          SELECT * FROM unnest(${sqlArray(returnedPairs.map((p) => p[0]), 'int')}, ${sqlArray(returnedPairs.map((p) => p[1]), 'int')})`,
    );
  }
  counts.returns += fixes.length;
}

const totals = (byCurrency: Record<string, number>) => Object.entries(byCurrency).map(([currency, minor]) => money(minor, currency)).join(', ') || 'nothing';

export function describeSeed(counts: SeedCounts): string {
  return (
    `added ${counts.returns} return(s): ${counts.charge} to charge (${totals(counts.chargeMinor)}), ` +
    `${counts.refund} to refund (${totals(counts.refundMinor)}), ${counts.none} with nothing due` +
    (counts.checkoutCharges > 0 ? `; ${counts.checkoutCharges} prepaid Fix(es) charged at checkout` : '')
  );
}
