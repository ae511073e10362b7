/** Scan cost, pass latency and idle footprint: each returns figures as median, min and max over its runs. */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { queryRows } from '../../src/store/database.js';
import { Engine } from '../../src/engine/engine.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { Stage, until } from '../faults/harness.js';
import { reconciler } from '../../testkit/engine.js';
import { settleReturns } from '../../testkit/settle-returns.js';
import { cpuSeconds, growSettled, rssMb, scratchDatabase, silent, stats, type CaseOptions, type CaseResult } from './common.js';

/**
 * 2. A pass of settle-returns' scan that finds nothing, with 10k, 1M and 5M settled returns:
 * lease, scan and record, timed around the whole pass. Its cost must not grow with the table.
 */
const WARM_PASSES = 20;
const QUERY_COUNTER = fileURLToPath(new URL('./count-queries.mjs', import.meta.url));
const PASSES_PER_RUN = 10;

export async function scanCost({ quick, runs }: CaseOptions): Promise<CaseResult[]> {
  const sizes = quick ? [10_000, 100_000] : [10_000, 1_000_000, 5_000_000];
  const { database, drop } = await scratchDatabase();
  try {
    const noProvider = () => {
      throw new Error('the benchmark expects no return to settle');
    };
    const settle = reconciler('settle-returns', settleReturns({ schedule: '0 0 1 1 *', partitions: 1, wakeOn: [] }, noProvider), 'bench:settle-returns');
    const engine = new Engine({ db: database.db, control: database.control, reconcilers: [settle], log: silent, leaseMs: 15_000 });
    const medians = new Map<number, number>();
    const results: CaseResult[] = [];
    for (const size of sizes) {
      await growSettled(database, size);
      const samples: number[] = [];
      // The first passes warm the caches and the JIT (the very first pass of a process takes
      // several times longer than the rest): a daemon's passes are its thousandth, not its first.
      for (let i = 0; i < WARM_PASSES + runs * PASSES_PER_RUN; i++) {
        const started = performance.now();
        const outcome = await engine.requestPass('settle-returns', { trigger: 'manual' });
        const ms = performance.now() - started;
        if (!outcome.ran || outcome.result.counts.found !== 0) throw new Error('scan cost: the pass did not run, or found work');
        if (i >= WARM_PASSES) samples.push(ms);
      }
      const s = stats(samples);
      medians.set(size, s.median);
      results.push({ case: 'scan cost (0 items to do)', figure: `pass with ${size.toLocaleString('en')} settled returns (${samples.length} passes)`, unit: 'ms', ...s, goal: 'median < 5 ms', met: s.median < 5 });
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
  const probe = reconciler('latency', {
    schedule: '* * * * * *',
    scan: async ({ after }) => (after ? [] : [{ id: 1 }]),
    key: () => 'one',
    reconcile: async () => {
      calls.push(Date.now());
      wake();
      return 'unchanged' as const;
    },
  }, 'bench:latency');
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

/**
 * 4. Idle footprint: the built daemon (as the image runs it) with 20 reconcilers due every
 * 10 s and nothing to do. Sampled per 10 s window: CPU share of one core, RSS, and queries
 * per idle pass (counted in the daemon by a preloaded probe, scripts/bench/count-queries.mjs).
 */
export async function idleFootprint({ quick, app: built }: CaseOptions): Promise<CaseResult[]> {
  const app = await built();
  const stage = new Stage(app);
  try {
    const shop = await stage.shop(0, 1);
    const jobs = stage.jobFolder();
    const index = JSON.stringify(app.module('src/index.js'));
    const service = JSON.stringify(app.module('examples/returns/src/service.js'));
    for (let i = 1; i <= 20; i++) {
      writeFileSync(
        join(jobs, `idle-${String(i).padStart(2, '0')}.js`),
        `import { defineReconciler } from ${index};\nimport { findReturnsToSettle } from ${service};\n` +
          `export default defineReconciler({ schedule: '*/10 * * * * *', scan: ({ db, after, limit }) => findReturnsToSettle(db, after?.id ?? 0, limit), key: (r) => String(r.id), reconcile: async () => 'unchanged' });\n`,
      );
    }
    const countFile = join(jobs, 'queries.count');
    const daemon = stage.daemon({
      DATABASE_URL: shop.url, JOBS_DIR: jobs, LOG_LEVEL: 'warn', PAYMENT_PROVIDER_URL: 'http://127.0.0.1:1', PAYMENT_PROVIDER_KEY: 'unused',
      NODE_OPTIONS: `--import ${QUERY_COUNTER}`, BENCH_QUERY_COUNT_FILE: countFile,
    });
    const db = shop.database.db;
    const passes = async () => Number((await queryRows<{ n: number }>(db, sql`SELECT count(*)::int AS n FROM reconciler.runs`))[0]?.n ?? 0);
    /** Queries the daemon sent, as its preloaded counter last wrote them (every 500 ms). */
    const queries = () => Number(readFileSync(countFile, 'utf8'));
    // Readings are taken halfway between ticks (every 10 s, on the second), when every pass
    // of the last tick has ended and its count has been written.
    const midway = () => new Promise((resolve) => setTimeout(resolve, 10_000 - ((Date.now() + 5_000) % 10_000)));
    // Warm up: every reconciler has run once (catch-up) and one tick has passed.
    await until(async () => (await passes()) >= 40, 'two rounds of idle passes', 60_000);
    await midway();
    const windows = quick ? 1 : 12;
    const cpu: number[] = [];
    const rss: number[] = [rssMb(daemon.pid)];
    const first = { passes: await passes(), queries: queries() };
    for (let w = 0; w < windows; w++) {
      const [c0, t0] = [cpuSeconds(daemon.pid), performance.now()];
      await new Promise((resolve) => setTimeout(resolve, 10_000));
      const [c1, t1] = [cpuSeconds(daemon.pid), performance.now()];
      cpu.push(((c1 - c0) / ((t1 - t0) / 1000)) * 100);
      rss.push(rssMb(daemon.pid));
    }
    const last = { passes: await passes(), queries: queries() };
    const perPass = Math.round(((last.queries - first.queries) / (last.passes - first.passes)) * 100) / 100;
    const growth = Math.round((rss[rss.length - 1]! - rss[1]!) * 10) / 10;
    const label = `20 reconcilers every 10 s, nothing to do, ${windows * 10} s`;
    return [
      { case: 'idle footprint', figure: `CPU, % of one core (${label})`, unit: '%', ...stats(cpu), goal: '< 2%', met: stats(cpu).median < 2 },
      { case: 'idle footprint', figure: 'RSS', unit: 'MB', ...stats(rss), goal: '< 150 MB', met: stats(rss).max < 150 },
      { case: 'idle footprint', figure: 'RSS growth over the window (after warm-up)', unit: 'MB', median: growth, min: growth, max: growth, goal: 'no growth (< 5 MB)', met: growth < 5 },
      { case: 'idle footprint', figure: `queries per idle pass (queries the daemon sent ÷ ${last.passes - first.passes} passes)`, unit: '', median: perPass, min: perPass, max: perPass, goal: 'lease + scan + record = 3', met: perPass <= 3 },
    ];
  } finally {
    await stage.teardown();
  }
}
