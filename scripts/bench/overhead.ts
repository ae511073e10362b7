/**
 * `node --import ./bin/register.js scripts/bench/overhead.ts [items] [concurrency]`: the engine's
 * own CPU per item. One in-process pass over `items` in-memory items (default 100,000) whose
 * reconcile does nothing, five times; the process's CPU (user + system) over each pass divided by
 * the items, median, min and max. What is left is the engine's: scan classification, failure
 * lookups per page, admission, the item's flight, its count, and the pass's three statements.
 * To compare two versions, run it on each (`git stash` or `git checkout <rev> -- src`) in turn.
 */
import { createTestDatabase } from '../../testkit/database.js';
import { engine, numbers, reconciler } from '../../testkit/engine.js';
import { ADMIN_URL } from '../faults/harness.js';
import { stats } from './common.js';

const items = Number(process.argv[2] ?? 100_000);
const concurrency = Number(process.argv[3] ?? 10);
if (!Number.isInteger(items) || items < 1 || !Number.isInteger(concurrency) || concurrency < 1) {
  process.stderr.write('overhead: usage: overhead.ts [items ≥ 1] [concurrency ≥ 1]\n');
  process.exit(2);
}
const t = await createTestDatabase(ADMIN_URL, { prefix: 'reconciler_bench' });
try {
  const noop = reconciler<{ n: number }>('noop', { schedule: '0 0 1 1 *', concurrency, pageSize: 1_000, scan: numbers(items), key: (i) => `n${i.n}`, reconcile: async () => 'changed' });
  const e = engine(t.db, [noop]);
  await e.requestPass('noop', { trigger: 'manual' }); // warm-up, not counted
  const perItem: number[] = [];
  for (let run = 0; run < 5; run++) {
    const before = process.cpuUsage();
    const outcome = await e.requestPass('noop', { trigger: 'manual' });
    const used = process.cpuUsage(before);
    if (!outcome.ran || outcome.result.counts.changed !== items) throw new Error(`overhead: the pass did not reconcile all ${items} items`);
    perItem.push((used.user + used.system) / items);
  }
  const { median, min, max } = stats(perItem);
  process.stdout.write(`engine CPU per item (no-op reconcile, ${items.toLocaleString('en')} items, concurrency ${concurrency}): median ${median} µs (min ${min}, max ${max}); Node ${process.version}\n`);
} finally {
  await t.drop();
}
process.exit(0);
