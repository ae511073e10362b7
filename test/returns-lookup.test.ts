/**
 * Unknown outcomes resolved by asking the provider (examples/returns/src/resolution.ts), rule by
 * rule, against the real simulator process and real passes of settle-returns; money in each
 * currency's minor units; refunds against their charge, also when two replicas settle two
 * returns of one Fix at once.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import pg from 'pg';
import { NO_FAULTS } from '../examples/returns/src/simulator/server.js';
import { resetReturns } from '../testkit/returns.js';
import { useTestDatabase } from './helpers/db.js';
import { runCli, startProcess, until } from './helpers/processes.js';
import { addFix, checkoutClient, expectExactlyOnce, ledgerOf, makeDue, settleEnv, settlePass, settleUntilQuiet, startProvider, type Provider } from './helpers/returns.js';

const t = useTestDatabase({ returns: true });
let provider: Provider;
beforeAll(async () => {
  provider = await startProvider();
});
afterAll(async () => {
  await provider.stop();
});
beforeEach(() => resetReturns(t, provider));

/** The daemons' assumed search lag in these tests. */
const LAG = { PAYMENT_PROVIDER_SEARCH_LAG: '60s' };
const pass = async () => {
  await makeDue(t);
  return settlePass(t, provider, LAG);
};
const payment = async (returnId: number) =>
  (
    await t.rows<{ state: string; known_by: string | null; provider_ref: string | null; key_version: number; idempotency_key: string; key_history: { key: string; why: string }[]; replays: number; last_error: string | null; amount_minor: number; provider_amount_minor: number | null }>(
      sql`SELECT state, known_by, provider_ref, key_version, idempotency_key, key_history, replays, last_error, amount_minor, provider_amount_minor FROM payments WHERE return_id = ${returnId}`,
    )
  )[0]!;
const failure = async (returnId: number) => (await t.rows<{ dead: boolean; last_error: string }>(sql`SELECT dead_at IS NOT NULL AS dead, last_error FROM reconciler.failures WHERE key = ${`return:${returnId}`}`))[0];
const posts = async () => (await provider.stats()).posts;
/** Time passes for our database: every time the intent keeps moves back by `interval`. */
const ageIntent = (returnId: number, interval: string) =>
  t.rows(sql`UPDATE payments SET first_sent_at = first_sent_at - ${interval}::interval, last_sent_at = last_sent_at - ${interval}::interval,
                                 unknown_since = unknown_since - ${interval}::interval, key_spent_at = key_spent_at - ${interval}::interval WHERE return_id = ${returnId}`);

/** A return to charge: a USD Fix with nothing prepaid, one of two items sent back (charge 20.00 fee + 50.00 kept). */
const toCharge = () => addFix(t, provider, { currency: 'USD', feeMinor: 2_000, prepaidMinor: 0, pricesMinor: [5_000, 3_000], returns: [[1]] });

describe('an unknown outcome is looked up at the provider', () => {
  it('adopts an effect the provider applied before its saved 500: found by lookup, no further POST', async () => {
    const { returnIds: [id] } = await toCharge();
    await provider.setFaults({ savedErrorRate: 1, savedErrorAppliedShare: 1 });
    await pass(); // applied, answered 500, saved
    await pass(); // the saved 500, replayed: the key will never run again
    expect(await payment(id!)).toMatchObject({ state: 'unknown', replays: 1 });
    const sent = await posts();
    await pass(); // looked up: found
    expect(await posts()).toBe(sent);
    const [effect] = await ledgerOf(t, provider);
    expect(await payment(id!)).toMatchObject({ state: 'succeeded', known_by: 'lookup', provider_ref: effect!.id, provider_amount_minor: 7_000, key_version: 1 });
    await expectExactlyOnce(t, provider);
  });

  it('not found while the key can still apply: sends the same key again', async () => {
    const { returnIds: [id] } = await toCharge();
    await provider.setFaults({ errorRate: 1 }); // a plain 500: not saved, nothing applied
    await pass();
    await t.rows(sql`UPDATE payments SET unknown_since = now() - interval '10 minutes' WHERE return_id = ${id!}`); // unknown for longer than the bound
    await provider.setFaults(NO_FAULTS);
    await pass();
    expect((await provider.stats()).searches).toBeGreaterThan(0);
    expect(await payment(id!)).toMatchObject({ state: 'succeeded', known_by: 'answer', key_version: 1 });
    expect((await ledgerOf(t, provider)).map((e) => e.idempotencyKey)).toEqual([(await payment(id!)).idempotency_key]);
    await expectExactlyOnce(t, provider);
  });

  it('not applied, key spent: waits for the search lag, then a new key version with the same parameters, and says why', async () => {
    const { returnIds: [id] } = await toCharge();
    await provider.setFaults({ savedErrorRate: 1, savedErrorAppliedShare: 0 });
    await pass();
    await pass(); // replayed: spent
    await pass(); // looked up within the lag: nothing yet, and it does not count
    expect(await payment(id!)).toMatchObject({ state: 'unknown', key_version: 1 });
    expect((await failure(id!))!.last_error).toMatch(/not found at the provider yet, and its search may lag 60 s: looking again in \d+ s before it counts as absent/);
    await ageIntent(id!, '2 minutes'); // the lag has passed since the key was spent
    await provider.setFaults(NO_FAULTS);
    await pass();
    const settled = await payment(id!);
    expect(settled).toMatchObject({ state: 'succeeded', key_version: 2, known_by: 'answer' });
    expect(settled.idempotency_key).toMatch(/:charge:v2$/);
    expect(settled.key_history).toHaveLength(1);
    expect(settled.key_history[0]!.key).toMatch(/:charge:v1$/);
    expect(settled.key_history[0]!.why).toMatch(/replayed a saved error .* not found at the provider \d+ s later \(search lag 60 s\)/);
    expect((await provider.stats()).overlappingKeys).toBe(0);
    await expectExactlyOnce(t, provider);
  });

  it('retires a key 20 h after its first send: never POSTed again; absent, a new version; present, adopted', async () => {
    const absent = (await toCharge()).returnIds[0]!;
    const present = (await toCharge()).returnIds[0]!;
    await provider.setFaults({ errorRate: 1 });
    await makeDue(t);
    await settlePass(t, provider, LAG, ['--key', `return:${absent}`]); // 500 before applying
    await provider.setFaults({ errorRate: 0, timeoutRate: 1 });
    await makeDue(t);
    await settlePass(t, provider, LAG, ['--key', `return:${present}`]); // applied, answer lost
    // A day passes, at the provider and for us.
    await provider.advanceClock(25 * 3_600);
    for (const id of [absent, present]) await ageIntent(id, '25 hours');
    await provider.setFaults(NO_FAULTS);
    const sent = await posts();
    await pass();
    expect(await payment(present)).toMatchObject({ state: 'succeeded', known_by: 'lookup', key_version: 1 });
    expect(await payment(absent)).toMatchObject({ state: 'succeeded', known_by: 'answer', key_version: 2 });
    expect((await payment(absent)).key_history[0]!.why).toMatch(/retired 20 h after its first send/);
    const stats = await provider.stats();
    expect(stats.posts - sent).toBe(1); // the new version's, only
    expect(stats.expiredKeyReuses).toBe(0);
    await expectExactlyOnce(t, provider);
  });

  it('never adopts an effect of another amount: a dead item with both figures', async () => {
    const { returnIds: [id] } = await toCharge();
    await provider.setFaults({ errorRate: 1 });
    await pass();
    await provider.setFaults(NO_FAULTS);
    const row = (await t.rows<{ public_id: string }>(sql`SELECT public_id FROM returns WHERE id = ${id!}`))[0]!;
    // Someone charged this intent 1.00 USD too much, by another key.
    await checkoutClient(provider).charge(
      { kind: 'charge', idempotencyKey: 'elsewhere:1', intentKey: `return:${row.public_id}:charge`, amountMinor: 7_100, currency: 'USD', customer: 'cus_x', paymentMethod: 'pm_card_visa', metadata: {} },
      AbortSignal.timeout(10_000),
    );
    await ageIntent(id!, '10 minutes');
    const sent = await posts();
    await pass();
    expect(await posts()).toBe(sent);
    expect(await failure(id!)).toMatchObject({ dead: true });
    expect((await failure(id!))!.last_error).toMatch(/^mismatch at the provider: the charge of 70\.00 USD .* found as ch_\w+, a charge of 71\.00 USD, not 70\.00 USD; not adopted/);
    expect(await payment(id!)).toMatchObject({ state: 'unknown' });
  });

  it('parks the item when the provider cannot answer lookups, saying what is unknown and which action resolves it; adopt-effect then settles it', async () => {
    const { returnIds: [id] } = await toCharge();
    await provider.setFaults({ savedErrorRate: 1, savedErrorAppliedShare: 1, searchUnsupported: true });
    await pass();
    await pass(); // replayed: spent, and search answers 404
    await pass();
    const parked = (await failure(id!))!;
    expect(parked.dead).toBe(true);
    expect(parked.last_error).toMatch(/^parked: whether the charge of 70\.00 USD to customer cus_\d+ \(return \d+\) was applied is unknown: the provider replayed a saved error .* the provider cannot answer lookups/);
    expect(parked.last_error).toContain(`reconciler act settle-returns return:${id} adopt-effect --note <its id>`);
    const [effect] = await ledgerOf(t, provider);
    const acted = await runCli(['act', 'settle-returns', `return:${id}`, 'adopt-effect', '--note', `${effect!.id} found in the dashboard`], settleEnv(t, provider, LAG));
    expect(acted.code, acted.stderr).toBe(0);
    expect(await payment(id!)).toMatchObject({ state: 'succeeded', known_by: 'lookup', provider_ref: effect!.id });
    await expectExactlyOnce(t, provider);
  });
});

describe('what a lookup cannot settle', () => {
  it('never re-keys an intent sent before its requests carried metadata (migration 0004): parked once spent', async () => {
    const { returnIds: [id] } = await toCharge();
    await provider.setFaults({ savedErrorRate: 1, savedErrorAppliedShare: 0 });
    await pass();
    await t.rows(sql`UPDATE payments SET legacy_key = true WHERE return_id = ${id!}`); // as the migration marks one sent before it
    await pass(); // replayed: spent
    await ageIntent(id!, '1 hour');
    await pass();
    expect(await payment(id!)).toMatchObject({ state: 'unknown', key_version: 1 });
    const parked = (await failure(id!))!;
    expect(parked.dead).toBe(true);
    expect(parked.last_error).toMatch(/^parked: whether the charge .* is unknown: .* it was sent before settle-returns tagged its requests with metadata, so no lookup can find its effect/);
    expect((await provider.stats()).overlappingKeys).toBe(0);
  });

  it('settled-by-hand takes a spent key only once a search would show its effect; before, it refuses', async () => {
    const { returnIds: [id] } = await toCharge();
    await provider.setFaults({ savedErrorRate: 1, savedErrorAppliedShare: 0, searchUnsupported: true });
    await pass();
    await pass(); // replayed: spent just now
    const act = () => runCli(['act', 'settle-returns', `return:${id}`, 'settled-by-hand', '--note', 'not in the dashboard; refunded by phone'], settleEnv(t, provider, LAG));
    const early = await act();
    expect(early.code).not.toBe(0);
    expect(early.stderr).toMatch(/its outcome is unknown: it may be in flight or applied/);
    await ageIntent(id!, '2 minutes');
    const late = await act();
    expect(late.code, late.stderr).toBe(0);
    expect(late.stdout).toMatch(/marked settled by hand \(charge of 70\.00 USD to .+ its key spent, and not found at the provider by the person who looked\)/);
  });
});

describe('several returns of one Fix', () => {
  it('decides a return only once the Fix\'s other returns are final: what they moved counts once it moved', async () => {
    // Nothing prepaid; fee 20.00, items 50.00 and 30.00. The first return sends nothing back (charge 100.00), the second the 30.00 item.
    const { returnIds: [first, second] } = await addFix(t, provider, { currency: 'USD', feeMinor: 2_000, prepaidMinor: 0, pricesMinor: [5_000, 3_000], returns: [[], [1]] });
    await provider.setFaults({ errorRate: 1 });
    await makeDue(t);
    await settlePass(t, provider, LAG, ['--key', `return:${first}`]); // its charge: unknown
    await makeDue(t);
    await settlePass(t, provider, LAG, ['--key', `return:${second}`]);
    expect((await failure(second!))!.last_error).toMatch(new RegExp(`^return ${second} waits for the other returns of its Fix \\d+ to be settled first: return ${first} \\(its charge, unknown\\)`));
    expect(await t.rows(sql`SELECT 1 FROM payments WHERE return_id = ${second!}`)).toEqual([]);
    await provider.setFaults(NO_FAULTS);
    await pass(); // the first's charge goes through (100.00); the second then refunds the 30.00 item against it
    await pass();
    const ledger = await ledgerOf(t, provider);
    expect(ledger.map((e) => [Number(e.returnId), e.kind, e.amount]).sort()).toEqual([
      [first, 'charge', 10_000],
      [second, 'refund', 3_000],
    ]);
    expect(ledger.find((e) => e.kind === 'refund')!.charge).toBe(ledger.find((e) => e.kind === 'charge')!.id);
    await expectExactlyOnce(t, provider);
  });
});

describe('money in minor units', () => {
  it('settles a JPY return and a KWD return to the right minor units, and says so in each currency', async () => {
    // JPY: no decimals. Fee ¥3000 and a kept ¥5000 item, nothing prepaid: charge ¥8000.
    const jpy = (await addFix(t, provider, { currency: 'JPY', feeMinor: 3_000, prepaidMinor: 0, pricesMinor: [5_000, 7_000], returns: [[1]] })).returnIds[0]!;
    // KWD: three decimals. Prepaid 12.500 KWD for fee 2.000 + 6.250 + 4.250; the 4.250 item back: refund 4.250 KWD.
    const kwd = (await addFix(t, provider, { currency: 'KWD', feeMinor: 2_000, prepaidMinor: 12_500, pricesMinor: [6_250, 4_250], returns: [[1]] })).returnIds[0]!;
    const dry = await runCli(['run', 'settle-returns', '--dry-run'], settleEnv(t, provider));
    expect(dry.stdout).toMatch(new RegExp(`would charge 8000 JPY to .+ \\(return ${jpy}\\)`));
    expect(dry.stdout).toMatch(new RegExp(`would refund 4\\.250 KWD to .+ \\(return ${kwd}\\)`));
    const settled = await settlePass(t, provider, { LOG_LEVEL: 'info' });
    expect(settled.code, settled.stderr).toBe(0);
    expect(settled.stdout + settled.stderr).toMatch(/charged 8000 JPY to customer cus_\d+/);
    expect(settled.stdout + settled.stderr).toMatch(/refunded 4\.250 KWD to customer cus_\d+/);
    const ledger = await ledgerOf(t, provider);
    expect(ledger.map((e) => [Number(e.returnId), e.kind, e.amount, e.currency]).sort()).toEqual([
      [jpy, 'charge', 8_000, 'jpy'],
      [kwd, 'refund', 4_250, 'kwd'],
    ]);
    expect(await payment(jpy)).toMatchObject({ amount_minor: 8_000, provider_amount_minor: 8_000 });
    expect(await payment(kwd)).toMatchObject({ amount_minor: 4_250, provider_amount_minor: 4_250 });
    await expectExactlyOnce(t, provider);
  });
});

describe('refunds against their charge', () => {
  it('refunds several returns of one Fix against its checkout charge, never more than was charged, when two replicas settle them at once', { timeout: 60_000 }, async () => {
    // Prepaid 100.00 = fee 20.00 + 50.00 + 30.00. The first return sends the 50.00 item back; the second sends both
    // (the 50.00 again, recorded twice by the warehouse, and the 30.00): together 80.00 is due back, not 130.00.
    const { fixId, returnIds } = await addFix(t, provider, { currency: 'USD', feeMinor: 2_000, prepaidMinor: 10_000, pricesMinor: [5_000, 3_000], returns: [[0], [0, 1]] });
    // Two replicas settle in two partitions (a pass of one partition is one at a time): the second return moves to a new
    // id until its partition differs from the first's.
    const partitionOf = async (id: number) => Number((await t.rows<{ p: number }>(sql`SELECT reconciler.partition_of(${`return:${id}`}, 4) AS p`))[0]!.p);
    while ((await partitionOf(returnIds[1]!)) === (await partitionOf(returnIds[0]!))) {
      const [moved] = await t.rows<{ id: number }>(sql`INSERT INTO returns (fix_id) VALUES (${fixId}) RETURNING id`);
      await t.rows(sql`UPDATE return_items SET return_id = ${moved!.id} WHERE return_id = ${returnIds[1]!}`);
      await t.rows(sql`DELETE FROM returns WHERE id = ${returnIds[1]!}`);
      returnIds[1] = Number(moved!.id);
    }
    // Both passes start while the test holds the Fix: they decide one after the other once it lets go, the second only
    // once the first's refund is final.
    const holder = new pg.Client({ connectionString: t.url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT id FROM fixes WHERE id = $1 FOR UPDATE', [fixId]);
      const replicas = returnIds.map((id) => startProcess(['run', 'settle-returns', '--key', `return:${id}`], settleEnv(t, provider)));
      await until(async () => Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%FOR UPDATE OF f%'`))[0]!.n) === 2, 'both passes to wait for the Fix');
      await holder.query('COMMIT');
      // The second to take the Fix finds the first's intent not final yet: it waits (fails, to be retried), never decides on it.
      const codes = await Promise.all(replicas.map(async (replica) => (await replica.exited).code));
      expect(codes.sort(), replicas.map((r) => r.stderr).join('\n')).toSatisfy((c: number[]) => ['0,0', '0,1'].includes(c.join(',')));
    } finally {
      await holder.end();
    }
    await settleUntilQuiet(t, provider);
    // Whichever decided first: 50.00 then 30.00, or 80.00 then nothing due. Never 50.00 and 80.00.
    const ledger = await ledgerOf(t, provider);
    expect(ledger.every((e) => e.kind === 'refund')).toBe(true);
    expect(ledger.map((e) => e.amount).sort((a, b) => a - b)).toSatisfy((amounts: number[]) => ['3000,5000', '8000'].includes(amounts.join(',')));
    expect(ledger.reduce((sum, e) => sum + e.amount, 0)).toBe(8_000);
    const [checkout] = await t.rows<{ ref: string }>(sql`SELECT checkout_charge_ref AS ref FROM fixes WHERE id = ${fixId}`);
    expect(new Set((await t.rows<{ charge_ref: string }>(sql`SELECT charge_ref FROM payments`)).map((p) => p.charge_ref))).toEqual(new Set([checkout!.ref]));
    await expectExactlyOnce(t, provider);
  });

  it('the provider refuses a refund over what is left of its charge', async () => {
    const client = checkoutClient(provider);
    const charge = await client.charge({ kind: 'charge', idempotencyKey: `over:${Date.now()}`, intentKey: 'over', amountMinor: 1_000, currency: 'USD', customer: 'cus_1', paymentMethod: 'pm_card_visa', metadata: {} }, AbortSignal.timeout(10_000));
    const refund = (key: string, amountMinor: number) =>
      client.refund({ kind: 'refund', idempotencyKey: `${charge.id}:${key}`, intentKey: 'over', amountMinor, currency: 'USD', customer: 'cus_1', paymentMethod: 'pm_card_visa', charge: charge.id, metadata: {} }, AbortSignal.timeout(10_000));
    await refund('a', 600);
    await expect(refund('b', 500)).rejects.toMatchObject({ failure: 'permanent', code: 'amount_too_large' });
    expect((await refund('c', 400)).amountMinor).toBe(400);
  });
});
