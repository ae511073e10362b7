/**
 * The operator layer (src/operator/): what the console and the CLI show and do, on a real
 * database with real passes. Error groups, passes that keep breaking, items that die in a pass,
 * and every action (retry, clear, a manual action) audited in the same transaction as its change.
 */
import { describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import type { Engine } from '../src/engine/engine.js';
import { TerminalError } from '../src/errors.js';
import { registerSecret } from '../src/secrets.js';
import type { Reconciler } from '../src/reconciler.js';
import type { OperatorContext } from '../src/operator/context.js';
import { ActionRefused, clearItems, retryItems, runManualAction, type Actor } from '../src/operator/actions.js';
import { auditLog, failingItems, failureGroups, itemView, overview, passErrors, passHistory } from '../src/operator/views.js';
import { useTestDatabase } from './helpers/db.js';
import { engine, reconciler } from './helpers/engine.js';

const t = useTestDatabase({ resetEngineTables: true });
const actor: Actor = { name: 'alice', via: 'console' };

async function pass(e: Engine, name: string) {
  const outcome = await e.requestPass(name, { trigger: 'manual' });
  if (!outcome.ran) throw new Error(`pass did not run: ${outcome.reason}`);
  return outcome.result;
}

/** Items 1..n; those in `declined` throw a terminal "declined" error naming their id and a uuid, 7 throws a timeout; `done` holds keys settled by hand. */
function payments(n: number, done: Set<string>): Reconciler {
  return reconciler<{ id: number }>('payments', {
    schedule: '0 0 1 1 *',
    retry: { maxAttempts: 2, backoff: { initial: '1h', max: '1h' } },
    scan: async ({ after }) => (after ? [] : Array.from({ length: n }, (_, i) => ({ id: i + 1 })).filter((x) => !done.has(`pay:${x.id}`))),
    key: (x) => `pay:${x.id}`,
    since: () => new Date(Date.now() - 60_000),
    reconcile: async (x) => {
      if (x.id === 7) throw new Error(`provider timed out after ${x.id * 1000} ms`);
      if (x.id % 2 === 0) throw new TerminalError(`declined: charge of $${x.id}.00 for "order ${x.id}" (request 3f2b8c1e-0000-4000-8000-00000000000${x.id % 10}); settle it by hand`);
      return 'changed';
    },
    actions: {
      'settled-by-hand': {
        description: 'records the payment as settled by hand',
        run: async (key, ctx) => {
          if (!key.startsWith('pay:')) throw new Error('expected a key like pay:4');
          await ctx.db.execute(sql`SELECT 1`);
          done.add(key);
          return `${key} settled by hand (${ctx.note})`;
        },
      },
      'always-refuses': { description: 'refuses', run: async () => { throw new Error('the provider already confirmed it'); } },
      'says-secret': { description: 'answers with a secret', run: async () => `done with ${CANARY}` },
      slow: {
        description: 'finishes after its signal aborted',
        run: async (key, ctx) => {
          await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve, { once: true }));
          await ctx.db.execute(sql`SELECT 1`);
          return `${key} refunded by the bank`;
        },
      },
    },
  });
}

const context = (rs: Reconciler[]): OperatorContext => ({ db: t.db, reconcilers: rs, loadErrors: [] });
const CANARY = 'sk_live_canary_operator_5f1e2d';
registerSecret(CANARY);

describe('views', () => {
  it('groups failures by normalised error, counts items that die in a pass as dead, and shows lanes with staleness', async () => {
    const done = new Set<string>();
    const r = payments(8, done);
    const e = engine(t.db, [r]);
    const result = await pass(e, 'payments');
    // 2, 4, 6, 8 die at once (terminal); 7 fails and will be retried; the others change.
    expect(result.counts).toMatchObject({ found: 8, changed: 3, failed: 1, dead: 4 });
    expect(result.died).toBe(4);
    expect(result.status).toBe('failed');

    const { groups, total } = await failureGroups(t.db, { reconciler: 'payments', limit: 10 });
    expect(total).toBe(2);
    const declined = groups[0]!;
    expect(declined).toMatchObject({ reconciler: 'payments', count: 4, dead: 4 });
    expect(declined.error).toBe('declined: charge of $N for "…" (request <id>); settle it by hand');
    expect(declined.sample).toMatch(/^declined: charge of \$\d\.00 for "order \d"/);
    expect(declined.sampleKeys).toHaveLength(3);
    expect(declined.id).toMatch(/^[0-9a-f]{10}$/);
    expect(groups[1]).toMatchObject({ count: 1, dead: 0, error: 'provider timed out after N ms', sampleKeys: ['pay:7'] });

    const items = await failingItems(t.db, { reconciler: 'payments', group: declined.id, limit: 2 });
    expect(items.total).toBe(4);
    expect(items.items).toHaveLength(2);
    expect(items.items.every((i) => i.group === declined.id && i.deadAt !== null)).toBe(true);

    const view = await overview(context([r]));
    const [summary] = view.reconcilers;
    expect(summary).toMatchObject({ name: 'payments', inBackoff: 1, dead: 4 });
    expect(summary!.deadItems).toMatchObject({ group: declined.id, count: 4, error: declined.error });
    expect(summary!.deadItems!.since.getTime()).toBeLessThanOrEqual(Date.now());
    expect(summary!.actions.map((a) => a.name)).toEqual(['settled-by-hand', 'always-refuses', 'says-secret', 'slow']);
    expect(summary!.lanes[0]).toMatchObject({ backlog: 8, inBackoff: 1, dead: 4, running: null, wakes: null, failingSince: null });
    expect(summary!.lanes[0]!.lastPass).toMatchObject({ status: 'failed', counts: { found: 8, dead: 4 } });
    expect(summary!.lanes[0]!.stalenessMs).toBeGreaterThanOrEqual(59_000);
    expect(summary!.chart.reduce((n, b) => n + b.passes, 0)).toBe(1);
  });

  it('says since when a partition\'s passes keep breaking, and forgets it after a pass that does not', async () => {
    let broken = true;
    const r = reconciler<{ id: number }>('flaky-scan', {
      schedule: '0 0 1 1 *',
      scan: async () => {
        if (broken) throw new Error('relation "orders" does not exist');
        return [];
      },
      key: (x) => String(x.id),
      reconcile: async () => 'changed',
    });
    const e = engine(t.db, [r]);
    const first = await pass(e, 'flaky-scan');
    await pass(e, 'flaky-scan');
    const [error] = await passErrors(t.db, 'flaky-scan');
    expect(error).toMatchObject({ reconciler: 'flaky-scan', partition: 0, passes: 2 });
    expect(error!.error).toContain('relation "orders" does not exist');
    const [firstRun] = (await passHistory(t.db, { reconciler: 'flaky-scan', status: 'error', limit: 10 })).runs.slice(-1);
    expect(firstRun!.id).toBe(first.runId);
    expect(error!.failingSince.getTime()).toBe(firstRun!.startedAt.getTime());
    expect((await overview(context([r]))).reconcilers[0]!.lanes[0]!.failingSince).toEqual(error!.failingSince);
    broken = false;
    await pass(e, 'flaky-scan');
    expect(await passErrors(t.db, 'flaky-scan')).toEqual([]);
    expect((await passHistory(t.db, { reconciler: 'flaky-scan', limit: 1 })).total).toBe(3);
  });
});

describe('actions', () => {
  it('retries and clears one item, a group or all, each with its audit record', async () => {
    const r = payments(8, new Set());
    await pass(engine(t.db, [r]), 'payments');
    const ctx = context([r]);
    const [declined] = (await failureGroups(t.db, { reconciler: 'payments', limit: 1 })).groups;

    const one = await retryItems(ctx, actor, 'payments', { key: 'pay:2' }, 'customer updated their card');
    expect(one.keys).toEqual(['pay:2']);
    const group = await clearItems(ctx, actor, 'payments', { group: declined!.id });
    expect(group.keys.sort()).toEqual(['pay:2', 'pay:4', 'pay:6', 'pay:8']);
    const all = await retryItems(ctx, { name: 'cli:bob@host', via: 'cli' }, 'payments', { all: true });
    expect(all.keys).toEqual(['pay:7']);

    const { entries, total } = await auditLog(t.db, { reconciler: 'payments', limit: 10 });
    expect(total).toBe(3);
    expect(entries.map((a) => [a.actor, a.via, a.action, a.target, a.keys.length, a.note])).toEqual([
      ['cli:bob@host', 'cli', 'retry', 'all', 1, null],
      ['alice', 'console', 'clear', `group ${declined!.id}`, 4, null],
      ['alice', 'console', 'retry', 'key pay:2', 1, 'customer updated their card'],
    ]);
    expect((await itemView(ctx, 'payments', 'pay:2')).audit.map((a) => a.action)).toEqual(['clear', 'retry']);

    await expect(retryItems(ctx, actor, 'payments', { key: 'pay:99' })).rejects.toThrow(/no failing item for key "pay:99"/);
    await expect(retryItems(ctx, actor, 'payments', { group: 'nonsense' })).rejects.toThrow(/not an error group id/);
    await expect(clearItems(ctx, actor, 'paymnets', { all: true })).rejects.toThrow(/unknown reconciler `paymnets`, did you mean `payments`/);
    expect((await auditLog(t.db, { limit: 10 })).total).toBe(3); // refusals record nothing
  });

  it('runs a manual action with its note in one transaction with the audit record; the next pass forgets the item', async () => {
    const done = new Set<string>();
    const r = payments(4, done);
    const e = engine(t.db, [r]);
    await pass(e, 'payments');
    const ctx = context([r]);
    const before = await itemView(ctx, 'payments', 'pay:4');
    expect(before.failure).toMatchObject({ key: 'pay:4', attempts: 1 });
    expect(before.failure!.deadAt).not.toBeNull();
    expect(before.actions.map((a) => a.name)).toContain('settled-by-hand');

    const outcome = await runManualAction(ctx, actor, 'payments', 'pay:4', 'settled-by-hand', 'refunded by phone, ticket 4411');
    expect(outcome.result).toBe('pay:4 settled by hand (refunded by phone, ticket 4411)');
    const [record] = (await auditLog(t.db, { key: 'pay:4', limit: 5 })).entries;
    expect(record).toMatchObject({ id: outcome.auditId, actor: 'alice', action: 'act:settled-by-hand', keys: ['pay:4'], note: 'refunded by phone, ticket 4411' });

    await pass(e, 'payments');
    expect((await itemView(ctx, 'payments', 'pay:4')).failure).toBeNull();
    expect((await failingItems(t.db, { reconciler: 'payments', limit: 10 })).items.map((i) => i.key)).toEqual(['pay:2']);
  });

  it("asks the daemon for an early pass after a change it committed (the console's context), and not after a refusal", async () => {
    const r = payments(4, new Set());
    await pass(engine(t.db, [r]), 'payments');
    const asked: string[] = [];
    const ctx = { ...context([r]), passSoon: (name: string) => asked.push(name) };
    await retryItems(ctx, actor, 'payments', { key: 'pay:2' });
    await runManualAction(ctx, actor, 'payments', 'pay:4', 'settled-by-hand', 'by phone');
    await expect(runManualAction(ctx, actor, 'payments', 'pay:4', 'always-refuses', 'x')).rejects.toThrow();
    await expect(clearItems(ctx, actor, 'payments', { key: 'pay:99' })).rejects.toThrow();
    expect(asked).toEqual(['payments', 'payments']);
  });

  it('refuses plainly, and records nothing, when the action is unknown, the note empty or the action throws', async () => {
    const r = payments(2, new Set());
    const ctx = context([r]);
    await expect(runManualAction(ctx, actor, 'payments', 'pay:2', 'settled-by-hnad', 'x')).rejects.toThrow(/no manual action `settled-by-hnad`, did you mean `settled-by-hand`/);
    await expect(runManualAction(ctx, actor, 'payments', 'pay:2', 'settled-by-hand', '  ')).rejects.toThrow(/a note is required/);
    await expect(runManualAction(ctx, actor, 'payments', 'pay:2', 'constructor', 'x')).rejects.toThrow(/no manual action `constructor` \(its actions: settled-by-hand/);
    const refused = runManualAction(ctx, actor, 'payments', 'pay:2', 'always-refuses', 'try');
    await expect(refused).rejects.toBeInstanceOf(ActionRefused);
    await expect(refused).rejects.toThrow('payments always-refuses pay:2: the provider already confirmed it');
    expect((await auditLog(t.db, { limit: 10 })).total).toBe(0);
  });

  it('records an action that finishes after its time limit (what it did happened), and keeps secrets out of the record', async () => {
    const r = payments(2, new Set());
    const ctx = { ...context([r]), actionTimeoutMs: 50 };
    const late = await runManualAction(ctx, actor, 'payments', 'pay:1', 'slow', 'bank transfer');
    expect(late.result).toBe('pay:1 refunded by the bank (finished after its 50ms limit)');
    const secret = await runManualAction(ctx, actor, 'payments', 'pay:1', 'says-secret', `pasted ${CANARY} by mistake`);
    expect(secret.result).toBe('done with [redacted]');
    const [record] = (await auditLog(t.db, { limit: 1 })).entries;
    expect(record).toMatchObject({ result: 'done with [redacted]', note: 'pasted [redacted] by mistake' });
  });

  it('records nothing for `all` when nothing is failing, and narrows a group or all to dead items', async () => {
    const r = payments(8, new Set());
    const ctx = context([r]);
    expect(await retryItems(ctx, actor, 'payments', { all: true })).toMatchObject({ keys: [], auditId: null });
    await pass(engine(t.db, [r]), 'payments');
    expect((await clearItems(ctx, actor, 'payments', { all: true, deadOnly: true })).keys.sort()).toEqual(['pay:2', 'pay:4', 'pay:6', 'pay:8']);
    expect((await failingItems(t.db, { reconciler: 'payments', limit: 10 })).items.map((i) => i.key)).toEqual(['pay:7']);
    expect((await auditLog(t.db, { limit: 10 })).entries.map((a) => a.target)).toEqual(['all dead']);
  });
});

describe('error groups', () => {
  it('merge errors that differ in ids, amounts and quoted values with digits, and keep short codes apart', async () => {
    const errors: Record<string, string> = {
      a: 'HTTP 402 {"code":"card_declined","message":"Your card 4242 was declined"} for order 17',
      b: 'HTTP 402 {"code":"card_declined","message":"Your card 1881 was declined"} for order 23',
      c: 'HTTP 402 {"code":"expired_card","message":"Your card 4242 has expired"} for order 5',
      d: `request 3f2b8c1e-0000-4000-8000-000000000001 failed: ${'"'}${'a very long quoted value that goes on and on beyond forty characters'}${'"'}`,
      e: `request 3f2b8c1e-0000-4000-8000-000000000002 failed: ${'"'}${'another very long quoted value, also well beyond forty characters'}${'"'}`,
    };
    for (const [key, error] of Object.entries(errors)) {
      await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at) VALUES ('cards', ${key}, 1, ${error}, now())`);
    }
    const { groups } = await failureGroups(t.db, { reconciler: 'cards', limit: 10 });
    expect(groups.map((g) => [g.error, g.sampleKeys.sort()]).sort((x, y) => String(x[0]).localeCompare(String(y[0])))).toEqual([
      ['HTTP N {"code":"card_declined","message":"…"} for order N', ['a', 'b']],
      ['HTTP N {"code":"expired_card","message":"…"} for order N', ['c']],
      ['request <id> failed: "…"', ['d', 'e']],
    ]);
  });
});
