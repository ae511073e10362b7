/** The benchmark cases: each returns figures as median, min and max over `runs` measured runs. */
import { randomBytes } from 'node:crypto';
import { sql } from 'drizzle-orm';
import pino from 'pino';
import { openDatabase, queryRows, type Database } from '../../src/store/database.js';
import { migrateDatabase } from '../../src/store/migrate.js';
import { defineReconciler, resolveReconciler, type Reconciler } from '../../src/reconciler.js';
import { Engine } from '../../src/engine/engine.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { findReturnsToSettle } from '../../src/returns/service.js';
import { ADMIN_URL, admin, urlOf } from '../faults/harness.js';

export interface CaseResult {
  case: string;
  figure: string;
  unit: string;
  median: number;
  min: number;
  max: number;
  goal: string;
  met: boolean;
}

export interface CaseOptions {
  quick: boolean;
  runs: number;
}

const silent = pino({ level: 'silent' });

export function stats(samples: number[]): { median: number; min: number; max: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  const round = (n: number) => Math.round(n * 100) / 100;
  return { median: round(median), min: round(sorted[0]!), max: round(sorted[sorted.length - 1]!) };
}

/** A fresh migrated database, dropped by the returned cleanup. */
async function scratchDatabase(): Promise<{ database: Database; drop: () => Promise<void> }> {
  const name = `reconciler_bench_${randomBytes(4).toString('hex')}`;
  await admin(`CREATE DATABASE ${name}`);
  const database = await openDatabase({ databaseUrl: urlOf(name, ADMIN_URL), dataDir: '.data', log: silent });
  await migrateDatabase(database);
  return {
    database,
    drop: async () => {
      await database.close();
      await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

const inline = (name: string, definition: Parameters<typeof defineReconciler>[0]): Reconciler => resolveReconciler(name, `bench:${name}`, defineReconciler(definition)) as Reconciler;

/** Grows `returns` to `total` rows, every one settled: the shape of a system with nothing left to do. */
async function growSettled(database: Database, total: number): Promise<void> {
  const [row] = await queryRows<{ n: number }>(database.db, sql`SELECT count(*)::int AS n FROM returns`);
  const missing = total - Number(row?.n ?? 0);
  if (missing <= 0) return;
  const [customer] = await queryRows<{ id: number }>(database.db, sql`INSERT INTO customers (name, email, payment_method) VALUES ('Bench', 'bench@example.com', 'pm_card_visa') RETURNING id`);
  for (let done = 0; done < missing; done += 500_000) {
    const n = Math.min(500_000, missing - done);
    await queryRows(
      database.db,
      sql`WITH f AS (INSERT INTO fixes (customer_id, styling_fee_cents) SELECT ${customer!.id}, 2000 FROM generate_series(1, ${n}) RETURNING id)
          INSERT INTO returns (fix_id, settled_at, settlement) SELECT id, now(), 'none' FROM f`,
    );
  }
  await queryRows(database.db, sql`VACUUM ANALYZE returns`);
}

/**
 * 2. A pass of settle-returns' scan that finds nothing, with 10k, 1M and 5M settled returns:
 * lease, scan and record, timed around the whole pass. Its cost must not grow with the table.
 */
export async function scanCost({ quick, runs }: CaseOptions): Promise<CaseResult[]> {
  const sizes = quick ? [10_000, 100_000] : [10_000, 1_000_000, 5_000_000];
  const { database, drop } = await scratchDatabase();
  try {
    const settle = inline('settle-returns', {
      schedule: '0 0 1 1 *',
      scan: ({ db, after, limit }) => findReturnsToSettle(db, (after as { id: number } | undefined)?.id ?? 0, limit),
      key: (ret) => `return:${(ret as { id: number }).id}`,
      reconcile: async () => {
        throw new Error('the benchmark expects no return to settle');
      },
    });
    const engine = new Engine({ db: database.db, control: database.control, reconcilers: [settle], log: silent, leaseMs: 15_000 });
    const medians = new Map<number, number>();
    const results: CaseResult[] = [];
    for (const size of sizes) {
      await growSettled(database, size);
      const samples: number[] = [];
      for (let i = 0; i <= runs; i++) {
        const started = performance.now();
        const outcome = await engine.runPass('settle-returns', { trigger: 'manual' });
        const ms = performance.now() - started;
        if (!outcome.ran || outcome.result.counts.found !== 0) throw new Error('scan cost: the pass did not run, or found work');
        if (i > 0) samples.push(ms); // the first warms the caches
      }
      const s = stats(samples);
      medians.set(size, s.median);
      results.push({ case: 'scan cost (0 items to do)', figure: `pass with ${size.toLocaleString('en')} settled returns`, unit: 'ms', ...s, goal: 'median < 5 ms', met: s.median < 5 });
    }
    const smallest = medians.get(sizes[0]!)!;
    const largest = medians.get(sizes[sizes.length - 1]!)!;
    const ratio = Math.round((largest / smallest) * 100) / 100;
    results.push({ case: 'scan cost (0 items to do)', figure: `largest / smallest table (${sizes[sizes.length - 1]!.toLocaleString('en')} / ${sizes[0]!.toLocaleString('en')})`, unit: '×', median: ratio, min: ratio, max: ratio, goal: '≤ 2×', met: ratio <= 2 });
    return results;
  } finally {
    await drop();
  }
}

/** 5. From a scheduled tick (a second boundary, every second) to the first item's reconcile call, through the daemon's scheduler. */
export async function passLatency({ runs }: CaseOptions): Promise<CaseResult[]> {
  const { database, drop } = await scratchDatabase();
  const calls: number[] = [];
  let wake: () => void = () => undefined;
  const probe = inline('latency', {
    schedule: '* * * * * *',
    scan: async ({ after }) => (after ? [] : [{ id: 1 }]),
    key: () => 'one',
    reconcile: async () => {
      calls.push(Date.now());
      wake();
      return 'unchanged';
    },
  });
  const engine = new Engine({ db: database.db, control: database.control, reconcilers: [probe], log: silent, leaseMs: 15_000 });
  const scheduler = new Scheduler({ engine, log: silent });
  try {
    await scheduler.start();
    while (calls.length < runs + 2) await new Promise<void>((resolve) => (wake = resolve));
    // The first call is the catch-up pass at start, the second warms up; the rest served a tick each.
    const samples = calls.slice(2).map((at) => at % 1_000);
    const s = stats(samples);
    return [{ case: 'pass latency', figure: 'scheduled tick → first reconcile call', unit: 'ms', ...s, goal: 'median < 50 ms', met: s.median < 50 }];
  } finally {
    await scheduler.stop();
    await engine.stop(5_000);
    await scheduler.drain();
    await drop();
  }
}
