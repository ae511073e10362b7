/**
 * 1. Backlog drain against a raw loop, and 3. memory under backlog.
 *
 * The drain runs settle-returns' real per-item work (`settleReturn`) twice over the same
 * backlog, side by side in one process: through the engine, and through a hand-written loop
 * over `pg` (keyset SELECT of pending ids in batches of 1,000, the same work with the same
 * concurrency through a pool of the same size). Anything the engine adds per item shows as
 * the ratio of the two rates; the queries it adds are counted, per page.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/node-postgres';
import { setMaxListeners } from 'node:events';
import pg from 'pg';
import { Engine } from '../../src/engine/engine.js';
import { coerceError, errorSummary } from '../../src/errors.js';
import type { Db, ReconcileContext } from '../../src/reconciler.js';
import { StripePaymentProvider, type Effect, type EffectRequest, type EffectResult, type PaymentProvider } from '../../examples/returns/src/provider.js';
import { seedReturns } from '../../examples/returns/src/seed.js';
import { settleReturn } from '../../examples/returns/src/service.js';
import { reconciler } from '../../testkit/engine.js';
import { settleReturns } from '../../testkit/settle-returns.js';
import { openDatabase, queryRows, type Database } from '../../src/store/database.js';
import { Stage, admin } from '../faults/harness.js';
import { addReturns, rssMb, scratchDatabase, settleDown, silent, stats, type CaseOptions, type CaseResult } from './common.js';

const BATCH = 1_000;

/** The same pool size on both sides: one connection per item in flight plus one for the scan, at most 20 (both sides are open at once, within max_connections = 100). */
const poolSizeFor = (concurrency: number) => Math.min(concurrency + 1, 20);

/** The provider call replaced by a write to a ledger table in the same database: the work is all database. It never leaves an outcome unknown, so it is never looked up. */
class LedgerProvider implements PaymentProvider {
  readonly searchLagMs = 0;
  constructor(readonly db: Db) {}
  charge(request: EffectRequest): Promise<EffectResult> {
    return this.#write('charge', request);
  }
  refund(request: EffectRequest): Promise<EffectResult> {
    return this.#write('refund', request);
  }
  async find(): Promise<Effect[]> {
    return [];
  }
  retrieve(): Promise<Effect> {
    return Promise.reject(new Error('the bench ledger retrieves nothing'));
  }
  async #write(kind: 'charge' | 'refund', r: EffectRequest): Promise<EffectResult> {
    const [row] = await queryRows<{ id: number }>(
      this.db,
      sql`INSERT INTO bench_ledger (idempotency_key, kind, amount_minor, currency, customer) VALUES (${r.idempotencyKey}, ${kind}, ${r.amountMinor}, ${r.currency}, ${r.customer})
          ON CONFLICT (idempotency_key) DO UPDATE SET idempotency_key = excluded.idempotency_key RETURNING id`,
    );
    return { id: `led_${row!.id}`, kind, amountMinor: r.amountMinor, currency: r.currency, status: 'succeeded', createdAt: Date.now(), replayed: false };
  }
}

const LEDGER_TABLE = sql`CREATE TABLE IF NOT EXISTS bench_ledger (id bigserial PRIMARY KEY, idempotency_key text NOT NULL UNIQUE, kind text NOT NULL, amount_minor int NOT NULL, currency text NOT NULL, customer text NOT NULL)`;

/** Every query any `pg` client of this process sends, counted: the engine's extra queries are the difference between the two sides. */
let queriesSent = 0;
const clientQuery = pg.Client.prototype.query;
pg.Client.prototype.query = function countedQuery(this: pg.Client, ...args: unknown[]) {
  queriesSent++;
  return (clientQuery as (...a: unknown[]) => unknown).apply(this, args);
} as typeof pg.Client.prototype.query;

interface DrainSide {
  /** Drains the backlog once; returns items settled. */
  drain(): Promise<number>;
  close(): Promise<void>;
}

/** The engine: one manual pass of settle-returns as the job file defines it (page size matched to the raw loop's batch). */
async function engineSide(url: string, concurrency: number, provider: (db: Db) => PaymentProvider): Promise<DrainSide> {
  const database = await openDatabase({ databaseUrl: url, dataDir: '.data', log: silent, poolSize: poolSizeFor(concurrency) });
  const client = provider(database.db);
  // The shipped definition, unpartitioned and unwoken (as a manual pass runs it), through this side's provider.
  const settle = reconciler('settle-returns', settleReturns({ schedule: '0 0 1 1 *', partitions: 1, wakeOn: [], concurrency, pageSize: BATCH }, () => client), 'bench:settle-returns');
  // A lease long enough that no renewal lands in a drain's query count (renewals come every third of it).
  const engine = new Engine({ db: database.db, control: database.control, reconcilers: [settle], log: silent, leaseMs: 300_000 });
  return {
    drain: async () => {
      const outcome = await engine.requestPass('settle-returns', { trigger: 'manual' });
      if (!outcome.ran) throw new Error(`backlog drain: the pass did not run (${outcome.reason})`);
      const { counts, error } = outcome.result;
      if (counts.failed > 0 || error) throw new Error(`backlog drain: the reconciler failed ${counts.failed} item(s)${error ? `: ${error}` : ''}`);
      return counts.changed;
    },
    close: async () => {
      await engine.stop(5_000);
      await database.close();
    },
  };
}

/** The raw loop a careful person would write by hand: keyset batches, a bounded set of items in flight, one pg.Pool. */
async function rawSide(url: string, concurrency: number, provider: (db: Db) => PaymentProvider): Promise<DrainSide> {
  const pool = new pg.Pool({ connectionString: url, max: poolSizeFor(concurrency) });
  const db = drizzle(pool) as unknown as Db;
  const client = provider(db);
  // One signal for every item in flight (the raw loop has no per-item timeout); each provider call listens on it.
  const signal = new AbortController().signal;
  setMaxListeners(concurrency + 10, signal);
  return {
    drain: async () => {
      let settled = 0;
      let failed: unknown;
      const inFlight = new Set<Promise<void>>();
      for (let after = 0; ; ) {
        const { rows } = await pool.query<{ id: number }>('SELECT id FROM returns WHERE settled_at IS NULL AND id > $1 ORDER BY id LIMIT $2', [after, BATCH]);
        for (const { id } of rows) {
          while (inFlight.size >= concurrency) await Promise.race(inFlight);
          const key = `return:${id}`;
          const ctx: ReconcileContext = { db, log: silent, signal, attempt: 1, dryRun: false, idempotencyKey: `settle-returns:${key}`, key };
          const item: Promise<void> = settleReturn(id, ctx, () => client).then(
            (result) => void (result !== 'unchanged' && settled++),
            (error: unknown) => void (failed ??= error),
          );
          inFlight.add(item);
          void item.finally(() => inFlight.delete(item));
        }
        if (rows.length < BATCH) break;
        after = rows[rows.length - 1]!.id;
      }
      await Promise.all(inFlight);
      if (failed) throw new Error(`backlog drain: the raw loop failed an item: ${errorSummary(coerceError(failed), 500)}`, { cause: failed });
      return settled;
    },
    close: () => pool.end(),
  };
}

/**
 * Puts the backlog back: the pending returns unsettled again, under new public ids, so that
 * every drain sends fresh idempotency keys, and the simulator's ledger as the seed left it (the
 * checkout charges, nothing refunded). Every drain starts from the same state: a ledger that grew
 * run after run would slow whichever side went second, and bias the ratio.
 */
async function resetBacklog(database: Database, simulatorStorage: string): Promise<void> {
  await admin(
    "DELETE FROM payment_provider.requests WHERE idempotency_key NOT LIKE 'fix:%'; DELETE FROM payment_provider.effects WHERE coalesce(return_id, '') <> ''; " +
      'UPDATE payment_provider.effects SET amount_refunded = 0 WHERE amount_refunded <> 0',
    simulatorStorage,
  );
  await admin('VACUUM ANALYZE payment_provider.requests, payment_provider.effects', simulatorStorage);
  await queryRows(database.db, sql`DELETE FROM payments WHERE return_id IN (SELECT id FROM returns WHERE recorded_by = 'warehouse-seed')`);
  await queryRows(database.db, sql`UPDATE returns SET settled_at = NULL, settlement = NULL, public_id = gen_random_uuid() WHERE recorded_by = 'warehouse-seed'`);
  await queryRows(database.db, sql`TRUNCATE bench_ledger`);
  await queryRows(database.db, sql`DELETE FROM reconciler.failures`);
  await settleDown(database, sql`returns, payments, bench_ledger`);
}

async function unsettled(database: Database): Promise<number> {
  const [row] = await queryRows<{ n: number }>(database.db, sql`SELECT count(*)::int AS n FROM returns WHERE settled_at IS NULL`);
  return Number(row?.n ?? 0);
}

export async function backlogDrain({ quick, runs, app, subset }: CaseOptions): Promise<CaseResult[]> {
  const pending = quick ? 500 : 50_000;
  const settledCount = quick ? 5_000 : 500_000;
  const { database, url, drop } = await scratchDatabase();
  const stage = new Stage(await app());
  const results: CaseResult[] = [];
  try {
    await queryRows(database.db, LEDGER_TABLE);
    // The pending returns (real Fixes, items and returned items) in the middle of the settled ones.
    const simulator = await stage.provider(1, {});
    await addReturns(database, settledCount / 2, 'settled');
    // What their customers prepaid is charged at checkout at the simulator: the charges their refunds are made against.
    await seedReturns(database.db, pending, 1, { checkout: simulator.checkout });
    await addReturns(database, settledCount / 2, 'settled');
    await simulator.setFaults({ latencyMs: [5, 5] });
    const overSimulator = () => new StripePaymentProvider({ baseUrl: simulator.direct, apiKey: simulator.apiKey, timeoutMs: 10_000 });
    const cases = [
      { label: 'DB-only work (ledger write), concurrency 10', concurrency: 10, provider: (db: Db) => new LedgerProvider(db) },
      { label: 'provider simulator with 5 ms latency, concurrency 50', concurrency: 50, provider: overSimulator },
      { label: 'DB-only work (ledger write), concurrency 1', concurrency: 1, provider: (db: Db) => new LedgerProvider(db) },
    ];
    const what = `${pending.toLocaleString('en')} pending among ${settledCount.toLocaleString('en')} settled`;
    for (const c of cases.filter((c) => !subset || c.label.includes(subset))) {
      const sides = { reconciler: await engineSide(url, c.concurrency, c.provider), raw: await rawSide(url, c.concurrency, c.provider) };
      try {
        const rate = { reconciler: [] as number[], raw: [] as number[] };
        const ratios: number[] = [];
        const extraPerPage: number[] = [];
        // --quick (inside npm test) checks the harness and the queries per page, which one run of each side shows.
        for (let run = 0; run < (quick ? 1 : runs); run++) {
          // Alternate which side goes first, so that drift on a shared machine does not favour one.
          const order = run % 2 === 0 ? (['raw', 'reconciler'] as const) : (['reconciler', 'raw'] as const);
          const queries = { reconciler: 0, raw: 0 };
          for (const side of order) {
            await resetBacklog(database, simulator.storageUrl);
            const sent = queriesSent;
            const started = performance.now();
            const settledNow = await sides[side].drain();
            const seconds = (performance.now() - started) / 1000;
            queries[side] = queriesSent - sent;
            if (settledNow !== pending || (await unsettled(database)) !== 0) throw new Error(`backlog drain: the ${side} side settled ${settledNow} of ${pending}`);
            rate[side].push(pending / seconds);
          }
          ratios.push(rate.reconciler[run]! / rate.raw[run]!);
          extraPerPage.push((queries.reconciler - queries.raw) / Math.ceil(pending / BATCH));
        }
        const ratio = stats(ratios);
        const extra = stats(extraPerPage);
        results.push(
          { case: 'backlog drain', figure: `${c.label}: reconciler (${what})`, unit: 'items/s', ...stats(rate.reconciler), goal: 'the ratio below', met: true },
          { case: 'backlog drain', figure: `${c.label}: raw pg loop`, unit: 'items/s', ...stats(rate.raw), goal: 'the baseline', met: true },
          { case: 'backlog drain', figure: `${c.label}: reconciler ÷ raw loop`, unit: '×', ...ratio, goal: '≥ 0.9×', met: ratio.median >= 0.9 },
          { case: 'backlog drain', figure: `${c.label}: engine queries beyond the raw loop's, per page of ${BATCH}`, unit: '', ...extra, goal: '≤ 3 per page (never one per item)', met: extra.max <= 3 },
        );
      } finally {
        await sides.reconciler.close();
        await sides.raw.close();
      }
    }
    return results;
  } finally {
    await stage.teardown();
    await drop();
  }
}

/**
 * 3. Memory under backlog: the built CLI (`reconciler run`, as the image runs it) drains
 * 100,000 and then 1,000,000 pending returns, each settled by one UPDATE (the engine's
 * memory is the question, not the work's); its peak RSS (VmHWM) must not grow with the backlog.
 */
export async function memoryUnderBacklog({ quick, runs, app }: CaseOptions): Promise<CaseResult[]> {
  const sizes = quick ? [5_000, 15_000] : [100_000, 1_000_000];
  const built = await app();
  const stage = new Stage(built);
  const { database, url, drop } = await scratchDatabase();
  try {
    const jobs = stage.jobFolder();
    writeFileSync(
      join(jobs, 'drain.js'),
      `import { sql } from 'drizzle-orm';
import { defineReconciler } from ${JSON.stringify(built.module('src/index.js'))};
import { findReturnsToSettle } from ${JSON.stringify(built.module('examples/returns/src/service.js'))};
export default defineReconciler({
  schedule: '0 0 1 1 *',
  concurrency: 20,
  scan: ({ db, after, limit }) => findReturnsToSettle(db, after?.id ?? 0, limit),
  key: (ret) => 'return:' + ret.id,
  since: (ret) => ret.receivedAt,
  reconcile: async (ret, { db }) => {
    await db.execute(sql\`UPDATE returns SET settled_at = now(), settlement = 'none' WHERE id = \${ret.id} AND settled_at IS NULL\`);
    return 'changed';
  },
});
`,
    );
    const env = { DATABASE_URL: url, JOBS_DIR: jobs, LOG_LEVEL: 'warn', DATABASE_POOL_SIZE: '21' };
    const peaks = new Map<number, number[]>();
    let total = 0;
    for (const size of sizes) {
      await addReturns(database, size - total, 'pending');
      total = size;
      const samples: number[] = [];
      for (let run = 0; run < runs; run++) {
        await queryRows(database.db, sql`UPDATE returns SET settled_at = NULL, settlement = NULL WHERE recorded_by = 'bench'`);
        await settleDown(database, sql`returns`);
        const child = stage.start(['run', 'drain'], env);
        let peak = 0;
        const poll = setInterval(() => {
          try {
            peak = Math.max(peak, rssMb(child.pid, 'VmHWM')); // the peak so far
          } catch {
            // exited between readings
          }
        }, 100);
        const { code } = await child.exited;
        clearInterval(poll);
        if (code !== 0 || (await unsettled(database)) !== 0) throw new Error(`memory: \`reconciler run drain\` exited ${code} with ${await unsettled(database)} return(s) left: ${child.stderr.slice(-500)}`);
        samples.push(peak);
      }
      peaks.set(size, samples);
    }
    const [small, large] = sizes.map((size) => stats(peaks.get(size)!));
    const growth = Math.round((large!.median - small!.median) * 10) / 10;
    return [
      ...sizes.map((size, i): CaseResult => {
        const s = i === 0 ? small! : large!;
        return { case: 'memory under backlog', figure: `peak RSS draining ${size.toLocaleString('en')} pending returns (\`reconciler run\`, concurrency 20)`, unit: 'MB', ...s, goal: '< 250 MB', met: s.max < 250 };
      }),
      // V8 sizes its heap to the allocation rate over the first tens of thousands of items, so
      // quick backlogs end before the heap settles: growth is judged in the full run only.
      quick
        ? { case: 'memory under backlog', figure: `peak RSS growth, ${sizes[0]!.toLocaleString('en')} → ${sizes[1]!.toLocaleString('en')} pending (medians; too small to judge, see the full run)`, unit: 'MB', median: growth, min: growth, max: growth, goal: 'judged in the full run', met: true }
        : { case: 'memory under backlog', figure: `peak RSS growth, ${sizes[0]!.toLocaleString('en')} → ${sizes[1]!.toLocaleString('en')} pending (medians)`, unit: 'MB', median: growth, min: growth, max: growth, goal: 'no growth (< 10 MB)', met: growth < 10 },
    ];
  } finally {
    await stage.teardown();
    await drop();
  }
}

