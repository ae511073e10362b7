/**
 * Realistic returns for the demo and for load: `npm run seed -- --returns N`. Each return
 * needs a charge, a refund, or nothing, in a mix; the counts printed come from the same
 * rule the service applies (decideSettlement), so they are what settling will do.
 */
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from 'reconciler';
import { decideSettlement, money } from './settlement.js';
import { dice } from './dice.js';

export interface SeedCounts {
  returns: number;
  charge: number;
  refund: number;
  none: number;
  chargeMinor: number;
  refundMinor: number;
}

const ITEMS_PER_FIX = 5;
const STYLING_FEE_CENTS = 2_000;
const BATCH = 2_000;
const NAMES = ['Ada Lovelace', 'Grace Hopper', 'Alan Turing', 'Katherine Johnson', 'Edsger Dijkstra', 'Barbara Liskov', 'Donald Knuth', 'Frances Allen'];
const GOODS = ['linen shirt', 'denim jacket', 'wool sweater', 'chinos', 'sneakers', 'silk scarf', 'midi dress', 'leather belt'];

const array = (values: readonly (string | number)[], type: 'int[]' | 'text[]') => sql`${`{${values.map((v) => (typeof v === 'number' ? v : `"${v}"`)).join(',')}}`}::${sql.raw(type)}`;

/** Adds `count` returns (with their customers, Fixes and items); returns what settling them will take. */
export async function seedReturns(db: Db, count: number, seed = 1): Promise<SeedCounts> {
  const roll = dice(seed);
  const counts: SeedCounts = { returns: 0, charge: 0, refund: 0, none: 0, chargeMinor: 0, refundMinor: 0 };
  for (let done = 0; done < count; done += BATCH) {
    const n = Math.min(BATCH, count - done);
    // One transaction per batch: a return and its returned items appear together, as when the warehouse records them.
    await db.transaction(async (tx) => {
      await seedBatch(tx as unknown as Db, n, roll, counts);
    });
  }
  return counts;
}

async function seedBatch(db: Db, n: number, roll: () => number, counts: SeedCounts): Promise<void> {
  const names = Array.from({ length: n }, () => NAMES[Math.floor(roll() * NAMES.length)]!);
  const customers = await queryRows<{ id: number }>(
    db,
    sql`INSERT INTO customers (name, email, payment_method)
        SELECT name, lower(replace(name, ' ', '.')) || '+' || floor(random() * 1e9)::bigint || '@example.com', 'pm_card_visa'
        FROM unnest(${array(names, 'text[]')}) AS name RETURNING id`,
  );
  const fixRows: { customerId: number; prepaid: number; prices: number[]; returned: boolean[] }[] = customers.map((c) => {
    const prices = Array.from({ length: ITEMS_PER_FIX }, () => 1_500 + Math.floor(roll() * 100) * 100);
    const scenario = roll();
    // ~45% kept things they had not paid for (charge); ~35% prepaid and sent things back (refund); ~20% prepaid exactly what they kept.
    const returned = prices.map(() => roll() < 0.5);
    if (scenario >= 0.45 && !returned.includes(true)) returned[0] = true;
    const kept = prices.reduce((sum, price, i) => sum + (returned[i] ? 0 : price), 0);
    const all = prices.reduce((sum, price) => sum + price, 0);
    const prepaid = scenario < 0.45 ? 0 : scenario < 0.8 ? STYLING_FEE_CENTS + all : STYLING_FEE_CENTS + kept;
    return { customerId: Number(c.id), prepaid, prices, returned };
  });
  const fixes = await queryRows<{ id: number }>(
    db,
    sql`INSERT INTO fixes (customer_id, currency, styling_fee_minor, prepaid_minor, shipped_at)
        SELECT customer_id, 'USD', ${STYLING_FEE_CENTS}, prepaid, now() - interval '10 days'
        FROM unnest(${array(fixRows.map((f) => f.customerId), 'int[]')}, ${array(fixRows.map((f) => f.prepaid), 'int[]')}) AS t(customer_id, prepaid)
        RETURNING id`,
  );
  const fixIds = fixes.map((f) => Number(f.id));
  const items = await queryRows<{ id: number }>(
    db,
    sql`INSERT INTO fix_items (fix_id, sku, description, price_minor)
        SELECT fix_id, 'SKU-' || lpad((floor(random() * 99999))::text, 5, '0'), description, price
        FROM unnest(${array(fixIds.flatMap((id) => Array(ITEMS_PER_FIX).fill(id)), 'int[]')},
                    ${array(fixRows.flatMap(() => Array.from({ length: ITEMS_PER_FIX }, () => GOODS[Math.floor(roll() * GOODS.length)]!)), 'text[]')},
                    ${array(fixRows.flatMap((f) => f.prices), 'int[]')}) WITH ORDINALITY AS t(fix_id, description, price, ord)
        ORDER BY ord RETURNING id`,
  );
  const returns = await queryRows<{ id: number }>(
    db,
    sql`INSERT INTO returns (fix_id, received_at, recorded_by) SELECT fix_id, now() - interval '1 hour', 'warehouse-seed'
        FROM unnest(${array(fixIds, 'int[]')}) WITH ORDINALITY AS t(fix_id, ord) ORDER BY ord RETURNING id`,
  );
  const returnedPairs: [number, number][] = [];
  fixRows.forEach((fix, f) => {
    fix.returned.forEach((back, i) => {
      if (back) returnedPairs.push([Number(returns[f]!.id), Number(items[f * ITEMS_PER_FIX + i]!.id)]);
    });
    const decision = decideSettlement({ currency: 'USD', stylingFeeMinor: STYLING_FEE_CENTS, prepaidMinor: fix.prepaid, items: fix.prices.map((priceMinor, i) => ({ priceMinor, returned: fix.returned[i]! })) });
    counts[decision.kind]++;
    if (decision.kind === 'charge') counts.chargeMinor += decision.amountMinor;
    if (decision.kind === 'refund') counts.refundMinor += decision.amountMinor;
  });
  if (returnedPairs.length > 0) {
    await queryRows(
      db,
      sql`INSERT INTO return_items (return_id, fix_item_id)
          SELECT * FROM unnest(${array(returnedPairs.map((p) => p[0]), 'int[]')}, ${array(returnedPairs.map((p) => p[1]), 'int[]')})`,
    );
  }
  counts.returns += n;
}

export function describeSeed(counts: SeedCounts): string {
  return (
    `added ${counts.returns} return(s): ${counts.charge} to charge (${money(counts.chargeMinor, 'USD')}), ` +
    `${counts.refund} to refund (${money(counts.refundMinor, 'USD')}), ${counts.none} with nothing due`
  );
}
