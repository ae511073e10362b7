/**
 * `npm run test:faults [-- --quick] [--seeds 1,2,3] [--scenario name]`: real processes,
 * real PostgreSQL, real faults; prints a table of figures and writes it as JSON to
 * bench-results/faults-latest.json. Exits 1 if any scenario missed its criterion.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { Command } from 'commander';
import { DEFAULT_SCENARIOS, SCENARIOS, runScenario, type ScenarioResult } from './scenarios.js';
import { buildApp } from './app.js';

const program = new Command('test:faults')
  .option('--quick', 'the short version (seconds per scenario, as in npm test)')
  .option('--seeds <list>', 'comma-separated seeds; each scenario runs once per seed', '1')
  .option('--scenario <names>', `comma-separated, of: ${Object.keys(SCENARIOS).join(', ')} (default: all but ${Object.keys(SCENARIOS).filter((name) => !DEFAULT_SCENARIOS.includes(name)).join(', ')})`, DEFAULT_SCENARIOS.join(','))
  .option('--out <file>', 'where the JSON goes', 'bench-results/faults-latest.json')
  .parse();
const options = program.opts<{ quick?: boolean; seeds: string; scenario: string; out: string }>();
const seeds = options.seeds.split(',').map(Number);
const names = options.scenario.split(',');
for (const name of names) {
  if (!SCENARIOS[name]) {
    process.stderr.write(`test:faults: unknown scenario ${name} (known: ${Object.keys(SCENARIOS).join(', ')})\n`);
    process.exit(2);
  }
}

const started = Date.now();
process.stderr.write('[faults] building the app (npm run build, into test/.tmp)…\n');
const app = await buildApp().catch((error: Error) => {
  process.stderr.write(`test:faults: ${error.message}\n`);
  process.exit(2);
});
process.on('exit', () => app.remove());
const results: ScenarioResult[] = [];
const save = () => {
  mkdirSync(options.out.split('/').slice(0, -1).join('/') || '.', { recursive: true });
  writeFileSync(options.out, `${JSON.stringify({ startedAt: new Date(started).toISOString(), durationMs: Date.now() - started, quick: Boolean(options.quick), node: process.version, results }, null, 2)}\n`);
};
for (const seed of seeds) {
  for (const name of names) {
    process.stderr.write(`[faults] ${name} (seed ${seed}${options.quick ? ', quick' : ''})…\n`);
    const scenarioStarted = Date.now();
    for (const result of await runScenario(name, { seed, quick: Boolean(options.quick), app })) {
      results.push(result);
      process.stderr.write(`[faults] ${result.scenario} (seed ${seed}): ${result.pass ? 'pass' : `FAIL: ${result.failures.join('; ')}`}\n`);
    }
    process.stderr.write(`[faults] ${name} (seed ${seed}): ${((Date.now() - scenarioStarted) / 1000).toFixed(0)} s\n`);
    save(); // after each scenario, so that an interrupted run keeps what it measured
  }
}

const rows = results.map((r) => [r.scenario, String(r.seed), r.pass ? 'pass' : 'FAIL', Object.entries(r.figures).map(([k, v]) => `${k}=${v}`).join(' '), r.failures.join('; ')]);
const header = ['scenario', 'seed', 'result', 'figures', 'missed'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
for (const line of [header, ...rows]) process.stdout.write(`${line.map((cell, i) => (i === line.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')}\n`);
save();
process.stdout.write(`${results.filter((r) => r.pass).length} of ${results.length} scenario runs passed in ${((Date.now() - started) / 1000).toFixed(0)} s; figures in ${options.out}\n`);
process.exit(results.every((r) => r.pass) ? 0 : 1);
