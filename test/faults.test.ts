/**
 * The short version of `npm run test:faults`, so that CI guards the promise on every change:
 * every scenario (crash storm, crash windows, database restart, bad input, provider outage,
 * racing passes, random CLI lines, secrets, issue 7's NOTIFY storm, LISTEN session killed,
 * partition holder killed and partition count changed, connection faults below the driver, and unknown
 * outcomes resolved by lookups: saved errors, expired keys, a lagging search) at a small scale, with the
 * exactly-once audit against the provider's ledger wherever money moves.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/jobs.js';
import { runCli } from './helpers/processes.js';
import { databaseUrl } from './helpers/db.js';

describe('npm run test:faults -- --quick', () => {
  it('passes every scenario: no duplicate, nothing missing, quiet after convergence', { timeout: 900_000 }, async () => {
    const out = join(REPO_ROOT, 'test', '.tmp', `faults-${process.pid}.json`);
    const result = await runCli([], { TEST_DATABASE_URL: databaseUrl('postgres') }, { shell: `node --import ./bin/register.js scripts/faults/main.ts --quick --out '${out}'`, timeoutMs: 890_000 });
    const report = JSON.parse(readFileSync(out, 'utf8')) as { results: { scenario: string; pass: boolean; failures: string[]; figures: Record<string, number> }[] };
    const scenarios = report.results.map((r) => r.scenario.replace(/: .*/, ''));
    expect([...new Set(scenarios)]).toEqual(['crash-storm', 'crash-windows', 'database-restart', 'bad-input', 'provider-outage', 'racing-passes', 'random-cli-lines', 'secrets', 'notify-storm', 'listen-killed', 'partition-holder-killed', 'repartition', 'connection-faults', 'saved-errors', 'key-expiry', 'lookup-lag']);
    expect(scenarios.filter((name) => name === 'bad-input')).toHaveLength(9); // one line per case
    for (const r of report.results) {
      expect(r.failures, r.scenario).toEqual([]);
      expect(r.pass, r.scenario).toBe(true);
      if ('duplicates' in r.figures) expect([r.figures.duplicates, r.figures.missing], r.scenario).toEqual([0, 0]);
    }
    expect(report.results.filter((r) => 'duplicates' in r.figures).length).toBeGreaterThanOrEqual(9);
    // Connection faults (the 2-replica case): the faults happened, and the replicas worked again within 2 × LEASE_TTL + a period.
    const connections = report.results.find((r) => r.scenario === 'connection-faults: 2 replicas');
    expect(connections, 'the connection-faults line').toBeDefined();
    const f = connections!.figures;
    expect(f.resets, 'resets').toBeGreaterThanOrEqual(2);
    expect(f.stallMs, 'stall').toBeGreaterThanOrEqual(4_000);
    expect(f.recoveryMs, 'recovery').toBeLessThanOrEqual(8_000);
    expect(f.idleInTransaction, 'idle in transaction').toBe(0);
    expect(f.exitMs, 'exit after SIGTERM').toBeLessThanOrEqual(7_500);
    // Unknown outcomes: nothing left for a person, no expired key sent again, no key version sent while the old one could apply.
    const unknown = (name: string) => {
      const line = report.results.find((r) => r.scenario === name);
      expect(line, name).toBeDefined();
      const u = line!.figures;
      expect([u.dead, u.duplicates, u.missing, u.expiredKeyReuses, u.overlappingKeys], `${name}: dead, duplicates, missing, expiredKeyReuses, overlappingKeys`).toEqual([0, 0, 0, 0, 0]);
      return u;
    };
    const saved = unknown('saved-errors');
    expect(saved.savedErrors, 'saved-errors: saved 500s').toBeGreaterThan(0);
    expect(saved.lookups, 'saved-errors: lookups').toBeGreaterThan(0);
    const expiry = unknown('key-expiry');
    expect(expiry.unknownAtOutage, 'key-expiry: outcomes unknown at the outage').toBeGreaterThan(0);
    expect(expiry.newKeyVersions, 'key-expiry: new key versions').toBeGreaterThan(0);
    const lag = unknown('lookup-lag');
    expect(lag.missedThenAdopted, 'lookup-lag: effects a lookup missed (the search lagging), then adopted').toBeGreaterThan(0);
    expect(result.code, result.stdout + result.stderr).toBe(0);
  });
});
