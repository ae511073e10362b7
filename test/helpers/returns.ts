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
