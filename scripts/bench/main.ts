/**
 * `npm run bench [-- --quick] [--runs N] [--out file]`: the benchmark harness. Absolute times
 * on a shared 2-core machine are noisy, so every figure is the median of several runs with
 * min and max, and comparisons are ratios measured side by side in the same run. Writes
 * JSON and a markdown table (bench-results/bench-latest.{json,md} by default).
 *
 * Cases so far (issue 6): the cost of a pass that finds nothing against table size, the
 * latency from a scheduled tick to the first item's reconcile, and the idle footprint.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { Command } from 'commander';
import { idleFootprint, passLatency, scanCost, type CaseResult } from './cases.js';

const program = new Command('bench')
  .option('--quick', 'small tables and few runs (under 2 minutes), as the test suite runs it')
  .option('--runs <n>', 'measured runs per figure (median, min and max are reported)', (v) => Number(v))
  .option('--out <file>', 'where the JSON goes; the markdown goes next to it (.md)', 'bench-results/bench-latest.json')
  .parse();
const options = program.opts<{ quick?: boolean; runs?: number; out: string }>();
const quick = Boolean(options.quick);
const runs = options.runs ?? (quick ? 3 : 5);
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

for (const [name, run] of [['scan cost', scanCost], ['pass latency', passLatency], ['idle footprint', idleFootprint]] as const) {
  process.stderr.write(`[bench] ${name}${quick ? ' (quick)' : ''}…\n`);
  results.push(...(await run({ quick, runs })));
  save(); // after each case, so that an interrupted run keeps what it measured
}
process.stdout.write(markdown(results));
process.stdout.write(`${results.filter((r) => r.met).length} of ${results.length} goals met in ${((Date.now() - started) / 1000).toFixed(0)} s; figures in ${options.out}\n`);
process.exit(0);
