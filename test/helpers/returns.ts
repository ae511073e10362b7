/**
 * The returns domain under test: a payment provider simulator as its own process with its
 * own database, seeded returns, and the checks of the exactly-once promise.
 */
import { expect } from 'vitest';
import { sql } from 'drizzle-orm';
import { createEmptyDatabase, databaseUrl, dropDatabase, type TestDatabase } from './db.js';
import { REPO_ROOT } from './jobs.js';
import { runCli, startProcess, type CliResult, type RunningProcess } from './processes.js';
import type { SimulatorFaults, SimulatorStats, LedgerEntry } from '../../examples/returns/src/simulator/server.js';
import { auditSettlement } from '../../examples/returns/src/audit.js';

export const PROVIDER_KEY = 'sk_test_reconciler_suite';

export interface Provider {
  url: string;
  process: RunningProcess;
  ledger(): Promise<LedgerEntry[]>;
  stats(): Promise<SimulatorStats>;
  setFaults(faults: Partial<SimulatorFaults>): Promise<void>;
  stop(): Promise<void>;
}

async function call<T>(url: string, apiKey: string, path: string, init: RequestInit = {}): Promise<T> {
  const response = await fetch(`${url}${path}`, { ...init, headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' } });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return (await response.json()) as T;
}

/** Starts `npm run provider`'s entry point as its own process, storing in its own new database. */
export async function startProvider(args: string[] = [], apiKey = PROVIDER_KEY): Promise<Provider> {
  const storage = await createEmptyDatabase();
  const child = startProcess(['--import', './bin/register.js', 'examples/returns/src/simulator/main.ts', '--port', '0', '--api-key', apiKey, '--seed', '42', ...args], { PROVIDER_DATABASE_URL: databaseUrl(storage) }, { command: process.execPath });
  const line = await child.waitFor((l) => typeof l.url === 'string', 'the simulator to listen', 30_000);
  const url = String(line.url);
  return {
    url,
    process: child,
    ledger: async () => (await call<{ effects: LedgerEntry[] }>(url, apiKey, '/v1/ledger')).effects,
    stats: () => call<SimulatorStats>(url, apiKey, '/v1/_simulator/stats'),
    setFaults: async (faults) => void (await call(url, apiKey, '/v1/_simulator/faults', { method: 'POST', body: JSON.stringify(faults) })),
    async stop() {
      await child.kill('SIGTERM');
      await dropDatabase(storage);
    },
  };
}

/** The environment of a `reconciler` process that settles returns of `t` through `provider`. */
export function settleEnv(t: TestDatabase, provider: Provider, extra: Record<string, string> = {}): Record<string, string> {
  return { DATABASE_URL: t.url, JOBS_DIR: `${REPO_ROOT}/jobs`, PAYMENT_PROVIDER_URL: provider.url, PAYMENT_PROVIDER_KEY: PROVIDER_KEY, PAYMENT_PROVIDER_TIMEOUT: '3s', LOCK_TTL: '1s', ...extra };
}

export function settlePass(t: TestDatabase, provider: Provider, extra: Record<string, string> = {}, args: string[] = []): Promise<CliResult> {
  return runCli(['run', 'settle-returns', '--wait', ...args], settleEnv(t, provider, extra));
}

/** Time passes: every item in backoff is due now. */
export async function makeDue(t: TestDatabase): Promise<void> {
  await t.rows(sql`UPDATE reconciler.failures SET next_attempt_at = now() - interval '1 second' WHERE dead_at IS NULL`);
}

/** Runs passes, making backoff due before each, until one succeeds with nothing left in backoff (dead items stay), at most `max` times. */
export async function settleUntilQuiet(t: TestDatabase, provider: Provider, max = 15): Promise<void> {
  for (let i = 0; i < max; i++) {
    await makeDue(t);
    const result = await settlePass(t, provider);
    const [waiting] = await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.failures WHERE dead_at IS NULL`);
    if (result.code === 0 && waiting!.n === 0) return;
  }
  throw new Error(`not converged after ${max} passes`);
}

/** The provider's effects for the returns now in `t` (the simulator outlives the tests of a file; return ids never repeat). */
export async function ledgerOf(t: TestDatabase, provider: Provider): Promise<LedgerEntry[]> {
  const ids = new Set((await t.rows<{ id: number }>(sql`SELECT id FROM returns`)).map((r) => String(r.id)));
  return (await provider.ledger()).filter((entry) => ids.has(entry.returnId));
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
  const payments = await t.rows<{ return_id: number; kind: string; amount_cents: number; idempotency_key: string; state: string; provider_ref: string | null }>(
    sql`SELECT return_id, kind, amount_cents, idempotency_key, state, provider_ref FROM payments ORDER BY return_id`,
  );
  const succeeded = payments.filter((p) => p.state === 'succeeded');
  expect(payments.filter((p) => p.state !== 'succeeded' && p.state !== 'declined'), 'intents neither succeeded nor declined').toEqual([]);
  expect(payments.filter((p) => p.state === 'declined')).toHaveLength(options.declined ?? 0);
  expect(ledger.map((e) => `${e.returnId}:${e.kind}:${e.amount}:${e.idempotencyKey}:${e.id}`).sort()).toEqual(
    succeeded.map((p) => `${p.return_id}:${p.kind}:${p.amount_cents}:${p.idempotency_key}:${p.provider_ref}`).sort(),
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

/** Resolves once a daemon has logged the end of a pass of each of settle-returns' partitions (it ships with 4). */
export async function everySettlePartitionPassed(daemon: RunningProcess, timeoutMs = 60_000): Promise<void> {
  const ended = () => new Set(daemon.lines.filter((line) => line.reconciler === 'settle-returns' && typeof line.status === 'string').map((line) => line.partition));
  await daemon.waitFor(() => ended().size === 4, 'a pass of every settle-returns partition', timeoutMs);
}
