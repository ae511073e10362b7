import { describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { TerminalError } from '../src/errors.js';
import { summarize, type PassResult } from '../src/engine/result.js';
import { useTestDatabase } from './helpers/db.js';
import { deferred, engine, numbers, reconciler } from './helpers/engine.js';
import type { Engine, PassAttempt } from '../src/engine/engine.js';

type N = { n: number };

const t = useTestDatabase({ resetEngineTables: true });

async function pass(e: Engine, name: string, request: Partial<Parameters<Engine['requestPass']>[1]> = {}): Promise<PassResult> {
  const outcome: PassAttempt = await e.requestPass(name, { trigger: 'manual', ...request });
  if (!outcome.ran) throw new Error(`pass did not run: ${outcome.reason}`);
  return outcome.result;
}

const failures = () => t.rows<{ key: string; attempts: number; dead: boolean; last_error: string; due_in_ms: number }>(
  sql`SELECT key, attempts, dead_at IS NOT NULL AS dead, last_error, (extract(epoch FROM next_attempt_at - now()) * 1000)::int AS due_in_ms FROM reconciler.failures ORDER BY key`,
);
const makeDue = () => t.rows(sql`UPDATE reconciler.failures SET next_attempt_at = now() - interval '1 second'`);

describe('a pass', () => {
  it('scans in keyset pages, passing the last item of each page as `after`', async () => {
    const calls: { after: number | undefined; limit: number }[] = [];
    const scan = numbers(25);
    const e = engine(t.db, [reconciler<N>('paged', { schedule: '* * * * *', pageSize: 10, scan: async (r) => (calls.push({ after: r.after?.n, limit: r.limit }), scan(r)), key: (i) => `n${i.n}`, reconcile: async () => 'changed' })]);
    const result = await pass(e, 'paged');
    expect(calls).toEqual([{ after: undefined, limit: 10 }, { after: 10, limit: 10 }, { after: 20, limit: 10 }]);
    expect(result.counts).toMatchObject({ found: 25, changed: 25 });
    expect(result.complete).toBe(true);
  });

  it('scans the next page while the items of the current one are still in flight', async () => {
    // Concurrency 1: without the lookahead, page 2 would be scanned only after item 1 finished and item 2 started.
    const secondPageScanned = deferred();
    const scan = numbers(4);
    const e = engine(t.db, [reconciler<N>('lookahead', {
      schedule: '* * * * *',
      pageSize: 2,
      concurrency: 1,
      timeout: '5s',
      scan: async (r) => {
        if (r.after?.n === 2) secondPageScanned.resolve();
        return scan(r);
      },
      key: (i) => `n${i.n}`,
      reconcile: async (item) => {
        if (item.n === 1) await secondPageScanned.promise; // times out (fails) if the next page waits for this item
        return 'changed';
      },
    })]);
    const result = await pass(e, 'lookahead');
    expect(result.counts).toMatchObject({ found: 4, changed: 4, failed: 0 });
  });

  it('accepts an async iterable as the scan and pages it itself', async () => {
    const e = engine(t.db, [reconciler('iterated', {
      schedule: '* * * * *',
      pageSize: 7,
      scan: async function* () {
        for (let n = 1; n <= 20; n++) yield { n };
      },
      key: (i) => `n${i.n}`,
      reconcile: async () => 'unchanged',
    })]);
    const pages: number[] = [];
    e.events.on('page:scanned', (p) => pages.push(p.items));
    const result = await pass(e, 'iterated');
    expect(pages).toEqual([7, 7, 6]);
    expect(result.counts).toMatchObject({ found: 20, unchanged: 20 });
  });

  it('never has more than `concurrency` items in flight, and uses all of it', async () => {
    let inFlight = 0;
    let peak = 0;
    const e = engine(t.db, [reconciler('bounded', {
      schedule: '* * * * *',
      concurrency: 3,
      scan: numbers(30),
      key: (i) => `n${i.n}`,
      reconcile: async (_item) => {
        peak = Math.max(peak, ++inFlight);
        await new Promise((resolve) => setImmediate(resolve));
        inFlight--;
        return 'changed';
      },
    })]);
    await pass(e, 'bounded');
    expect(peak).toBe(3);
  });

  it('holds at most two pages and the items in flight in memory, however large the backlog', async () => {
    let scanned = 0;
    let finished = 0;
    let peakHeld = 0;
    const scan = numbers(5_000);
    const e = engine(t.db, [reconciler<N>('streaming', {
      schedule: '* * * * *',
      pageSize: 100,
      concurrency: 4,
      scan: async (r) => {
        const page = await scan(r);
        scanned += page.length;
        peakHeld = Math.max(peakHeld, scanned - finished);
        return page;
      },
      key: (i) => `n${i.n}`,
      reconcile: async (_item) => {
        await new Promise((resolve) => setImmediate(resolve));
        finished++;
        return 'changed';
      },
    })]);
    const result = await pass(e, 'streaming');
    expect(result.counts.changed).toBe(5_000);
    expect(peakHeld).toBeLessThanOrEqual(2 * 100 + 4);
  });

  it('looks up failure memory with one statement per page, not one per item', async () => {
    const counting = t.counting();
    try {
      const e = engine(counting.db, [reconciler('lookups', { schedule: '* * * * *', pageSize: 10, scan: numbers(30), key: (i) => `n${i.n}`, reconcile: async () => 'unchanged' })]);
      await pass(e, 'lookups');
      const lookups = counting.statements.filter((s) => /"reconciler"\."failures"/.test(s) && /key = ANY/.test(s));
      expect(lookups).toHaveLength(3);
      // scan + lease/history: a pass over 30 clean items costs 3 lookups, 1 acquire, 1 finish, 1 prune of unseen failures.
      expect(counting.statements.length).toBeLessThanOrEqual(6);
    } finally {
      await counting.close();
    }
  });

  it('aborts an item through its AbortSignal when its timeout elapses, and goes on with the others', async () => {
    let abortReason: unknown;
    const e = engine(t.db, [reconciler('slow', {
      schedule: '* * * * *',
      timeout: 200,
      scan: numbers(5),
      key: (i) => `n${i.n}`,
      reconcile: async (i, ctx) => {
        if (i.n !== 3) return 'changed';
        await new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject((abortReason = ctx.signal.reason))));
        return 'changed';
      },
    })]);
    const result = await pass(e, 'slow');
    expect(String(abortReason)).toContain('timed out after 200ms');
    expect(result.counts).toMatchObject({ found: 5, changed: 4, failed: 1 });
    expect(await failures()).toMatchObject([{ key: 'n3', attempts: 1, last_error: 'timed out after 200ms' }]);
  });

  it('does not wait for an item that ignores its AbortSignal and never settles', async () => {
    const never = deferred<'changed'>();
    const e = engine(t.db, [reconciler('hang', { schedule: '* * * * *', timeout: 150, concurrency: 1, scan: numbers(3), key: (i) => `n${i.n}`, reconcile: async (i) => (i.n === 1 ? never.promise : 'changed') })]);
    const result = await pass(e, 'hang');
    expect(result.counts).toMatchObject({ found: 3, changed: 2, failed: 1 });
  });

  it('does not start an item again while an earlier attempt that ignored its timeout is still running', async () => {
    const release = deferred<void>();
    let starts = 0;
    const e = engine(t.db, [reconciler('zombie', { schedule: '* * * * *', timeout: 100, scan: numbers(1), key: () => 'z', reconcile: async () => {
      starts++;
      await release.promise; // ignores ctx.signal
      return 'changed';
    } })]);
    expect((await pass(e, 'zombie')).counts.failed).toBe(1);
    await makeDue();
    expect((await pass(e, 'zombie', { onlyKey: 'z' })).counts).toMatchObject({ found: 1, skipped: 1 });
    // A complete pass that skips it still saw it: its failure stays visible (`reconciler failures`), not forgotten.
    expect((await pass(e, 'zombie')).counts).toMatchObject({ found: 1, skipped: 1 });
    expect(await failures()).toMatchObject([{ key: 'z', attempts: 1, last_error: 'timed out after 100ms' }]);
    expect(starts).toBe(1);
    release.resolve();
    await new Promise((resolve) => setImmediate(resolve));
    await pass(e, 'zombie', { onlyKey: 'z' });
    expect(starts).toBe(2);
  });

  it('remembers a failure with attempts, error and backoff, defers the item, then retries it', async () => {
    const attempts: number[] = [];
    let healthy = false;
    const e = engine(t.db, [reconciler('flaky', {
      schedule: '* * * * *',
      retry: { backoff: { initial: '1m', max: '1h' } },
      scan: numbers(2),
      key: (i) => `n${i.n}`,
      reconcile: async (i, ctx) => {
        if (i.n === 2) attempts.push(ctx.attempt);
        if (i.n === 2 && !healthy) throw new Error('provider said 503');
        return 'changed';
      },
    })], { random: () => 1 });
    expect((await pass(e, 'flaky')).counts).toMatchObject({ changed: 1, failed: 1 });
    const [row] = await failures();
    expect(row).toMatchObject({ key: 'n2', attempts: 1, dead: false, last_error: 'provider said 503' });
    expect(row!.due_in_ms).toBeGreaterThan(55_000);
    expect(row!.due_in_ms).toBeLessThanOrEqual(60_000);

    expect((await pass(e, 'flaky')).counts).toMatchObject({ found: 2, changed: 1, deferred: 1, failed: 0 });

    await makeDue();
    healthy = true;
    expect((await pass(e, 'flaky')).counts).toMatchObject({ changed: 2, failed: 0 });
    expect(attempts).toEqual([1, 2]);
    expect(await failures()).toEqual([]); // a success clears the record
  });

  it("waits what a failed item's error asks for (retryAfter) instead of the backoff, capped at retry.backoff.max", async () => {
    const inTwoMinutes = new Date(Date.now() + 120_000);
    const hints: Record<number, unknown> = { 1: '5m', 2: inTwoMinutes, 3: '3h', 4: new Date(Date.now() - 60_000), 5: 'soon', 6: 90_000 };
    const e = engine(t.db, [reconciler<N>('rate-limited', {
      schedule: '* * * * *',
      retry: { backoff: { initial: '1m', max: '1h' } },
      scan: numbers(7),
      key: (i) => `n${i.n}`,
      reconcile: async (i) => {
        if (i.n === 6) throw new Error('outcome unknown: 429', { cause: Object.assign(new Error('429 Too Many Requests'), { retryAfter: hints[6] }) });
        throw Object.assign(new Error(`failed ${i.n}`), i.n in hints ? { retryAfter: hints[i.n] } : {});
      },
    })], { random: () => 1 }); // the backoff of a first failure: 60 s
    expect((await pass(e, 'rate-limited')).counts).toMatchObject({ failed: 7 });
    const due = Object.fromEntries((await failures()).map((f) => [f.key, f.due_in_ms]));
    const near = (ms: number | undefined, expected: number) => {
      expect(ms, `${expected}`).toBeGreaterThan(expected - 10_000);
      expect(ms, `${expected}`).toBeLessThanOrEqual(expected);
    };
    near(due.n1, 300_000); // '5m'
    near(due.n2, 120_000); // a Date: that time
    near(due.n3, 3_600_000); // '3h', capped at the backoff's max
    near(due.n4, 0); // a Date in the past: at once
    near(due.n5, 60_000); // not a duration: ignored, the backoff
    near(due.n6, 90_000); // on the cause of the thrown error: milliseconds
    near(due.n7, 60_000); // no hint: the backoff
    expect((await failures()).every((f) => f.attempts === 1)).toBe(true); // a hint still spends the attempt
  });

  it('marks an item dead after its last attempt and skips it until a person acts', async () => {
    let calls = 0;
    const e = engine(t.db, [reconciler('doomed', { schedule: '* * * * *', retry: { maxAttempts: 2 }, scan: numbers(1), key: () => 'only', reconcile: async () => { calls++; throw new Error('still broken'); } })]);
    await pass(e, 'doomed');
    await makeDue();
    const second = await pass(e, 'doomed');
    // It dies in this pass: counted as dead (as every later pass counts it), and the pass failed.
    expect(second.counts).toMatchObject({ found: 1, failed: 0, dead: 1 });
    expect(second.died).toBe(1);
    expect(second.status).toBe('failed');
    expect(summarize(second)).toMatch(/0 failed, 0 deferred, 1 dead \(all died in this pass\)$/);
    expect(await failures()).toMatchObject([{ key: 'only', attempts: 2, dead: true }]);
    await makeDue();
    const third = await pass(e, 'doomed');
    expect(third.counts).toMatchObject({ found: 1, dead: 1, failed: 0 });
    expect(third.status).toBe('succeeded');
    expect(calls).toBe(2);
  });

  it('marks an item dead at once on a TerminalError', async () => {
    const e = engine(t.db, [reconciler('terminal', { schedule: '* * * * *', scan: numbers(1), key: () => 'card-declined', reconcile: async () => { throw new TerminalError('card declined'); } })]);
    const result = await pass(e, 'terminal');
    expect(result.status).toBe('failed');
    expect(await failures()).toMatchObject([{ key: 'card-declined', attempts: 1, dead: true, last_error: 'card declined' }]);
  });

  it('forgets failed items that a complete scan no longer finds (fixed elsewhere)', async () => {
    let count = 3;
    const e = engine(t.db, [reconciler<N>('shrinking', { schedule: '* * * * *', scan: (r) => numbers(count)(r), key: (i) => `n${i.n}`, reconcile: async (i) => { if (i.n === 3) throw new Error('no'); return 'changed'; } })]);
    await pass(e, 'shrinking');
    expect(await failures()).toHaveLength(1);
    count = 2; // someone settled item 3 by hand
    await pass(e, 'shrinking');
    expect(await failures()).toEqual([]);
  });

  it('stops taking items at maxItemsPerPass; the rest waits for the next pass', async () => {
    const done = new Set<number>();
    const e = engine(t.db, [reconciler<N>('budgeted', {
      schedule: '* * * * *',
      maxItemsPerPass: 4,
      concurrency: 2,
      scan: async (r) => (await numbers(10)(r)).filter((i) => !done.has(i.n)),
      key: (i) => `n${i.n}`,
      reconcile: async (i) => (done.add(i.n), 'changed'),
    })]);
    const first = await pass(e, 'budgeted');
    expect(first.counts.changed).toBe(4);
    expect(first.complete).toBe(false);
    await pass(e, 'budgeted');
    await pass(e, 'budgeted');
    expect(done.size).toBe(10);
  });

  it('stops taking items when its time budget is spent, letting in-flight items finish', async () => {
    const e = engine(t.db, [reconciler('timeboxed', {
      schedule: '* * * * *',
      maxPassDuration: 300,
      concurrency: 1,
      scan: numbers(1_000),
      key: (i) => `n${i.n}`,
      reconcile: async (_item) => {
        await new Promise((resolve) => setTimeout(resolve, 20));
        return 'changed';
      },
    })]);
    const result = await pass(e, 'timeboxed');
    expect(result.complete).toBe(false);
    expect(result.counts.changed).toBeGreaterThan(0);
    expect(result.counts.changed).toBeLessThan(1_000);
    expect(result.counts.failed).toBe(0);
  });

  it('reports duplicate keys and keys that throw, and goes on with the rest', async () => {
    const seen: string[] = [];
    const e = engine(t.db, [reconciler<{ k: string | null }>('messy', {
      schedule: '* * * * *',
      scan: async ({ after }) => (after ? [] : [{ k: 'a' }, { k: 'a' }, { k: null }, { k: `quote'"\\;--` }]),
      key: (i) => {
        if (i.k === null) throw new Error('no key');
        return i.k;
      },
      reconcile: async (i) => (seen.push(i.k!), 'changed'),
    })]);
    const result = await pass(e, 'messy');
    expect(seen.sort()).toEqual(['a', `quote'"\\;--`]);
    expect(result.counts).toMatchObject({ found: 4, changed: 2, skipped: 1, failed: 1 });
  });

  it('keeps failure memory for keys with quotes, backslashes and SQL metacharacters', async () => {
    const key = `it's "odd" \\ ; DROP TABLE x; -- {a,b}`;
    const e = engine(t.db, [reconciler<{ key: string }>('odd-keys', { schedule: '* * * * *', scan: async ({ after }) => (after ? [] : [{ key }]), key: (i) => i.key, reconcile: async () => { throw new Error('nope'); } })]);
    await pass(e, 'odd-keys');
    expect((await failures()).map((f) => f.key)).toEqual([key]);
    expect((await pass(e, 'odd-keys')).counts.deferred).toBe(1);
  });

  it("records the database's own error for a failed query, never drizzle's wrapper with the query parameters", async () => {
    const e = engine(t.db, [reconciler('bad-sql', { schedule: '* * * * *', scan: numbers(1), key: () => 'x', reconcile: async (_item, ctx) => {
      await ctx.db.execute(sql`SELECT * FROM no_such_table WHERE token = ${'tok_live_secret'}`);
      return 'changed';
    } })]);
    await pass(e, 'bad-sql');
    const [row] = await failures();
    expect(row!.last_error).toBe('relation "no_such_table" does not exist (SQLSTATE 42P01)');
  });

  it('rejects keys with a NUL character (PostgreSQL cannot store them) and goes on', async () => {
    const seen: string[] = [];
    const e = engine(t.db, [reconciler<{ k: string }>('nul', { schedule: '* * * * *', scan: async ({ after }) => (after ? [] : [{ k: 'a\u0000b' }, { k: 'ok' }]), key: (i) => i.k, reconcile: async (i) => (seen.push(i.k), 'changed') })]);
    const result = await pass(e, 'nul');
    expect(seen).toEqual(['ok']);
    expect(result).toMatchObject({ status: 'failed', counts: { found: 2, changed: 1, failed: 1 } });
  });

  it('is not broken by an event listener that throws', async () => {
    const e = engine(t.db, [reconciler('listened', { schedule: '* * * * *', scan: numbers(3), key: (i) => `n${i.n}`, reconcile: async () => 'changed' })]);
    e.events.on('item:done', () => {
      throw new Error('a buggy metrics listener');
    });
    e.events.on('pass:start', () => {
      throw new Error('another');
    });
    const result = await pass(e, 'listened');
    expect(result).toMatchObject({ status: 'succeeded', counts: { found: 3, changed: 3, failed: 0 } });
    expect(await t.rows(sql`SELECT 1 FROM reconciler.state WHERE holder_id IS NOT NULL`)).toEqual([]);
  });

  it('fails an item whose reconcile returns something that is not an outcome', async () => {
    const e = engine(t.db, [reconciler('garbage', { schedule: '* * * * *', scan: numbers(1), key: () => 'x', reconcile: async () => 'done' as never })]);
    await pass(e, 'garbage');
    expect((await failures())[0]!.last_error).toContain(`reconcile() returned "done"; expected 'changed', 'unchanged', 'skipped'`);
  });

  it('takes a reconcile that is not async (returns a value, or throws)', async () => {
    const e = engine(t.db, [reconciler<N>('plain', { schedule: '* * * * *', scan: numbers(3), key: (i) => `n${i.n}`, reconcile: ((i: N) => {
      if (i.n === 2) throw new Error('plainly refused');
      return 'changed';
    }) as never })]);
    expect((await pass(e, 'plain')).counts).toMatchObject({ found: 3, changed: 2, failed: 1 });
    expect(await failures()).toMatchObject([{ key: 'n2', last_error: expect.stringContaining('plainly refused') }]);
  });

  it('breaks off with a clear error when the scan ignores `after` and repeats a page', async () => {
    const e = engine(t.db, [reconciler('loops', { schedule: '* * * * *', pageSize: 2, scan: async () => [{ n: 1 }, { n: 2 }], key: (i) => `n${i.n}`, reconcile: async () => 'unchanged' })]);
    const result = await pass(e, 'loops');
    expect(result.status).toBe('error');
    expect(result.error).toContain('scan() returned the same page twice');
  });

  it('records the pass in history with its counts, duration and holder', async () => {
    const e = engine(t.db, [reconciler('recorded', { schedule: '* * * * *', scan: numbers(3), key: (i) => `n${i.n}`, reconcile: async (i) => (i.n === 1 ? 'skipped' : 'changed') })], { host: 'box-1', pid: 4242 });
    const result = await pass(e, 'recorded');
    const [run] = await t.rows<Record<string, unknown>>(sql`SELECT * FROM reconciler.runs WHERE id = ${result.runId}`);
    expect(run).toMatchObject({ reconciler: 'recorded', trigger: 'manual', status: 'succeeded', found: 3, changed: 2, skipped: 1, failed: 0, complete: true, host: 'box-1', pid: 4242 });
    expect(run!.duration_ms).toBeTypeOf('number');
    const [state] = await t.rows<Record<string, unknown>>(sql`SELECT * FROM reconciler.state WHERE reconciler = 'recorded'`);
    expect(state).toMatchObject({ holder_id: null, last_status: 'succeeded', last_run_id: String(result.runId) });
    expect(state!.last_succeeded_at).not.toBeNull();
  });

  it('under dry run, passes dryRun to reconcile and writes no history and no failure memory', async () => {
    const flags: boolean[] = [];
    const e = engine(t.db, [reconciler('dry', { schedule: '* * * * *', scan: numbers(2), key: (i) => `n${i.n}`, reconcile: async (i, ctx) => { flags.push(ctx.dryRun); if (i.n === 2) throw new Error('would fail'); return { outcome: 'changed', note: 'would refund 12.00 EUR' }; } })]);
    const notes: (string | undefined)[] = [];
    e.events.on('item:done', (item) => notes.push(item.note));
    const result = await pass(e, 'dry', { dryRun: true });
    expect(result).toMatchObject({ dryRun: true, runId: null, status: 'failed' });
    expect(flags).toEqual([true, true]);
    expect(notes).toEqual(['would refund 12.00 EUR']);
    expect(await t.rows(sql`SELECT 1 FROM reconciler.runs`)).toEqual([]);
    expect(await failures()).toEqual([]);
  });

  it('gives each item a stable idempotency key derived from reconciler and key', async () => {
    const keys: string[] = [];
    const e = engine(t.db, [reconciler('stable', { schedule: '* * * * *', scan: numbers(1), key: () => 'return:7', reconcile: async (_, ctx) => (keys.push(ctx.idempotencyKey), 'changed') })]);
    await pass(e, 'stable');
    await pass(e, 'stable');
    expect(keys).toEqual(['stable:return:7', 'stable:return:7']);
  });

  it('with onlyKey, reconciles just that item, even while it is in backoff', async () => {
    const seen: string[] = [];
    let fail = true;
    const e = engine(t.db, [reconciler('one', { schedule: '* * * * *', scan: numbers(5), key: (i) => `n${i.n}`, reconcile: async (i) => { seen.push(`n${i.n}`); if (fail && i.n === 4) throw new Error('x'); return 'changed'; } })]);
    await pass(e, 'one');
    seen.length = 0;
    fail = false;
    const result = await pass(e, 'one', { onlyKey: 'n4' });
    expect(seen).toEqual(['n4']);
    expect(result).toMatchObject({ keyFound: true, counts: { found: 1, changed: 1 } });
  });
});
