/**
 * `npm run bench -- --quick` runs end to end, so the harness cannot rot. Timings are not
 * asserted here (a shared machine is noisy): the harness reports them against their goals.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/jobs.js';
import { runCli } from './helpers/processes.js';
import { databaseUrl } from './helpers/db.js';

describe('npm run bench -- --quick', () => {
  it('measures every case and writes the JSON and the markdown table', { timeout: 180_000 }, async () => {
    const out = join(REPO_ROOT, 'test', '.tmp', `bench-${process.pid}.json`);
    const result = await runCli([], { TEST_DATABASE_URL: databaseUrl('postgres') }, { shell: `node --import tsx scripts/bench/main.ts --quick --out '${out}'`, timeoutMs: 170_000 });
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(readFileSync(out, 'utf8')) as { runs: number; results: { case: string; figure: string; median: number; min: number; max: number; goal: string }[] };
    expect([...new Set(report.results.map((r) => r.case))]).toEqual(['scan cost (0 items to do)', 'pass latency', 'idle footprint']);
    for (const r of report.results) {
      expect(r.min, r.figure).toBeLessThanOrEqual(r.median);
      expect(r.median, r.figure).toBeLessThanOrEqual(r.max);
      if (!r.figure.startsWith('RSS growth')) expect(r.median, r.figure).toBeGreaterThan(0);
      expect(r.goal, r.figure).not.toBe('');
    }
    const table = readFileSync(out.replace(/\.json$/, '.md'), 'utf8');
    expect(table.split('\n').filter((line) => line.startsWith('| scan cost')).length).toBe(3);
    expect(result.stdout).toContain('| pass latency |');
  });
});
