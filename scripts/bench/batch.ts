/**
 * Set-based reconcilers and the per-item path (issue 18).
 *
 * One table, `bench_items`: 50,000 pending items interleaved among 500,000 done ones (every
 * 11th row), a partial index on the pending ones, and a CHECK that a done item has a value ≥ 0.
 * The work is the smallest there is: mark an item done. It is drained, from the same state each
 * time and with the same pool size and concurrency, by up to four sides in one process:
 *
 * - the engine, per item: `reconcile` runs one one-row UPDATE per item (a manual pass);
 * - the engine, set-based: `reconcileBatch` runs one `UPDATE … WHERE id = ANY($1)` per batch of 1,000;
 * - the raw per-item loop: keyset pages of 1,000, `concurrency` one-row UPDATEs in flight;
 * - the raw set-based loop: keyset pages of 1,000, one `UPDATE … = ANY` per page, `concurrency` pages in flight.
 *
 * Both engine and raw sides send their statements through a drizzle handle over a `pg` pool, so
 * the ratios and the CPU per item measure what the engine adds, not a driver. With 1% poison
 * (a value < 0, which the CHECK rejects once the item is marked done), a set-based UPDATE that
 * meets one fails whole; the engine splits the batch until the poison items fail alone, and the
 * harness checks that exactly they are in `reconciler.failures` and every other item is done.
 * The "saturated" sub-cases run the per-item sides while busy-loop processes (one per core) keep
 * the machine's CPU full.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/node-postgres';
import pg from 'pg';
import { Engine } from '../../src/engine/engine.js';
import type { BatchContext, Db, ReconcilerDefinition } from '../../src/reconciler.js';
import { openDatabase, queryRows, type Database } from '../../src/store/database.js';
import { sqlArray } from '../../src/store/sql-array.js';
import { reconciler } from '../../testkit/engine.js';
import { busyPercent, machineCpu, scratchDatabase, settleDown, silent, stats, type CaseOptions, type CaseResult } from './common.js';

const CASE = 'batch drain';
export const PAGE = 1_000;
/** Every SPACING-th row is pending (the rest are done); every POISON_EVERY-th pending row is poison in the poison cases: 1%. */
export const SPACING = 11;
const POISON_EVERY = 100;

/** The same pool size on every side: one connection per unit in flight plus one for the scan, at most 20 (all sides of a sub-case are open at once, within max_connections = 100). */
export const poolSizeFor = (concurrency: number) => Math.min(concurrency + 1, 20);

export type SideName = 'engine per item' | 'engine batch' | 'raw per-item loop' | 'raw set-based loop';

export interface Drained {
  done: number;
  failed: number;
}

export interface DrainSide {
  drain(): Promise<Drained>;
  close(): Promise<void>;
}

export interface Item {
  id: number;
}

const keyOf = (id: number) => `item:${id}`;

/** The per-item work, the same on every side: one one-row UPDATE. */
async function markOne(db: Db, id: number): Promise<void> {
  await queryRows(db, sql`UPDATE bench_items SET done = true WHERE id = ${id} AND NOT done`);
}

/** The set-based work, the same on every side: one UPDATE for a whole page or batch. */
async function markMany(db: Db, ids: readonly number[]): Promise<void> {
  await queryRows(db, sql`UPDATE bench_items SET done = true WHERE id = ANY(${sqlArray(ids, 'int')}) AND NOT done`);
}

const scanPending = (db: Db, after: number, limit: number) =>
  queryRows<Item>(db, sql`SELECT id FROM bench_items WHERE NOT done AND id > ${after} ORDER BY id LIMIT ${limit}`);

/** The engine with one reconciler: a manual pass of it is one drain. */
async function engineSide(url: string, concurrency: number, definition: ReconcilerDefinition<Item>, name: string): Promise<DrainSide> {
  const database = await openDatabase({ databaseUrl: url, dataDir: '.data', log: silent, poolSize: poolSizeFor(concurrency) });
  // A lease long enough that no renewal lands in a drain (renewals come every third of it).
  const engine = new Engine({ db: database.db, control: database.control, reconcilers: [reconciler(name, definition, `bench:${name}`)], log: silent, leaseMs: 300_000 });
  return {
    drain: async () => {
      const outcome = await engine.requestPass(name, { trigger: 'manual' });
      if (!outcome.ran) throw new Error(`${CASE}: the pass of ${name} did not run (${outcome.reason})`);
      return { done: outcome.result.counts.changed, failed: outcome.result.counts.failed };
    },
    close: async () => {
      await engine.stop(5_000);
      await database.close();
    },
  };
}

const common = (concurrency: number) => ({
  schedule: '0 0 1 1 *',
  concurrency,
  pageSize: PAGE,
  scan: ({ db, after, limit }: { db: Db; after: Item | undefined; limit: number }) => scanPending(db, after?.id ?? 0, limit),
  key: (item: Item) => keyOf(item.id),
});

export const perItemDefinition = (concurrency: number): ReconcilerDefinition<Item> => ({
  ...common(concurrency),
  reconcile: async (item, { db }) => {
    await markOne(db, item.id);
    return 'changed';
  },
});

const batchDefinition = (concurrency: number): ReconcilerDefinition<Item> => ({
  ...common(concurrency),
  batchSize: PAGE,
  reconcileBatch: async (items: readonly Item[], { db, keys }: BatchContext) => {
    await markMany(db, items.map((item) => item.id));
    return new Map(keys.map((key) => [key, 'changed' as const]));
  },
});

/**
 * A raw loop a careful person would write by hand: keyset pages of 1,000, each split into
 * units (an item, or the whole page), at most `concurrency` units in flight, one pg.Pool.
 * A unit that fails is counted and the loop goes on.
 */
async function rawSide<Unit>(url: string, concurrency: number, split: (ids: number[]) => Unit[], work: (db: Db, unit: Unit) => Promise<void>, size: (unit: Unit) => number): Promise<DrainSide> {
  const pool = new pg.Pool({ connectionString: url, max: poolSizeFor(concurrency) });
  const db = drizzle(pool) as unknown as Db;
  return {
    drain: async () => {
      const drained = { done: 0, failed: 0 };
      const inFlight = new Set<Promise<void>>();
      for (let after = 0; ; ) {
        const { rows } = await pool.query<Item>('SELECT id FROM bench_items WHERE NOT done AND id > $1 ORDER BY id LIMIT $2', [after, PAGE]);
        for (const unit of split(rows.map((row) => row.id))) {
          while (inFlight.size >= concurrency) await Promise.race(inFlight);
          const running: Promise<void> = work(db, unit).then(
            () => void (drained.done += size(unit)),
            () => void (drained.failed += size(unit)),
          );
          inFlight.add(running);
          void running.finally(() => inFlight.delete(running));
        }
        if (rows.length < PAGE) break;
        after = rows[rows.length - 1]!.id;
      }
      await Promise.all(inFlight);
      return drained;
    },
    close: () => pool.end(),
  };
}

export function openSide(side: SideName, url: string, concurrency: number): Promise<DrainSide> {
  switch (side) {
    case 'engine per item':
      return engineSide(url, concurrency, perItemDefinition(concurrency), 'bench-items');
    case 'engine batch':
      return engineSide(url, concurrency, batchDefinition(concurrency), 'bench-batch');
    case 'raw per-item loop':
      return rawSide(url, concurrency, (ids) => ids, markOne, () => 1);
    case 'raw set-based loop':
      return rawSide(url, concurrency, (ids) => [ids], markMany, (ids) => ids.length);
  }
}

export interface Shape {
  pending: number;
  done: number;
  poison: number;
}

/** Fills the table: `pending` items among `done` ones, every SPACING-th row pending. */
export async function createItems(database: Database, shape: Shape): Promise<void> {
  await queryRows(database.db, sql`CREATE TABLE bench_items (id serial PRIMARY KEY, done boolean NOT NULL DEFAULT false, value int NOT NULL DEFAULT 1, CHECK (NOT done OR value >= 0))`);
  await queryRows(database.db, sql`INSERT INTO bench_items (done) SELECT n % ${SPACING} <> 0 FROM generate_series(1, ${shape.pending + shape.done}) AS n`);
  await queryRows(database.db, sql`CREATE INDEX bench_items_pending ON bench_items (id) WHERE NOT done`);
}

/**
 * Puts the backlog back (the pending items pending again, poisoned or not) and forgets the
 * failures; every drain starts from the same state. With `upTo`, only the pending items up to
 * that id (a warm-up).
 */
export async function resetItems(database: Database, poisoned: boolean, upTo = 2 ** 31 - 1): Promise<void> {
  await queryRows(
    database.db,
    sql`UPDATE bench_items SET done = false, value = CASE WHEN ${poisoned} AND id % ${SPACING * POISON_EVERY} = 0 THEN -1 ELSE 1 END WHERE id % ${SPACING} = 0 AND id <= ${upTo}`,
  );
  await queryRows(database.db, sql`DELETE FROM reconciler.failures`);
  await settleDown(database, sql`bench_items`);
}

/**
 * Checks a drain's end state: with poison, exactly the poison items are left (and, for the
 * engine, in its failure memory), every other item done. Returns the poison items among the
 * engine's failures (0 for a raw loop).
 */
export async function checkDrain(database: Database, side: SideName, drained: Drained, shape: Shape, poisoned: boolean): Promise<number> {
  const poison = poisoned ? shape.poison : 0;
  const [left] = await queryRows<{ pending: number; innocent: number }>(database.db, sql`SELECT count(*)::int AS pending, count(*) FILTER (WHERE value >= 0)::int AS innocent FROM bench_items WHERE NOT done`);
  const problems: string[] = [];
  let isolated = 0;
  if (drained.done !== shape.pending - poison || drained.failed !== poison) problems.push(`reported ${drained.done} done and ${drained.failed} failed, expected ${shape.pending - poison} and ${poison}`);
  if (left!.pending !== poison || left!.innocent !== 0) problems.push(`left ${left!.pending} item(s) pending, ${left!.innocent} of them not poison`);
  if (side.startsWith('engine')) {
    const [failures] = await queryRows<{ total: number; poison: number }>(
      database.db,
      sql`SELECT count(*)::int AS total, count(*) FILTER (WHERE i.value < 0 AND NOT i.done)::int AS poison
          FROM reconciler.failures f LEFT JOIN bench_items i ON f.key = 'item:' || i.id`,
    );
    isolated = failures!.poison;
    if (failures!.total !== poison || failures!.poison !== poison) problems.push(`recorded ${failures!.total} failure(s), ${failures!.poison} of them poison items, expected exactly the ${poison} poison items`);
  }
  if (problems.length > 0) throw new Error(`${CASE}: the ${side} side ${problems.join('; ')}`);
  return isolated;
}

interface SubCase {
  label: string;
  concurrency: number;
  sides: SideName[];
  poisoned?: boolean;
  saturated?: boolean;
}

/** `os.cpus().length` busy-loop processes: the machine saturated, as when other work shares it. */
function saturate(): () => void {
  const children: ChildProcess[] = cpus().map(() => spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }));
  return () => {
    for (const child of children) child.kill('SIGKILL');
  };
}

export async function batchDrain({ quick, runs, subset }: CaseOptions): Promise<CaseResult[]> {
  const shape: Shape = quick ? { pending: 1_000, done: 10_000, poison: 1_000 / POISON_EVERY } : { pending: 50_000, done: 500_000, poison: 50_000 / POISON_EVERY };
  const what = `${shape.pending.toLocaleString('en')} pending among ${shape.done.toLocaleString('en')} done`;
  const perItem: SideName[] = ['engine per item', 'raw per-item loop'];
  const all: SubCase[] = [
    ...[1, 10, 50].map((concurrency) => ({ label: `per-item at concurrency ${concurrency}`, concurrency, sides: perItem })),
    ...[1, 10].map((concurrency): SubCase => ({ label: `set-based at concurrency ${concurrency}`, concurrency, sides: ['engine batch', 'raw per-item loop', 'raw set-based loop'] })),
    ...[1, 10].map((concurrency): SubCase => ({ label: `set-based with 1% poison at concurrency ${concurrency}`, concurrency, sides: ['engine batch', 'raw per-item loop'], poisoned: true })),
    ...[1, 10, 50].map((concurrency) => ({ label: `per-item on a saturated machine at concurrency ${concurrency}`, concurrency, sides: perItem, saturated: true })),
  ];
  // Quick (inside npm test): one of each kind, the machine left alone.
  const quickLabels = ['per-item at concurrency 10', 'set-based at concurrency 1', 'set-based with 1% poison at concurrency 1'];
  const chosen = all.filter((c) => (subset ? c.label.includes(subset) : !quick || quickLabels.includes(c.label)));
  const { database, url, drop } = await scratchDatabase();
  const results: CaseResult[] = [];
  const push = (figure: string, unit: string, samples: number[], goal: string, met: (s: ReturnType<typeof stats>) => boolean) => {
    const s = stats(samples);
    results.push({ case: CASE, figure, unit, ...s, goal, met: met(s) });
  };
  try {
    await createItems(database, shape);
    for (const c of chosen) {
      process.stderr.write(`[bench] ${CASE}/${c.label}…\n`); // a full run of this case takes a while: say where it is
      const sides = new Map<SideName, DrainSide>();
      let unsaturate: (() => void) | undefined;
      try {
        for (const side of c.sides) sides.set(side, await openSide(side, url, c.concurrency));
        const rate = new Map<SideName, number[]>(c.sides.map((side) => [side, []]));
        const cpuPerItem = new Map<SideName, number[]>(c.sides.map((side) => [side, []]));
        const isolated: number[] = [];
        let busy = { drains: 0, percent: 0 };
        if (c.saturated) unsaturate = saturate();
        // A warm-up drain of a few thousand items per side, not measured: V8 compiles each side's
        // code over its first thousands of items, which would otherwise weigh on the first run.
        for (const side of c.sides) {
          await resetItems(database, Boolean(c.poisoned), Math.min(2_000, shape.pending / 10) * SPACING);
          await sides.get(side)!.drain();
        }
        for (let run = 0; run < runs; run++) {
          // Rotate which side goes first, so that drift on a shared machine favours none.
          const order = c.sides.map((_, i) => c.sides[(i + run) % c.sides.length]!);
          for (const side of order) {
            await resetItems(database, Boolean(c.poisoned));
            const before = machineCpu();
            const cpu = process.cpuUsage();
            const started = performance.now();
            const drained = await sides.get(side)!.drain();
            const seconds = (performance.now() - started) / 1000;
            const used = process.cpuUsage(cpu);
            busy = { ...busy, drains: busy.drains + 1, percent: busy.percent + busyPercent(before, machineCpu()) };
            const poisonFailed = await checkDrain(database, side, drained, shape, Boolean(c.poisoned));
            if (side === 'engine batch') isolated.push(poisonFailed);
            rate.get(side)!.push(shape.pending / seconds);
            cpuPerItem.get(side)!.push((used.user + used.system) / shape.pending);
          }
        }
        const ratio = (a: SideName, b: SideName) => rate.get(a)!.map((r, i) => r / rate.get(b)![i]!);
        // The machine's load beside every sub-case: on a shared machine, other work saturates it too.
        const load = `; machine ${Math.round(busy.percent / busy.drains)}% busy over the drains, load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores${c.saturated ? `, ${cpus().length} busy-loop processes beside` : ''}`;
        for (const side of c.sides) push(`${c.label}: ${side}${side === c.sides[0] ? ` (${what}${c.poisoned ? `, ${shape.poison.toLocaleString('en')} poison` : ''}${load})` : ''}`, 'items/s', rate.get(side)!, 'the ratios below', () => true);
        if (c.sides.includes('engine per item')) {
          push(`${c.label}: engine per item ÷ raw per-item loop`, '×', ratio('engine per item', 'raw per-item loop'), '≥ 0.95×', (s) => s.median >= 0.95);
          const engineCpu = cpuPerItem.get('engine per item')!.map((us, i) => us - cpuPerItem.get('raw per-item loop')![i]!);
          push(`${c.label}: engine CPU per item beyond the raw loop's (raw loop: ${stats(cpuPerItem.get('raw per-item loop')!).median} µs)`, 'µs', engineCpu, 'reported', () => true);
        }
        if (c.sides.includes('engine batch')) {
          const floor = c.poisoned ? 5 : 10;
          push(`${c.label}: engine batch ÷ raw per-item loop`, '×', ratio('engine batch', 'raw per-item loop'), `≥ ${floor}×`, (s) => s.median >= floor);
          if (c.sides.includes('raw set-based loop')) push(`${c.label}: engine batch ÷ raw set-based loop`, '×', ratio('engine batch', 'raw set-based loop'), '≥ 0.7×', (s) => s.median >= 0.7);
          // checkDrain throws unless exactly the poison items failed and every other item is done.
          if (c.poisoned) push(`${c.label}: poison items in the engine's failures (and nothing else; every other item done)`, 'items', isolated, `exactly the ${shape.poison} poison items`, (s) => s.min === shape.poison && s.max === shape.poison);
        }
      } finally {
        unsaturate?.();
        for (const side of sides.values()) await side.close();
      }
    }
    return results;
  } finally {
    await drop();
  }
}
