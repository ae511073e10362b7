/**
 * `npm run bench [-- --quick] [--runs N] [--out file]`: the benchmark harness. Absolute times
 * on a shared 2-core machine are noisy, so every figure is the median of several runs with
 * min and max, and comparisons are ratios measured side by side in the same run. Writes
 * JSON and a markdown table (bench-results/bench-latest.{json,md} by default).
 *
 * Cases (issue 6): backlog drain against a raw pg loop, the cost of a pass that finds nothing
 * against table size, memory under backlog, the idle footprint, and the latency from a
 * scheduled tick to the first item's reconcile. Issue 7 adds the convergence latency of a new
 * return with wakeOn against a one-minute cron, and the scale-out of a partitioned drain
 * over 1, 2 and 4 replicas. Issue 16 adds the console's pages on a large failure table; issue
 * 19 the cost of tracing on the per-item drain (off, on at 100% and at 1% sampling).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { Command } from 'commander';
import { buildApp, type App } from '../faults/app.js';
import { idleFootprint, passLatency, scanCost } from './cases.js';
import type { CaseResult } from './common.js';
import { backlogDrain, memoryUnderBacklog } from './drain.js';
import { batchDrain } from './batch.js';
import { convergenceLatency, scaleOut } from './scale.js';
import { consolePages } from './console.js';
import { tracingCost } from './tracing.js';

const program = new Command('bench')
  .option('--quick', 'small tables and few runs (about 3 minutes), as the test suite runs it')
  .option('--runs <n>', 'measured runs per figure (median, min and max are reported)', (v) => Number(v))
  .option('--only <cases>', 'comma-separated cases to run, e.g. "scan cost,pass latency" (default: all); "backlog drain/provider" runs the drain cases whose label contains "provider"', (v) => v.split(',').map((c) => c.trim()))
  .option('--out <file>', 'where the JSON goes; the markdown goes next to it (.md)', 'bench-results/bench-latest.json')
  .parse();
const options = program.opts<{ quick?: boolean; runs?: number; only?: string[]; out: string }>();
const quick = Boolean(options.quick);
const runs = options.runs ?? 3;
if (!Number.isInteger(runs) || runs < 3) {
  process.stderr.write('bench: --runs must be a whole number of at least 3 (medians of fewer runs say little)\n');
  process.exit(2);
}

const started = Date.now();
const results: CaseResult[] = [];
const save = () => {
  mkdirSync(dirname(options.out), { recursive: true });
  writeFileSync(options.out, `${JSON.stringify({ startedAt: new Date(started).toISOString(), durationMs: Date.now() - started, quick, runs, node: process.version, results }, null, 2)}\n`);
  writeFileSync(options.out.replace(/\.json$/, '') + '.md', markdown(results));
};

function markdown(rows: CaseResult[]): string {
  const lines = ['| case | figure | median | min | max | goal | met |', '|---|---|---|---|---|---|---|'];
  for (const r of rows) lines.push(`| ${r.case} | ${r.figure} | ${r.median} ${r.unit} | ${r.min} | ${r.max} | ${r.goal} | ${r.met ? 'yes' : '**no**'} |`);
  return `${lines.join('\n')}\n`;
}

let building: Promise<App> | undefined;
const app = () => (building ??= buildApp());
const cases = [
  ['backlog drain', backlogDrain],
  ['batch drain', batchDrain],
  ['scan cost', scanCost],
  ['memory under backlog', memoryUnderBacklog],
  ['idle footprint', idleFootprint],
  ['pass latency', passLatency],
  ['convergence latency', convergenceLatency],
  ['scale-out', scaleOut],
  ['console pages', consolePages],
  ['cli start-up', async (options: Parameters<typeof consolePages>[0]) => (await import('./startup.js')).cliStartup(options)],
  ['tracing cost', tracingCost],
] as const;
/** Case name → the sub-filter after its slash ('' for the whole case). */
const wanted = new Map(options.only?.map((entry) => [entry.split('/')[0]!.trim(), entry.split('/').slice(1).join('/').trim()]));
const unknown = [...wanted.keys()].filter((name) => !cases.some(([known]) => known === name));
if (unknown.length > 0) {
  process.stderr.write(`bench: unknown case ${unknown.map((n) => `"${n}"`).join(', ')}; the cases are ${cases.map(([n]) => `"${n}"`).join(', ')}\n`);
  process.exit(2);
}
try {
  for (const [name, run] of cases.filter(([name]) => !options.only || wanted.has(name))) {
    process.stderr.write(`[bench] ${name}${quick ? ' (quick)' : ''}…\n`);
    const caseStarted = Date.now();
    results.push(...(await run({ quick, runs, app, subset: wanted.get(name) || undefined })));
    process.stderr.write(`[bench] ${name}: ${((Date.now() - caseStarted) / 1000).toFixed(0)} s\n`);
    save(); // after each case, so that an interrupted run keeps what it measured
  }
} finally {
  if (building) (await building).remove();
}
process.stdout.write(markdown(results));
process.stdout.write(`${results.filter((r) => r.met).length} of ${results.length} goals met in ${((Date.now() - started) / 1000).toFixed(0)} s; figures in ${options.out}\n`);
process.exit(0);
