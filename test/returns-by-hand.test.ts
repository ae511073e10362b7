/**
 * settle-returns' manual action settled-by-hand (issue 16), against real PostgreSQL and the real
 * simulator process: a declined return is settled by a person with no provider call and the scan
 * stops finding it; every case where the provider may have applied the effect is refused, and a
 * refusal changes nothing; an attempt racing the action never sends.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { NO_FAULTS } from '../examples/returns/src/simulator/server.js';
import { StripePaymentProvider } from '../examples/returns/src/provider.js';
import { chargeAtCheckout } from '../examples/returns/src/seed.js';
import { settleReturn } from '../examples/returns/src/service.js';
import { auditSettlement } from '../examples/returns/src/audit.js';
import { runSettleReturnsAction } from '../testkit/settle-returns.js';
import { resetReturns } from '../testkit/returns.js';
import { resolveReconciler, type Db } from '../src/reconciler.js';
import { ActionRefused, runManualAction } from '../src/operator/actions.js';
import shipped from '../examples/returns/jobs/settle-returns.js';
import { silentLog, useTestDatabase } from './helpers/db.js';
import { runCli, until } from './helpers/processes.js';
import { PROVIDER_KEY, checkoutClient, ledgerOf, seedWithCheckout, settleEnv, settlePass, startProvider, type Provider } from './helpers/returns.js';

const t = useTestDatabase({ returns: true });
let provider: Provider;
beforeAll(async () => {
  provider = await startProvider();
});
afterAll(() => provider.stop());
beforeEach(() => resetReturns(t, provider));

const who = { actor: 'cli:ops@desk', note: 'refunded by phone, ticket 4411' };
const act = (key: string) => runSettleReturnsAction(t.db, 'settled-by-hand', key, who, silentLog);
const posts = async () => (await provider.stats()).posts;
let nextSeed = 100;

/** One new return whose settlement is `kind`; its id. */
async function oneReturn(kind: 'charge' | 'refund' | 'none'): Promise<number> {
  await seedWithCheckout(t, provider, 1, nextSeed++);
  const [ret] = await t.rows<{ id: number; fix_id: number }>(sql`SELECT id, fix_id FROM returns ORDER BY id DESC LIMIT 1`);
  const owed = sql`f.styling_fee_minor + coalesce((SELECT sum(fi.price_minor) FROM fix_items fi WHERE fi.fix_id = f.id
                     AND fi.id NOT IN (SELECT fix_item_id FROM return_items WHERE return_id = ${ret!.id})), 0)`;
  const prepaid = { charge: sql`0`, refund: sql`${owed} + 1200`, none: owed }[kind];
  await t.rows(sql`UPDATE fixes f SET prepaid_minor = ${prepaid}, checkout_charge_ref = NULL, public_id = gen_random_uuid() WHERE f.id = ${ret!.fix_id}`);
  await chargeAtCheckout(t.db, checkoutClient(provider), [Number(ret!.fix_id)]); // what it prepaid now, charged at checkout
  return Number(ret!.id);
}

/** Everything the action could touch: returns and payments, row by row. */
const ledgerState = () => t.rows<{ row: string }>(sql`SELECT row_to_json(r)::text AS row FROM returns r UNION ALL SELECT row_to_json(p)::text FROM payments p ORDER BY 1`);

const paymentOf = async (id: number) =>
  (await t.rows<{ state: string; first_sent_at: Date | null; resolved: boolean; resolved_by: string | null; resolution_note: string | null }>(
    sql`SELECT state, first_sent_at, resolved_at IS NOT NULL AS resolved, resolved_by, resolution_note FROM payments WHERE return_id = ${id}`,
  ))[0];
const returnOf = async (id: number) => (await t.rows<{ settled: boolean; settlement: string | null }>(sql`SELECT settled_at IS NOT NULL AS settled, settlement FROM returns WHERE id = ${id}`))[0];

async function refusal(key: string): Promise<string> {
  const before = await ledgerState();
  const error = await act(key).then(
    (line) => {
      throw new Error(`the action did not refuse ${key}: ${String(line)}`);
    },
    (e: unknown) => e as Error,
  );
  expect(await ledgerState()).toEqual(before);
  return error.message;
}

describe('settled-by-hand', () => {
  it('settles a declined return with no provider call; a pass then no longer finds it and forgets its failure', async () => {
    const id = await oneReturn('refund');
    await provider.setFaults({ declineRate: 1 });
    expect((await settlePass(t, provider)).code).toBe(1);
    const [dead] = await t.rows<{ key: string; dead: boolean; last_error: string }>(sql`SELECT key, dead_at IS NOT NULL AS dead, last_error FROM reconciler.failures`);
    expect(dead).toMatchObject({ key: `return:${id}`, dead: true });
    // The error says what to do, with the action's own command line.
    expect(dead!.last_error).toMatch(/^declined: the refund of \d+\.\d\d USD to .+ \(return \d+\) \(.*\); settle it by hand, then: /);
    expect(dead!.last_error.endsWith(`settle it by hand, then: reconciler act settle-returns return:${id} settled-by-hand --note "…"`)).toBe(true);

    await provider.setFaults(NO_FAULTS);
    const before = await posts();
    // As an operator does it: the command the error names, from the CLI.
    const acted = await runCli(['act', 'settle-returns', `return:${id}`, 'settled-by-hand', '--note', who.note], settleEnv(t, provider));
    expect(acted.code, acted.stderr).toBe(0);
    expect(acted.stdout).toMatch(new RegExp(`^settle-returns return:${id}: return ${id} marked settled by hand \\(refund of \\d+\\.\\d\\d USD to .+ declined at the provider\\)$`, 'm'));
    expect(await posts()).toBe(before);
    expect(await returnOf(id)).toEqual({ settled: true, settlement: 'by-hand' });
    expect(await paymentOf(id)).toMatchObject({ state: 'declined', resolved: true, resolved_by: expect.stringMatching(/^cli:.+@.+$/), resolution_note: who.note });
    const audit = await runCli(['audit', 'settle-returns'], settleEnv(t, provider));
    expect(audit.stdout).toContain('act:settled-by-hand');
    expect(audit.stdout).toContain(who.note);

    const pass = await settlePass(t, provider);
    expect(pass.code, pass.stderr).toBe(0);
    expect([...pass.stdout.matchAll(/: (\d+) found/g)].map((m) => Number(m[1]))).toEqual([0, 0, 0, 0]);
    expect(await t.rows(sql`SELECT key FROM reconciler.failures`)).toEqual([]);
    expect(await posts()).toBe(before);
    const failures = await runCli(['failures', 'settle-returns'], settleEnv(t, provider));
    expect(failures.stdout).not.toContain(`return:${id}`);

    const settlement = await auditSettlement(t.db, await ledgerOf(t, provider));
    expect(settlement).toMatchObject({ needingEffect: 1, effects: 0, declined: 1, settledByHand: 1, missing: 0, unsettled: 0, disagreements: 0 });
  });

  it('settles an intent whose key was never sent, and it is never sent afterwards', async () => {
    const id = await oneReturn('charge');
    expect((await settlePass(t, provider, { RECONCILER_CRASH_AT: 'before-call' })).signal).toBe('SIGKILL');
    expect(await paymentOf(id)).toMatchObject({ state: 'pending', first_sent_at: null, resolved: false });
    const before = await posts();
    expect(await act(`return:${id}`)).toMatch(new RegExp(`^return ${id} marked settled by hand \\(charge of \\d+\\.\\d\\d USD to .+ never sent to the provider\\)$`));
    expect(await paymentOf(id)).toMatchObject({ state: 'pending', first_sent_at: null, resolved: true, resolved_by: who.actor });
    expect((await settlePass(t, provider)).code).toBe(0);
    expect(await posts()).toBe(before);
    expect(await paymentOf(id)).toMatchObject({ state: 'pending', first_sent_at: null });
  });

  it('writes the intent the rule asks for when there is none yet, resolved, so that the ledger says what was settled by hand', async () => {
    const id = await oneReturn('refund');
    expect(await act(`return:${id}`)).toMatch(new RegExp(`^return ${id} marked settled by hand \\(refund of \\d+\\.\\d\\d USD to .+ never sent to the provider\\)$`));
    const [intent] = await t.rows<{ kind: string; amount_minor: number; idempotency_key: string; resolved_by: string }>(
      sql`SELECT kind, amount_minor, idempotency_key, resolved_by FROM payments WHERE return_id = ${id}`,
    );
    expect(intent).toMatchObject({ kind: 'refund', resolved_by: who.actor });
    expect(intent!.idempotency_key).toMatch(/^return:[0-9a-f-]+:refund:v1$/);
    const before = await posts();
    expect((await settlePass(t, provider)).code).toBe(0);
    expect(await posts()).toBe(before);
    expect(await returnOf(id)).toEqual({ settled: true, settlement: 'by-hand' });
  });
});

describe('settled-by-hand refuses, and changes nothing', () => {
  it('a key that is not return:<id>', async () => {
    await oneReturn('refund');
    for (const key of ['16', 'return:', 'return:abc', 'return:0', 'return:016', 'return:16 ', 'order:16', 'return:2147483648', 'return:99999999999']) {
      expect(await refusal(key), key).toBe(`expected a key like return:16, not ${JSON.stringify(key)}`);
    }
  });

  it('a return that does not exist', async () => {
    const id = await oneReturn('refund');
    expect(await refusal(`return:${id + 1000}`)).toBe(`there is no return ${id + 1000}`);
  });

  it('a return already settled, saying how and when', async () => {
    const refunded = await oneReturn('refund');
    const nothingDue = await oneReturn('none');
    expect((await settlePass(t, provider)).code).toBe(0);
    expect(await refusal(`return:${refunded}`)).toMatch(new RegExp(`^return ${refunded} is already settled: refunded at the provider \\(re_\\w+\\) on \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC$`));
    expect(await refusal(`return:${nothingDue}`)).toMatch(new RegExp(`^return ${nothingDue} is already settled: nothing was due, on \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC$`));

    const byHand = await oneReturn('charge');
    await act(`return:${byHand}`);
    expect(await refusal(`return:${byHand}`)).toMatch(new RegExp(`^return ${byHand} is already settled: by hand by cli:ops@desk on \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC$`));
  });

  it('a return with nothing due (the reconciler settles it itself)', async () => {
    const id = await oneReturn('none');
    expect(await refusal(`return:${id}`)).toBe(`nothing is due for return ${id}, so there is nothing to settle by hand: \`reconciler run settle-returns --key return:${id}\` settles it with no provider call`);
  });

  it('an effect the provider confirmed (the reconciler settles it itself)', async () => {
    const id = await oneReturn('charge');
    expect((await settlePass(t, provider)).code).toBe(0);
    await t.rows(sql`UPDATE returns SET settled_at = NULL, settlement = NULL WHERE id = ${id}`); // confirmed, not yet recorded on the return
    expect(await refusal(`return:${id}`)).toMatch(
      new RegExp(`^the provider already confirmed the charge of \\d+\\.\\d\\d USD to .+ \\(ch_\\w+\\); run \`reconciler run settle-returns --key return:${id}\` instead$`),
    );
  });

  it('an effect whose outcome is unknown: sent, and maybe applied', async () => {
    const lost = await oneReturn('refund');
    await provider.setFaults({ timeoutRate: 1 }); // applied at the provider, the answer lost
    expect((await settlePass(t, provider)).code).toBe(1);
    expect(await paymentOf(lost)).toMatchObject({ state: 'unknown' });
    expect(await refusal(`return:${lost}`)).toMatch(
      new RegExp(
        `^the refund of \\d+\\.\\d\\d USD to .+ \\(return ${lost}\\) was sent to the provider 1 min ago and its outcome is unknown: it may be in flight or applied, ` +
          `so settling it by hand could move the money twice; \`reconciler retry settle-returns return:${lost}\` asks the provider again ` +
          '\\(idempotency key return:[0-9a-f-]+:refund:v1\\), and looks the outcome up there if it stays unknown; ' +
          `if you found it at the provider, \`reconciler act settle-returns return:${lost} adopt-effect --note <its id>\` records it$`,
      ),
    );
    await t.rows(sql`UPDATE payments SET first_sent_at = now() - interval '21 hours' WHERE return_id = ${lost}`); // parked
    expect(await refusal(`return:${lost}`)).toContain('was sent to the provider 21 h ago and its outcome is unknown');

    // Pending, but its key went out: the send is stamped before the call, whatever came back.
    const pending = await oneReturn('charge');
    await t.rows(sql`INSERT INTO payments (return_id, kind, amount_minor, currency, customer_ref, payment_method, idempotency_key, first_sent_at)
                     VALUES (${pending}, 'charge', 1000, 'USD', 'cus_x', 'pm_x', ${`test:${pending}`}, now())`);
    expect(await refusal(`return:${pending}`)).toMatch(/^the charge of 10\.00 USD to .+ was sent to the provider 1 min ago and its outcome is unknown/);
  });
});

describe('settled-by-hand against an attempt in flight', () => {
  const httpProvider = () => new StripePaymentProvider({ baseUrl: provider.url, apiKey: PROVIDER_KEY, timeoutMs: 3_000 });
  const attempt = (id: number) =>
    settleReturn(id, { db: t.db, log: silentLog, signal: new AbortController().signal, attempt: 1, dryRun: false, idempotencyKey: `settle-returns:return:${id}`, key: `return:${id}` }, httpProvider);
  const waitingOnLock = () => until(async () => (await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`))[0]!.n > 0, 'an attempt waiting on the action’s locks', 10_000);

  /** Runs the action in a transaction held open until an attempt started then waits on its locks; the attempt's result. */
  async function raceAttempt(id: number): Promise<unknown> {
    let ran!: () => void;
    let commit!: () => void;
    const actionRan = new Promise<void>((resolve) => (ran = resolve));
    const held = new Promise<void>((resolve) => (commit = resolve));
    const action = t.db.transaction(async (tx) => {
      const line = await runSettleReturnsAction(tx as unknown as Db, 'settled-by-hand', `return:${id}`, who, silentLog); // a savepoint in this transaction
      ran();
      await held;
      return line;
    });
    await actionRan;
    const settling = attempt(id); // reads the return as it was: unsettled, its intent unsent or missing
    await waitingOnLock();
    commit();
    expect(await action).toMatch(new RegExp(`^return ${id} marked settled by hand`));
    return settling;
  }

  it('an attempt that found the intent unsent waits at its send, then sends nothing', async () => {
    const id = await oneReturn('charge');
    expect((await settlePass(t, provider, { RECONCILER_CRASH_AT: 'before-call' })).signal).toBe('SIGKILL');
    const before = await posts();
    const result = await raceAttempt(id);
    expect(await posts()).toBe(before);
    expect(result).toMatchObject({ outcome: 'unchanged' });
    expect(await paymentOf(id)).toMatchObject({ state: 'pending', first_sent_at: null, resolved: true });
  });

  it('an attempt that found no intent waits at writing it, then sends nothing', async () => {
    const id = await oneReturn('refund');
    const before = await posts();
    const result = await raceAttempt(id);
    expect(await posts()).toBe(before);
    expect(result).toMatchObject({ outcome: 'unchanged' });
    expect(await returnOf(id)).toEqual({ settled: true, settlement: 'by-hand' });
  });
});

describe('settled-by-hand through the operator layer (the console and `reconciler act`)', () => {
  const operator = () => ({ db: t.db, reconcilers: [resolveReconciler('settle-returns', 'examples/returns/jobs/settle-returns.ts', shipped)], loadErrors: [] });
  const audit = () => t.rows<{ actor: string; via: string; reconciler: string; action: string; target: string; keys: string[]; note: string; result: string }>(
    sql`SELECT actor, via, reconciler, action, target, keys, note, result FROM reconciler.audit ORDER BY id`,
  );

  it('records who settled which return by hand and why, in the audit log, with the change; a refusal records nothing', async () => {
    const id = await oneReturn('refund');
    await provider.setFaults({ declineRate: 1 });
    expect((await settlePass(t, provider)).code).toBe(1);
    const before = await posts();

    const outcome = await runManualAction(operator(), { name: who.actor, via: 'cli' }, 'settle-returns', `return:${id}`, 'settled-by-hand', ` ${who.note} `);
    expect(outcome.keys).toEqual([`return:${id}`]);
    expect(outcome.result).toMatch(new RegExp(`^return ${id} marked settled by hand \\(refund of \\d+\\.\\d\\d USD to .+ declined at the provider\\)$`));
    expect(await audit()).toEqual([
      { actor: who.actor, via: 'cli', reconciler: 'settle-returns', action: 'act:settled-by-hand', target: `key return:${id}`, keys: [`return:${id}`], note: who.note, result: outcome.result },
    ]);
    expect(await paymentOf(id)).toMatchObject({ state: 'declined', resolved_by: who.actor, resolution_note: who.note });
    expect(await posts()).toBe(before);

    const state = await ledgerState();
    const again = runManualAction(operator(), { name: 'ops', via: 'console' }, 'settle-returns', `return:${id}`, 'settled-by-hand', 'twice');
    await expect(again).rejects.toThrow(ActionRefused);
    await expect(again).rejects.toThrow(new RegExp(`^settle-returns settled-by-hand return:${id}: return ${id} is already settled: by hand by cli:ops@desk on `));
    expect(await audit()).toHaveLength(1);
    expect(await ledgerState()).toEqual(state);
  });
});
