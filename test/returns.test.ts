/**
 * The returns domain against real PostgreSQL and the real simulator process: every return
 * that needs money work gets exactly one effect at the provider, whatever fails.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { REPO_ROOT } from './helpers/jobs.js';
import { freePort } from './helpers/ports.js';
import { decideSettlement } from '../examples/returns/src/settlement.js';
import { seedReturns } from '../examples/returns/src/seed.js';
import { NO_FAULTS } from '../examples/returns/src/simulator/server.js';
import { parseRetryAfter } from '../examples/returns/src/provider.js';
import { createTestDatabase, useTestDatabase } from './helpers/db.js';
import { runCli, startProcess } from './helpers/processes.js';
import { checkoutClient, seedWithCheckout, everySettlePartitionPassed, expectExactlyOnce, ledgerOf, makeDue, settleEnv, settlePass, settleUntilQuiet, startProvider, type Provider } from './helpers/returns.js';

const t = useTestDatabase({ returns: true });
let provider: Provider;
beforeAll(async () => {
  provider = await startProvider();
});
afterAll(async () => {
  await provider.stop();
});
beforeEach(async () => {
  await t.rows(sql`TRUNCATE reconciler.runs, reconciler.failures, reconciler.state, payments, return_items, returns, fix_items, fixes, customers CASCADE`); // ids go on, so idempotency keys never repeat at the provider
  await provider.setFaults(NO_FAULTS);
});
afterEach(async () => {
  await provider.setFaults(NO_FAULTS);
});

const ledgerSize = async () => (await ledgerOf(t, provider)).length;
const posts = async () => (await provider.stats()).posts;

describe('the settlement rule', () => {
  const fix = (prepaidMinor: number, returned: boolean[]) => ({ currency: 'USD', stylingFeeMinor: 2_000, prepaidMinor, items: [5_000, 3_000].map((priceMinor, i) => ({ priceMinor, returned: returned[i]! })) });

  it('charges the styling fee and the kept items when nothing was paid', () => {
    expect(decideSettlement(fix(0, [false, true]))).toEqual({ kind: 'charge', amountMinor: 7_000, currency: 'USD' });
  });

  it('refunds returned items that were paid for', () => {
    expect(decideSettlement(fix(10_000, [true, false]))).toEqual({ kind: 'refund', amountMinor: 5_000, currency: 'USD' });
  });

  it('does nothing when what was paid is what is owed', () => {
    expect(decideSettlement(fix(7_000, [false, true]))).toEqual({ kind: 'none', currency: 'USD' });
  });
});

describe('the zero-configuration demo (`npm start` on a fresh checkout)', () => {
  it('runs on the embedded database, starts the simulator, seeds returns and settles each once within a minute', { timeout: 120_000 }, async () => {
    const dataDir = join(REPO_ROOT, 'test', '.tmp', `demo-${process.pid}-${Date.now()}`);
    // `npm start`'s own command line, run directly so that the test holds the daemon's process.
    const start = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } }).scripts.start.split(' ');
    expect(start.slice(0, 3)).toEqual(['node', '--import', './bin/register.js']);
    const daemon = startProcess(start.slice(1), { DATA_DIR: dataDir, LOG_LEVEL: 'info' }, { command: process.execPath });
    try {
      const seeded = await daemon.waitForEvent('demo:seeded', {}, 60_000);
      await everySettlePartitionPassed(daemon);
      const effects = daemon.events('returns:effect');
      expect(effects.filter((line) => !/^(charged|refunded) /.test(String(line.msg)))).toEqual([]);
      // One charge (when there is one) is declined on purpose, a card the provider always declines: the demo's dead item for the console.
      const declined = Number(seeded.declined);
      expect(declined).toBe(Number(seeded.charge) > 0 ? 1 : 0);
      expect(effects).toHaveLength(Number(seeded.charge) + Number(seeded.refund) - declined);
      expect(daemon.events('pass:finish').filter((line) => Number(line.dead) > 0)).toHaveLength(declined);
      expect(new Set(effects.map((line) => line.returnId)).size).toBe(effects.length);
      expect(daemon.events('demo:simulator').some((line) => String(line.msg).includes('simulator runs in-process on http://127.0.0.1:'))).toBe(true);
      daemon.child.kill('SIGTERM');
      expect((await daemon.exited).code).toBe(0);
    } finally {
      await daemon.kill();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('settle-returns', () => {
  it('charges, refunds or settles each return once, then a second pass makes no provider call', async () => {
    const seeded = await seedWithCheckout(t, provider, 60, 3);
    const first = await settlePass(t, provider);
    expect(first.code, first.stderr).toBe(0);
    // One pass per partition (settle-returns ships with 4), which together find and change every return.
    const passes = [...first.stdout.matchAll(/^settle-returns partition (\d): pass \d+ succeeded .*?: (\d+) found, (\d+) changed/gm)];
    expect(passes.map((p) => Number(p[1]))).toEqual([0, 1, 2, 3]);
    expect([passes.reduce((n, p) => n + Number(p[2]), 0), passes.reduce((n, p) => n + Number(p[3]), 0)]).toEqual([60, 60]);
    const ledger = await expectExactlyOnce(t, provider);
    expect(ledger.filter((e) => e.kind === 'charge')).toHaveLength(seeded.charge);
    expect(ledger.filter((e) => e.kind === 'refund')).toHaveLength(seeded.refund);
    expect(ledger.reduce((sum, e) => sum + (e.kind === 'charge' ? e.amount : 0), 0)).toBe(seeded.chargeMinor.USD);

    const before = await posts();
    const second = await settlePass(t, provider);
    expect(second.stdout).toContain(': 0 found');
    expect(await posts()).toBe(before);
  });

  it('seeds through dropped answers and 500s: each prepaid Fix charged once at checkout (retried with its key)', async () => {
    const faultsBefore = (await provider.stats()).faults;
    await provider.setFaults({ timeoutRate: 0.2, errorRate: 0.1 });
    const seeded = await seedWithCheckout(t, provider, 30, 23);
    await provider.setFaults(NO_FAULTS);
    const faults = (await provider.stats()).faults;
    expect(faults.timeouts + faults.errors - faultsBefore.timeouts - faultsBefore.errors, 'faults that the seed retried through').toBeGreaterThan(0);
    const prepaid = await t.rows<{ public_id: string; checkout_charge_ref: string | null }>(sql`SELECT public_id, checkout_charge_ref FROM fixes WHERE prepaid_minor > 0`);
    expect(prepaid.length).toBeGreaterThan(0);
    expect(seeded.checkoutCharges).toBe(prepaid.length);
    const intents = new Set(prepaid.map((fix) => `fix:${fix.public_id}:checkout`));
    const charges = (await provider.ledger()).filter((entry) => entry.intentKey && intents.has(entry.intentKey));
    expect(charges.map((entry) => `${entry.intentKey}=${entry.id}`).sort()).toEqual(prepaid.map((fix) => `fix:${fix.public_id}:checkout=${fix.checkout_charge_ref}`).sort());
  });

  it('lists what it would charge and refund, with amounts, under --dry-run, and calls nobody', async () => {
    await seedWithCheckout(t, provider, 5, 4);
    const before = await posts();
    const result = await settlePass(t, provider, {}, ['--dry-run']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/would be changed\s+return:\d+\s+would (charge|refund) \d+\.\d\d USD to .+ \(return \d+\)/);
    expect(await posts()).toBe(before);
    expect(await t.rows(sql`SELECT 1 FROM payments`)).toEqual([]);
  });

  it.each(['before-call', 'after-call', 'during-record'])('leaves exactly one effect per return after a SIGKILL %s, and the next pass', async (point) => {
    await seedWithCheckout(t, provider, 8, 5);
    const killed = await settlePass(t, provider, { RECONCILER_CRASH_AT: point });
    expect(killed.signal).toBe('SIGKILL');
    expect(await t.rows(sql`SELECT key FROM reconciler.failures`)).toEqual([]); // a kill records nothing: the item spent no attempt
    if (point !== 'before-call') expect(await ledgerSize()).toBeGreaterThan(0); // the provider applied one before the kill
    await settleUntilQuiet(t, provider);
    await expectExactlyOnce(t, provider);
  });

  it('never applies an effect twice when the provider applied it and the answer was lost', async () => {
    const seeded = await seedWithCheckout(t, provider, 10, 6);
    const needingEffect = seeded.charge + seeded.refund;
    await provider.setFaults({ timeoutRate: 1 });
    const lost = await settlePass(t, provider);
    expect(lost.code).toBe(1);
    expect(await ledgerSize()).toBe(needingEffect); // applied, every answer lost
    const unknown = await t.rows<{ state: string }>(sql`SELECT state FROM payments`);
    expect(unknown.every((p) => p.state === 'unknown')).toBe(true);

    await provider.setFaults({ timeoutRate: 0 });
    const replayedBefore = (await provider.stats()).replayed;
    await makeDue(t);
    await settleUntilQuiet(t, provider);
    await expectExactlyOnce(t, provider);
    expect((await provider.stats()).replayed - replayedBefore).toBe(needingEffect); // the same keys, answered from the first result
  });

  it('converges through 500s and 429s', async () => {
    await seedWithCheckout(t, provider, 30, 7);
    await provider.setFaults({ errorRate: 0.4, rateLimitRate: 0.3 });
    const first = await settlePass(t, provider);
    expect(first.code).toBe(1);
    await settleUntilQuiet(t, provider, 40);
    await expectExactlyOnce(t, provider);
  });

  it("comes back when a 429's or 503's Retry-After says (seconds or an HTTP-date), not after its backoff", async () => {
    await seedWithCheckout(t, provider, 8, 22);
    // Waits as failure memory recorded them (database clock), per item; the shipped backoff of a first failure is 5–10 s.
    const waits = async () => (await t.rows<{ attempts: number; wait_ms: number }>(sql`SELECT attempts, (extract(epoch FROM next_attempt_at - last_failed_at) * 1000)::int AS wait_ms FROM reconciler.failures`));
    const before = (await provider.stats()).faults; // the simulator counts for the whole file
    await provider.setFaults({ rateLimitRate: 1, retryAfter: '45' });
    expect((await settlePass(t, provider)).code).toBe(1);
    const rateLimited = await waits();
    expect(rateLimited.length).toBeGreaterThan(0);
    for (const w of rateLimited) expect(w).toMatchObject({ attempts: 1, wait_ms: 45_000 });

    // An HTTP-date has whole seconds: the wait is what is left until then, at most 2 minutes.
    await provider.setFaults({ rateLimitRate: 0, unavailableRate: 1, retryAfter: new Date(Date.now() + 120_000).toUTCString() });
    await makeDue(t);
    expect((await settlePass(t, provider)).code).toBe(1);
    for (const w of await waits()) {
      expect(w.attempts).toBe(2);
      expect(w.wait_ms).toBeGreaterThan(100_000);
      expect(w.wait_ms).toBeLessThanOrEqual(120_000);
    }
    const after = (await provider.stats()).faults;
    expect([after.rateLimited - before.rateLimited, after.unavailable - before.unavailable]).toEqual([rateLimited.length, rateLimited.length]);

    await provider.setFaults({ unavailableRate: 0 });
    await settleUntilQuiet(t, provider);
    await expectExactlyOnce(t, provider);
  });

  it('reads Retry-After as delay-seconds or an HTTP-date, and nothing else', () => {
    expect(parseRetryAfter('120')).toBe(120_000);
    expect(parseRetryAfter(' 0 ')).toBe(0);
    expect(parseRetryAfter('Wed, 21 Oct 2026 07:28:00 GMT')).toEqual(new Date('2026-10-21T07:28:00Z'));
    expect(parseRetryAfter('Wednesday, 21-Oct-26 07:28:00 GMT')).toEqual(new Date('2026-10-21T07:28:00Z'));
    for (const malformed of [null, '', '-5', '1.5', 'soon', '12 apples']) expect(parseRetryAfter(malformed), String(malformed)).toBeUndefined();
  });

  it('records a decline as final, shows it in failures, and does not call the provider again', async () => {
    const seeded = await seedWithCheckout(t, provider, 6, 8);
    const needingEffect = seeded.charge + seeded.refund;
    await provider.setFaults({ declineRate: 1 });
    const result = await settlePass(t, provider);
    expect(result.code).toBe(1);
    await expectExactlyOnce(t, provider, { declined: needingEffect });
    const failures = await runCli(['failures', 'settle-returns', '--dead'], settleEnv(t, provider));
    expect(failures.stdout).toMatch(/return:\d+\s+1\s+dead\s+.*declined: the (charge|refund) of/);

    const before = await posts();
    await runCli(['retry', 'settle-returns', '--all'], settleEnv(t, provider));
    await settlePass(t, provider);
    expect(await posts()).toBe(before); // the intent says declined: settled by a person, not by retrying
  });

  it('says "not sent", and leaves the intent pending, when the provider cannot be reached; "outcome unknown" names the key, and promises no retry', async () => {
    await seedWithCheckout(t, provider, 3, 21);
    const refused = await settlePass(t, provider, { PAYMENT_PROVIDER_URL: `http://127.0.0.1:${await freePort()}` }); // nothing listens there
    expect(refused.code).toBe(1);
    const failures = await t.rows<{ last_error: string }>(sql`SELECT last_error FROM reconciler.failures`);
    expect(failures.length).toBeGreaterThan(0);
    for (const f of failures) expect(f.last_error).toMatch(/^not sent: the (charge|refund) of .*could not connect to the provider \(ECONNREFUSED\); the request was not sent$/);
    expect(await t.rows(sql`SELECT DISTINCT state FROM payments`)).toEqual([{ state: 'pending' }]);

    await provider.setFaults({ errorRate: 1 });
    await makeDue(t);
    expect((await settlePass(t, provider)).code).toBe(1);
    const unknown = await t.rows<{ last_error: string }>(sql`SELECT last_error FROM reconciler.failures`);
    for (const f of unknown) {
      expect(f.last_error).toMatch(/^outcome unknown: .* \(idempotency key return:[0-9a-f-]+:(charge|refund):v1\)$/);
      expect(f.last_error).not.toContain('will retry');
    }
    await provider.setFaults({ errorRate: 0 });
    await settleUntilQuiet(t, provider);
  });

  it('surfaces a key reused with other parameters as a permanent error, not retried blindly', async () => {
    await seedWithCheckout(t, provider, 1, 9);
    await t.rows(sql`UPDATE fixes SET prepaid_minor = 0`); // make sure the one return needs a charge
    await provider.setFaults({ timeoutRate: 1 });
    await settlePass(t, provider);
    await provider.setFaults({ timeoutRate: 0 });
    await t.rows(sql`UPDATE payments SET amount_minor = amount_minor + 100`); // the frozen parameters changed: a bug
    await makeDue(t);
    const result = await settlePass(t, provider);
    expect(result.code).toBe(1);
    const [failure] = await t.rows<{ dead: boolean; last_error: string }>(sql`SELECT dead_at IS NOT NULL AS dead, last_error FROM reconciler.failures`);
    expect(failure).toMatchObject({ dead: true });
    expect(failure!.last_error).toMatch(/^rejected: the charge of .*POST \/v1\/charges: 400 idempotency_key_reused/);
    expect(await ledgerSize()).toBe(1);
  });

  it('looks up an intent still unknown 20 hours after its key was first sent, and adopts it, without sending the key again', async () => {
    await seedWithCheckout(t, provider, 1, 14);
    await t.rows(sql`UPDATE fixes SET prepaid_minor = 0`);
    await provider.setFaults({ timeoutRate: 1 });
    await settlePass(t, provider); // applied, answer lost: the intent is unknown
    await provider.setFaults({ timeoutRate: 0 });
    await t.rows(sql`UPDATE payments SET first_sent_at = now() - interval '21 hours', last_sent_at = now() - interval '21 hours'`);
    await makeDue(t);
    const before = await posts();
    expect((await settlePass(t, provider)).code).toBe(0);
    expect(await posts()).toBe(before);
    expect(await t.rows(sql`SELECT state, known_by FROM payments`)).toEqual([{ state: 'succeeded', known_by: 'lookup' }]);
    await expectExactlyOnce(t, provider);
  });

  it('sends an old intent whose key was never sent, whatever its age', async () => {
    await seedWithCheckout(t, provider, 1, 15);
    await t.rows(sql`UPDATE fixes SET prepaid_minor = 0`);
    await settlePass(t, provider, { RECONCILER_CRASH_AT: 'before-call' }); // the intent is written, the key never sent
    await t.rows(sql`UPDATE payments SET created_at = now() - interval '3 days'`);
    await settleUntilQuiet(t, provider);
    await expectExactlyOnce(t, provider);
  });

  it('never mixes up returns of two databases that share a provider account (keys derive from a global id)', async () => {
    const other = await createTestDatabase({ returns: true });
    try {
      await seedWithCheckout(t, provider, 5, 16);
      await seedReturns(other.db, 5, 16, { checkout: checkoutClient(provider) }); // the same return numbers and amounts
      expect((await settlePass(t, provider)).code).toBe(0);
      expect((await settlePass(other, provider)).code).toBe(0);
      const mine = await expectExactlyOnce(t, provider);
      const theirs = await t.rows<{ key: string }>(sql`SELECT idempotency_key AS key FROM payments`);
      const otherKeys = await other.rows<{ key: string }>(sql`SELECT idempotency_key AS key FROM payments`);
      expect(theirs.filter((k) => otherKeys.some((o) => o.key === k.key))).toEqual([]);
      expect(mine.length).toBeGreaterThan(0);
      const ledgerKeys = new Set((await provider.ledger()).map((e) => e.idempotencyKey));
      for (const { key } of [...theirs, ...otherKeys]) expect(ledgerKeys.has(key), key).toBe(true);
    } finally {
      await other.drop();
    }
  });

  it('makes one effect per return when two processes settle the same returns at once, bypassing the lease', async () => {
    await seedWithCheckout(t, provider, 40, 10);
    await provider.setFaults({ latencyMs: [10, 40] });
    const env = { ...settleEnv(t, provider), NODE_OPTIONS: '' };
    const racers = [0, 1].map(() => startProcess(['--import', './bin/register.js', 'test/fixtures/settle-directly.ts'], env, { command: process.execPath }));
    const exits = await Promise.all(racers.map((r) => r.exited));
    expect(exits.map((e) => e.code)).toEqual([0, 0]);
    await settleUntilQuiet(t, provider);
    await expectExactlyOnce(t, provider);
  });
});
