/**
 * The returns domain under test: the testkit's (testkit/returns.ts) on the server the global
 * setup found, and the checks of the exactly-once promise as vitest assertions.
 */
import { expect, inject } from 'vitest';
import { sql } from 'drizzle-orm';
import type { TestDatabase } from '../../testkit/database.js';
import { ledgerOf, startProvider as startKitProvider, type Provider } from '../../testkit/returns.js';
import type { LedgerEntry } from '../../examples/returns/src/simulator/server.js';
import { auditSettlement } from '../../examples/returns/src/audit.js';
import { StripePaymentProvider } from '../../examples/returns/src/provider.js';
import { chargeAtCheckout, seedReturns, type SeedCounts } from '../../examples/returns/src/seed.js';
import { PROVIDER_KEY } from '../../testkit/returns.js';

export { PROVIDER_KEY, settleEnv, settlePass, makeDue, settleUntilQuiet, ledgerOf, everySettlePartitionPassed, type Provider } from '../../testkit/returns.js';

/** Starts `npm run provider`'s entry point as its own process, storing in its own new database. */
export function startProvider(args: string[] = [], apiKey?: string): Promise<Provider> {
  return startKitProvider(inject('adminUrl'), args, apiKey);
}

/**
 * The promise: every return that needs money work has exactly one effect at the provider,
 * with the amount and key of its intent; no return has two; the ledger and the database agree.
 */
export async function expectExactlyOnce(t: TestDatabase, provider: Provider, options: { declined?: number } = {}): Promise<LedgerEntry[]> {
  const ledger = await ledgerOf(t, provider);
  const byReturn = new Map<string, LedgerEntry[]>();
  for (const entry of ledger) byReturn.set(entry.returnId, [...(byReturn.get(entry.returnId) ?? []), entry]);
  const duplicates = [...byReturn.entries()].filter(([, entries]) => entries.length > 1);
  expect(duplicates, 'returns with more than one effect').toEqual([]);
  const payments = await t.rows<{ return_id: number; kind: string; amount_minor: number; idempotency_key: string; state: string; provider_ref: string | null }>(
    sql`SELECT return_id, kind, amount_minor, idempotency_key, state, provider_ref FROM payments ORDER BY return_id`,
  );
  const succeeded = payments.filter((p) => p.state === 'succeeded');
  expect(payments.filter((p) => p.state !== 'succeeded' && p.state !== 'declined'), 'intents neither succeeded nor declined').toEqual([]);
  expect(payments.filter((p) => p.state === 'declined')).toHaveLength(options.declined ?? 0);
  expect(ledger.map((e) => `${e.returnId}:${e.kind}:${e.amount}:${e.idempotencyKey}:${e.id}`).sort()).toEqual(
    succeeded.map((p) => `${p.return_id}:${p.kind}:${p.amount_minor}:${p.idempotency_key}:${p.provider_ref}`).sort(),
  );
  const [missing] = await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM returns WHERE settled_at IS NULL AND id NOT IN (SELECT return_id FROM payments WHERE state = 'declined')`);
  expect(missing!.n, 'returns left unsettled').toBe(0);
  // The same promise through the audit the fault runner uses, so that the two cannot drift apart.
  const audit = await auditSettlement(t.db, ledger);
  expect(audit).toMatchObject({ duplicates: 0, missing: 0, disagreements: 0, unsettled: 0, declined: options.declined ?? 0 });
  expect(audit.maxKeysPerReturn).toBeLessThanOrEqual(1);
  expect(audit.effects).toBe(audit.needingEffect - audit.declined);
  return ledger;
}

/** A client of the simulator, as settle-returns builds it: what the seed charges prepaid Fixes through at checkout. */
export function checkoutClient(provider: Provider, apiKey = PROVIDER_KEY): StripePaymentProvider {
  return new StripePaymentProvider({ baseUrl: provider.url, apiKey, timeoutMs: 10_000 });
}

/** seedReturns, with prepaid Fixes charged at checkout at `provider`, so that their refunds have a charge to refund. */
export function seedWithCheckout(t: TestDatabase, provider: Provider, count: number, seed = 1, options: { currencies?: string[]; apiKey?: string } = {}): Promise<SeedCounts> {
  return seedReturns(t.db, count, seed, { checkout: checkoutClient(provider, options.apiKey), ...(options.currencies ? { currencies: options.currencies } : {}) });
}

export interface FixSpec {
  currency: string;
  feeMinor: number;
  prepaidMinor: number;
  pricesMinor: number[];
  /** Per return of the Fix, the indexes of the items it sends back. */
  returns: number[][];
  paymentMethod?: string;
}

/**
 * One customer, one Fix with its items and its returns, exactly as `spec` says; its prepaid
 * amount charged at checkout at `provider`. Returns the Fix's id and its returns' ids, in order.
 */
export async function addFix(t: TestDatabase, provider: Provider, spec: FixSpec): Promise<{ fixId: number; returnIds: number[] }> {
  const [customer] = await t.rows<{ id: number }>(
    sql`INSERT INTO customers (name, email, payment_method) VALUES ('Test Customer', 'test@example.com', ${spec.paymentMethod ?? 'pm_card_visa'}) RETURNING id`,
  );
  const [fix] = await t.rows<{ id: number }>(
    sql`INSERT INTO fixes (customer_id, currency, styling_fee_minor, prepaid_minor) VALUES (${customer!.id}, ${spec.currency}, ${spec.feeMinor}, ${spec.prepaidMinor}) RETURNING id`,
  );
  const fixId = Number(fix!.id);
  const items: number[] = [];
  for (const price of spec.pricesMinor) {
    const [item] = await t.rows<{ id: number }>(sql`INSERT INTO fix_items (fix_id, sku, description, price_minor) VALUES (${fixId}, 'SKU-TEST', 'test item', ${price}) RETURNING id`);
    items.push(Number(item!.id));
  }
  await chargeAtCheckout(t.db, checkoutClient(provider), [fixId]);
  const returnIds: number[] = [];
  for (const back of spec.returns) {
    const [ret] = await t.rows<{ id: number }>(sql`INSERT INTO returns (fix_id) VALUES (${fixId}) RETURNING id`);
    for (const index of back) await t.rows(sql`INSERT INTO return_items (return_id, fix_item_id) VALUES (${ret!.id}, ${items[index]!})`);
    returnIds.push(Number(ret!.id));
  }
  return { fixId, returnIds };
}
