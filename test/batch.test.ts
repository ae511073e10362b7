/**
 * Set-based reconcilers (`reconcileBatch`): one statement per batch, outcomes by key, and poison
 * items isolated by splitting a batch that throws, on a real table whose CHECK rejects them.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { queryRows } from '../src/store/database.js';
import { sqlArray } from '../src/store/sql-array.js';
import { TerminalError } from '../src/errors.js';
import { defineReconciler, type BatchContext, type BatchOutcomes, type Db, type ReconcilerDefinition } from '../src/reconciler.js';
import type { PassResult } from '../src/engine/result.js';
import type { Engine, PassAttempt } from '../src/engine/engine.js';
import { useTestDatabase } from './helpers/db.js';
import { deferred, engine, reconciler } from './helpers/engine.js';

const t = useTestDatabase({ resetEngineTables: true });

interface Row {
  id: number;
}

beforeEach(async () => {
  await t.rows(sql`DROP TABLE IF EXISTS batch_items`);
  await t.rows(sql`CREATE TABLE batch_items (id int PRIMARY KEY, done boolean NOT NULL DEFAULT false, value int NOT NULL, CHECK (NOT done OR value >= 0))`);
  await t.rows(sql`CREATE INDEX batch_items_pending ON batch_items (id) WHERE NOT done`);
});

/** `count` pending rows; those in `poison` have a value the CHECK rejects once done. */
const addItems = (count: number, poison: readonly number[] = []) =>
  t.rows(sql`INSERT INTO batch_items (id, value) SELECT n, CASE WHEN n = ANY(${sqlArray(poison, 'int')}) THEN -1 ELSE n END FROM generate_series(1, ${count}) n`);

const scan = async ({ db, after, limit }: { db: Db; after: Row | undefined; limit: number }) =>
  queryRows<Row>(db, sql`SELECT id FROM batch_items WHERE NOT done AND id > ${after?.id ?? 0} ORDER BY id LIMIT ${limit}`);

/** One UPDATE for the whole batch: what a set-based reconciler is for. */
async function closeAll(rows: readonly Row[], ctx: BatchContext): Promise<BatchOutcomes> {
  const ids = rows.map((r) => r.id);
  const closed = ctx.dryRun ? [] : await queryRows<Row>(ctx.db, sql`UPDATE batch_items SET done = true WHERE id = ANY(${sqlArray(ids, 'int')}) AND NOT done RETURNING id`);
  const changed = new Set(closed.map((r) => r.id));
  return new Map(rows.map((r) => [`item:${r.id}`, ctx.dryRun ? { outcome: 'changed' as const, note: `would close ${r.id}` } : changed.has(r.id) ? 'changed' : 'unchanged']));
}

type BatchDefinition = Omit<ReconcilerDefinition<Row>, 'scan' | 'key' | 'schedule'> & { schedule?: string };

/** A set-based reconciler over batch_items; `calls` records each batch's size. */
function batchJob(name: string, definition: BatchDefinition = {}, calls: number[] = []) {
  const reconcileBatch = definition.reconcileBatch ?? closeAll;
  return reconciler<Row>(name, {
    schedule: '* * * * *',
    scan,
    key: (r) => `item:${r.id}`,
    ...definition,
    reconcileBatch: (rows, ctx) => (calls.push(rows.length), reconcileBatch(rows, ctx)),
  });
}

async function pass(e: Engine, name: string, request: Partial<Parameters<Engine['requestPass']>[1]> = {}): Promise<PassResult> {
  const outcome: PassAttempt = await e.requestPass(name, { trigger: 'manual', ...request });
  if (!outcome.ran) throw new Error(`pass did not run: ${outcome.reason}`);
  return outcome.result;
}

const failures = () => t.rows<{ key: string; attempts: number; dead: boolean; last_error: string }>(sql`SELECT key, attempts, dead_at IS NOT NULL AS dead, last_error FROM reconciler.failures ORDER BY key`);
const pending = async () => (await t.rows<Row>(sql`SELECT id FROM batch_items WHERE NOT done ORDER BY id`)).map((r) => r.id);

describe('reconcileBatch', () => {
  it('does a page of items in one call, with their keys and attempts, and counts each outcome', async () => {
    await addItems(2_500);
    const seen: { keys: number; attempts: number[] }[] = [];
    const calls: number[] = [];
    const e = engine(t.db, [batchJob('close', { pageSize: 1_000, reconcileBatch: (rows, ctx) => (seen.push({ keys: ctx.keys.length, attempts: [...new Set(ctx.attempts.values())] }), closeAll(rows, ctx)) }, calls)]);
    const result = await pass(e, 'close');
    expect(calls).toEqual([1_000, 1_000, 500]);
    expect(seen).toEqual([1_000, 1_000, 500].map((keys) => ({ keys, attempts: [1] })));
    expect(result).toMatchObject({ status: 'succeeded', complete: true, counts: { found: 2_500, changed: 2_500, failed: 0 } });
    expect(await pending()).toEqual([]);
    expect((await pass(e, 'close')).counts.found).toBe(0);
  });

  it('takes batchSize items per call, and at most `concurrency` batches in flight', async () => {
    await addItems(100);
    let inFlight = 0;
    let most = 0;
    const calls: number[] = [];
    const gate = deferred();
    const e = engine(t.db, [batchJob('small', {
      batchSize: 10,
      concurrency: 3,
      reconcileBatch: async (rows, ctx) => {
        most = Math.max(most, ++inFlight);
        if (most === 3) gate.resolve();
        await gate.promise;
        inFlight--;
        return closeAll(rows, ctx);
      },
    }, calls)]);
    const result = await pass(e, 'small');
    expect(calls).toEqual(Array(10).fill(10));
    expect(most).toBe(3);
    expect(result.counts.changed).toBe(100);
  });

  it.each([1, 10])('isolates %i poison item(s) in a page of 1,000: only they fail, each with its own error; every other item is done', async (poison) => {
    const bad = Array.from({ length: poison }, (_, i) => 37 + i * 97);
    await addItems(1_000, bad);
    const calls: number[] = [];
    const e = engine(t.db, [batchJob('poisoned', { pageSize: 1_000 }, calls)]);
    const result = await pass(e, 'poisoned');
    expect(result).toMatchObject({ status: 'failed', counts: { found: 1_000, changed: 1_000 - poison, failed: poison } });
    expect(await pending()).toEqual(bad);
    const failed = await failures();
    expect(failed.map((f) => f.key)).toEqual(bad.map((n) => `item:${n}`).sort());
    for (const f of failed) expect(f).toMatchObject({ attempts: 1, dead: false, last_error: expect.stringContaining('violates check constraint "batch_items_check"') });
    // Splitting costs about 2·log2(n/k) calls per poison item (k of them), never one call per item:
    // the first log2(k) levels split every half, then each poison item's halves down to itself.
    const levels = Math.ceil(Math.log2(1_000));
    const shared = Math.ceil(Math.log2(poison));
    expect(calls.length).toBeLessThanOrEqual(1 + 2 * (2 ** shared - 1) + 2 * poison * (levels - shared));
    expect(calls.filter((size) => size === 1).length).toBeLessThanOrEqual(2 * poison);
  });

  it('reads outcomes from a Map or an object; an Error fails that item, a TerminalError kills it, and a key left out fails with a clear message', async () => {
    await addItems(6);
    const e = engine(t.db, [batchJob('mixed', {
      reconcileBatch: async (rows) => {
        const out: Record<string, unknown> = {};
        for (const r of rows) {
          if (r.id === 1) out[`item:${r.id}`] = 'changed';
          if (r.id === 2) out[`item:${r.id}`] = { outcome: 'unchanged', note: 'already closed' };
          if (r.id === 3) out[`item:${r.id}`] = 'skipped';
          if (r.id === 4) out[`item:${r.id}`] = new Error('refused by the ledger');
          if (r.id === 5) out[`item:${r.id}`] = new TerminalError('never closable');
          // 6: left out
        }
        return out as BatchOutcomes;
      },
    })]);
    const result = await pass(e, 'mixed');
    expect(result.counts).toMatchObject({ found: 6, changed: 1, unchanged: 1, skipped: 1, failed: 2, dead: 1 });
    expect(await failures()).toEqual([
      expect.objectContaining({ key: 'item:4', attempts: 1, dead: false, last_error: expect.stringContaining('refused by the ledger') }),
      expect.objectContaining({ key: 'item:5', dead: true, last_error: expect.stringContaining('never closable') }),
      expect.objectContaining({ key: 'item:6', dead: false, last_error: expect.stringContaining('reconcileBatch() returned no outcome for this item') }),
    ]);
  });

  it('fails an outcome that is not one, naming it', async () => {
    await addItems(1);
    const e = engine(t.db, [batchJob('odd', { reconcileBatch: async () => ({ 'item:1': 'done' as never }) })]);
    expect((await pass(e, 'odd')).counts.failed).toBe(1);
    expect((await failures())[0]!.last_error).toContain(`reconcileBatch() returned, for this item, "done"; expected 'changed', 'unchanged', 'skipped'`);
  });

  it('keeps failure memory as a per-item reconciler does: backoff, the attempt in ctx.attempts, and forgets an item once it is done', async () => {
    await addItems(20, [5]);
    const attemptsSeen: number[] = [];
    const e = engine(t.db, [batchJob('memory', { retry: { maxAttempts: 2 }, reconcileBatch: (rows, ctx) => (rows.length === 1 && rows[0]!.id === 5 && attemptsSeen.push(ctx.attempts.get('item:5')!), closeAll(rows, ctx)) })]);
    await pass(e, 'memory');
    expect(await failures()).toMatchObject([{ key: 'item:5', attempts: 1 }]);
    expect((await pass(e, 'memory')).counts).toMatchObject({ found: 1, deferred: 1 }); // in backoff
    await t.rows(sql`UPDATE reconciler.failures SET next_attempt_at = now() - interval '1 second'`);
    expect((await pass(e, 'memory')).counts).toMatchObject({ found: 1, dead: 1 }); // second attempt, the last
    expect(await failures()).toMatchObject([{ key: 'item:5', attempts: 2, dead: true }]);
    await t.rows(sql`UPDATE batch_items SET value = 5 WHERE id = 5`); // fixed by hand; `retry` makes it due
    await t.rows(sql`UPDATE reconciler.failures SET dead_at = NULL, attempts = 0, next_attempt_at = now() - interval '1 second'`);
    expect((await pass(e, 'memory')).counts).toMatchObject({ found: 1, changed: 1 });
    expect(await failures()).toEqual([]);
    expect(attemptsSeen).toEqual([1, 2, 1]); // alone after the split; its second attempt; its first after `retry`
  });

  it('fails the whole batch on a timeout, without splitting it', async () => {
    await addItems(8);
    const calls: number[] = [];
    const e = engine(t.db, [batchJob('slow', { timeout: 150, reconcileBatch: (rows, ctx) => new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))) }, calls)]);
    const result = await pass(e, 'slow');
    expect(calls).toEqual([8]);
    expect(result.counts).toMatchObject({ found: 8, failed: 8 });
    expect((await failures()).map((f) => f.last_error)).toEqual(Array(8).fill('timed out after 150ms'));
  });

  it('under dry run changes nothing, records nothing, and passes dryRun', async () => {
    await addItems(3, [2]);
    const notes: (string | undefined)[] = [];
    const e = engine(t.db, [batchJob('dry')]);
    e.events.on('item:done', (item) => notes.push(item.note));
    const result = await pass(e, 'dry', { dryRun: true });
    expect(result.counts).toMatchObject({ found: 3, changed: 3 });
    expect(notes).toEqual(['would close 1', 'would close 2', 'would close 3']);
    expect(await pending()).toEqual([1, 2, 3]);
    expect(await failures()).toEqual([]);
  });

  it('with onlyKey, runs a batch of that one item', async () => {
    await addItems(5);
    const calls: number[] = [];
    const e = engine(t.db, [batchJob('one', {}, calls)]);
    const result = await pass(e, 'one', { onlyKey: 'item:3' });
    expect(calls).toEqual([1]);
    expect(result.counts).toMatchObject({ changed: 1 });
    expect(await pending()).toEqual([1, 2, 4, 5]);
  });

  it('stops gathering at maxItemsPerPass, and runs what it gathered', async () => {
    await addItems(25);
    const calls: number[] = [];
    const e = engine(t.db, [batchJob('budget', { batchSize: 10, maxItemsPerPass: 15 }, calls)]);
    const result = await pass(e, 'budget');
    expect(calls).toEqual([10, 5]);
    expect(result).toMatchObject({ complete: false, counts: { changed: 15 } });
  });
});

describe('sqlArray', () => {
  it('sends an array as one parameter, quoting what array syntax needs, and refuses holes', async () => {
    const odd = ['plain', 'with "quotes"', 'back\\slash', 'comma,brace}{', ''];
    const [row] = await t.rows<{ values: string[]; n: number }>(sql`SELECT ${sqlArray(odd, 'text')} AS values, cardinality(${sqlArray([1, 2, 3], 'bigint')}) AS n`);
    expect(row).toEqual({ values: odd, n: 3 });
    expect(() => sqlArray([1, undefined as never], 'int')).toThrow('sqlArray(): an array of int may not hold undefined');
  });
});

describe('defineReconciler with reconcileBatch', () => {
  const base = { schedule: '* * * * *', scan: async () => [], key: (i: unknown) => String(i) };
  const changed = async (): Promise<'changed'> => 'changed';
  it.each([
    [{ ...base }, '`reconcile` is required'],
    [{ ...base, reconcile: changed, reconcileBatch: async () => ({}) }, 'define `reconcile` or `reconcileBatch`, not both'],
    [{ ...base, reconcile: changed, batchSize: 10 }, '`batchSize` is for `reconcileBatch`'],
    [{ ...base, reconcileBatch: async () => ({}), batchSize: 0 }, '`batchSize` must be a whole number of at least 1'],
  ] as const)('refuses %o', (definition, message) => {
    expect(() => defineReconciler(definition as ReconcilerDefinition<unknown>)).toThrow(message);
  });
});
