/**
 * The short version of `npm run test:faults`, so that CI guards the promise on every change:
 * a crash storm, SIGKILLs in each crash window, a provider outage and racing passes, with the
 * exactly-once audit against the provider's ledger at the end of each.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/jobs.js';
import { runCli } from './helpers/processes.js';
import { databaseUrl } from './helpers/db.js';

describe('npm run test:faults -- --quick', () => {
  it('passes every scenario: no duplicate, nothing missing, quiet after convergence', { timeout: 240_000 }, async () => {
    const out = join(REPO_ROOT, 'test', '.tmp', `faults-${process.pid}.json`);
    const result = await runCli([], { TEST_DATABASE_URL: databaseUrl('postgres') }, { shell: `node --import tsx scripts/faults/main.ts --quick --out '${out}'`, timeoutMs: 230_000 });
    const report = JSON.parse(readFileSync(out, 'utf8')) as { results: { scenario: string; pass: boolean; failures: string[]; figures: Record<string, number> }[] };
    expect(report.results.map((r) => r.scenario)).toEqual(['crash-storm', 'crash-windows', 'database-restart', 'provider-outage', 'racing-passes', 'random-cli-lines']);
    for (const r of report.results) {
      expect(r.failures, r.scenario).toEqual([]);
      if (r.scenario === 'random-cli-lines') continue;
      expect(r.figures.duplicates, r.scenario).toBe(0);
      expect(r.figures.missing, r.scenario).toBe(0);
    }
    expect(result.code, result.stdout + result.stderr).toBe(0);
  });
});
