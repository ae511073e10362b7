/**
 * Unknown outcomes, resolved by asking the provider (examples/returns/src/resolution.ts), under
 * the faults that make them: saved errors that the provider replays for ever, keys that expire
 * while an outcome is unknown, and a search that lags behind the effects it should find.
 *
 * Every scenario ends with the exactly-once audit, and with the criteria of docs/guarantees.md,
 * "Unknown outcomes": no item left for a person while the provider can answer lookups; no POST
 * reuses an expired key (the simulator's `expiredKeyReuses`); no new key version is sent while
 * the old one could still apply (`overlappingKeys`).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { queryRows, type Database } from '../../src/store/database.js';
import { REPO_ROOT } from '../../testkit/jobs.js';
import type { RunningProcess } from '../../testkit/processes.js';
import { SHIPPED_MAX_ATTEMPTS, audit, exactlyOnce, quietAfter, until, type Outcome, type ProviderHandle, type Shop, type Stage } from './harness.js';

type Scenario = (stage: Stage, options: { seed: number; quick: boolean }) => Promise<Outcome>;

/** Both clocks move this far in key-expiry: past the provider's key lifetime (24 h), and past our retirement of a key (20 h). */
const KEY_EXPIRY_SHIFT_HOURS = 25;

async function count(database: Database, query: ReturnType<typeof sql>): Promise<number> {
  return Number((await queryRows<{ n: number }>(database.db, query))[0]?.n ?? 0);
}

/** Returns still to do: not settled, not declined, and not parked (a dead item is left for a person, and counted as such). */
const OPEN_RETURNS = sql`SELECT count(*)::int AS n FROM returns r
  WHERE r.settled_at IS NULL
    AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.return_id = r.id AND p.state = 'declined')
    AND NOT EXISTS (SELECT 1 FROM reconciler.failures f WHERE f.reconciler = 'settle-returns' AND f.key = 'return:' || r.id AND f.dead_at IS NOT NULL)`;

/**
 * Waits until every return is settled, declined or parked; resolves with how long that took, or
 * with the criterion missed (and what was left, written next to the run's logs) after `timeoutMs`.
 */
async function settledOrParked(database: Database, timeoutMs: number, name: string): Promise<{ ms: number; failure?: string }> {
  const started = Date.now();
  try {
    await until(async () => (await count(database, OPEN_RETURNS)) === 0, 'every return settled, declined or parked', timeoutMs, 250);
    return { ms: Date.now() - started };
  } catch {
    const left = await queryRows(
      database.db,
      sql`SELECT r.id, f.attempts, f.last_error, f.next_attempt_at, to_jsonb(p) AS payment FROM returns r
          LEFT JOIN payments p ON p.return_id = r.id LEFT JOIN reconciler.failures f ON f.reconciler = 'settle-returns' AND f.key = 'return:' || r.id
          WHERE r.settled_at IS NULL AND f.dead_at IS NULL ORDER BY r.id LIMIT 20`,
    );
    const file = evidence(name, 'unconverged', left);
    return { ms: Date.now() - started, failure: `${await count(database, OPEN_RETURNS)} return(s) neither settled nor parked after ${timeoutMs / 1000} s (the first ones in ${file})` };
  }
}

/** Writes `rows` to test/.tmp/faults-logs/<name>-<what>.json; returns the path, relative to the repository. */
function evidence(name: string, what: string, rows: unknown): string {
  const dir = join(REPO_ROOT, 'test', '.tmp', 'faults-logs');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}-${what}.json`);
  writeFileSync(file, `${JSON.stringify(rows, null, 2)}\n`);
  return file.slice(REPO_ROOT.length + 1);
}

/**
 * Samples failure memory every 250 ms while the scenario runs: the items whose lookup missed an
 * effect the search did not show yet (the service then waits for the search lag, rather than
 * counting the absence), which a lookup-lag run must see.
 */
function watchMisses(database: Database): { stop(): Promise<Set<string>> } {
  const missed = new Set<string>();
  let stopped = false;
  const sampling = (async () => {
    while (!stopped) {
      const rows = await queryRows<{ key: string }>(
        database.db,
        sql`SELECT key FROM reconciler.failures WHERE reconciler = 'settle-returns' AND last_error LIKE '%not found at the provider yet%'`,
      ).catch(() => []);
      for (const row of rows) missed.add(row.key);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await sampling;
      return missed;
    },
  };
}

/**
 * The figures every scenario here reports, and its criteria: exactly once, quiet after
 * convergence, nothing parked, no expired key reused, no overlapping key versions.
 */
async function unknownOutcomes(
  stage: Stage,
  name: string,
  { shop, provider, env, ms, missed, failures: earlier = [] }: { shop: Shop; provider: ProviderHandle; env: Record<string, string>; ms: number; missed?: Set<string>; failures?: string[] },
): Promise<Outcome> {
  const result = await audit(shop.database, provider);
  const stats = await provider.stats();
  const [row] = await queryRows<{ lookups: number; adopted: number; versions: number; dead: number; missed_adopted: number }>(
    shop.database.db,
    sql`SELECT (SELECT count(*)::int FROM payments WHERE looked_up_at IS NOT NULL) AS lookups,
               (SELECT count(*)::int FROM payments WHERE known_by = 'lookup') AS adopted,
               (SELECT count(*)::int FROM payments WHERE key_version > 1) AS versions,
               (SELECT count(*)::int FROM reconciler.failures WHERE reconciler = 'settle-returns' AND dead_at IS NOT NULL) AS dead,
               (SELECT count(*)::int FROM payments WHERE known_by = 'lookup' AND 'return:' || return_id = ANY(${`{${[...(missed ?? [])].join(',')}}`}::text[])) AS missed_adopted`,
  );
  const dead = Number(row?.dead ?? 0);
  const failures = [...earlier, ...exactlyOnce(result)];
  if (dead > 0) {
    const parked = await queryRows<{ key: string; last_error: string }>(
      shop.database.db,
      sql`SELECT f.key, f.attempts, f.last_error, to_jsonb(p) AS payment FROM reconciler.failures f LEFT JOIN payments p ON 'return:' || p.return_id = f.key
          WHERE f.reconciler = 'settle-returns' AND f.dead_at IS NOT NULL ORDER BY f.key`,
    );
    const file = evidence(name, 'dead', { simulator: stats, items: parked });
    failures.push(`${dead} item(s) left for a person while the provider answers lookups (in ${file}), e.g. ${parked[0]!.key}: ${parked[0]!.last_error.slice(0, 300)}`);
  }
  if (stats.expiredKeyReuses > 0) failures.push(`${stats.expiredKeyReuses} POST(s) reused an expired key`);
  if (stats.overlappingKeys > 0) failures.push(`${stats.overlappingKeys} POST(s) sent a new key version while the old one could still apply`);
  failures.push(...(await quietAfter(stage, env, () => provider.stats())));
  return {
    failures,
    figures: {
      returns: result.returns,
      needing: result.needingEffect,
      savedErrors: stats.savedErrors,
      lookups: Number(row?.lookups ?? 0),
      adopted: Number(row?.adopted ?? 0),
      newKeyVersions: Number(row?.versions ?? 0),
      dead,
      duplicates: result.duplicates,
      missing: result.missing,
      expiredKeyReuses: stats.expiredKeyReuses,
      overlappingKeys: stats.overlappingKeys,
      convergenceS: Math.round(ms / 100) / 10,
      searches: stats.searches,
      ...(missed ? { lookupMisses: missed.size, missedThenAdopted: Number(row?.missed_adopted ?? 0) } : {}),
      posts: stats.posts,
      replayed: stats.replayed,
      /** The machine's 1-minute load average at the end (2 cores): the times move with it. */
      load: Number(loadavg()[0]!.toFixed(1)),
    },
  };
}

/**
 * saved-errors: the provider saves 2% of its 500s under their key and replays them for ever,
 * half of them after it applied the effect (Stripe does both). settle-returns as it ships (12
 * attempts) on the fault runs' schedule and backoff, two replicas. Each such item is looked up
 * after its second replay: adopted if the effect is there, moved to a new key version if not.
 */
export const savedErrors: Scenario = async (stage, { seed, quick }) => {
  const returns = quick ? 400 : 5_000;
  const shop = await stage.shop(returns, seed);
  const provider = await stage.provider(seed, { latencyMs: [5, 20], savedErrorRate: 0.02, savedErrorAppliedShare: 0.5, searchLagMs: 1_000 });
  const env = stage.env(shop.url, provider, stage.jobs('*/2 * * * * *', { maxAttempts: SHIPPED_MAX_ATTEMPTS }), { PAYMENT_PROVIDER_SEARCH_LAG: '2s' });
  const daemons = [stage.daemon(env), stage.daemon(env)];
  const { ms, failure } = await settledOrParked(shop.database, quick ? 120_000 : 600_000, `saved-errors-${seed}`);
  await stopAll(daemons);
  return unknownOutcomes(stage, `saved-errors-${seed}`, { shop, provider, env, ms, failures: failure ? [failure] : [] });
};

/**
 * key-expiry: outcomes left unknown by an outage (30% of calls applied and then unanswered; then
 * the provider stalls, so that calls are lost before they apply, and goes down), then 25 hours
 * pass on both clocks, past the provider's key lifetime (24 h): the simulator's by its clock, the
 * shop's by every payment timestamp moved back as far. Then the provider comes back. No unknown
 * item may send its old key again (the provider would run it as new); each is looked up, and
 * adopted, or sent under a new key version once its absence is confirmed.
 */
export const keyExpiry: Scenario = async (stage, { seed, quick }) => {
  const returns = quick ? 250 : 2_000;
  const shop = await stage.shop(returns, seed);
  const provider = await stage.provider(seed, { latencyMs: [20, 50], timeoutRate: 0.3, searchLagMs: 1_000 });
  const env = stage.env(shop.url, provider, stage.jobs('*/2 * * * * *'), { PAYMENT_PROVIDER_SEARCH_LAG: '2s' });
  const db = shop.database;
  const sent = () => count(db, sql`SELECT count(*)::int AS n FROM payments WHERE first_sent_at IS NOT NULL`);

  // 1. The outage, once a third of the returns have been sent.
  const before = stage.daemon(env);
  await until(async () => (await sent()) >= returns / 3, 'a third of the returns sent', 60_000, 100);
  provider.proxy.stall(); // calls in flight and sent now are lost before they reach the provider: unknown, not applied
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  provider.proxy.cut(); // down: every connection ends, new ones are refused
  provider.proxy.resume();
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  await before.kill('SIGTERM');
  const ledger = new Set((await provider.ledger()).map((e) => e.returnId));
  const unknown = await queryRows<{ return_id: number }>(db.db, sql`SELECT return_id FROM payments WHERE state = 'unknown' OR (state = 'pending' AND first_sent_at IS NOT NULL)`);
  const unknownApplied = unknown.filter((p) => ledger.has(String(p.return_id))).length;

  // 2. 25 hours pass, on both clocks.
  await provider.advanceClock(KEY_EXPIRY_SHIFT_HOURS * 3_600);
  const shift = sql`${`${KEY_EXPIRY_SHIFT_HOURS} hours`}::interval`;
  await queryRows(
    db.db,
    sql`UPDATE payments SET first_sent_at = first_sent_at - ${shift}, last_sent_at = last_sent_at - ${shift}, unknown_since = unknown_since - ${shift},
                            key_spent_at = key_spent_at - ${shift}, looked_up_at = looked_up_at - ${shift}`,
  );

  // 3. Recovery.
  await provider.setFaults({ timeoutRate: 0 });
  provider.proxy.restore();
  const after = [stage.daemon(env), stage.daemon(env)];
  const { ms, failure } = await settledOrParked(db, quick ? 120_000 : 300_000, `key-expiry-${seed}`);
  await stopAll(after);
  const outcome = await unknownOutcomes(stage, `key-expiry-${seed}`, { shop, provider, env, ms, failures: failure ? [failure] : [] });
  if (unknown.length === 0) outcome.failures.push('the outage left no outcome unknown: the scenario tested nothing');
  return { ...outcome, figures: { ...outcome.figures, unknownAtOutage: unknown.length, unknownApplied } };
};

/**
 * lookup-lag: the provider's search shows an effect only 8 s after it was created, and the
 * daemons assume 10 s (PAYMENT_PROVIDER_SEARCH_LAG). Saved errors (10%, half applied) and calls
 * applied then unanswered (5%) make lookups. A saved error is looked up after its second replay,
 * two passes after it was sent: a lag of a few seconds would be over by then, 8 s is not, so
 * lookups miss effects applied a moment ago. Such a miss must wait out the assumed lag, not count
 * as an absence (a new key version then would apply the effect twice).
 */
export const lookupLag: Scenario = async (stage, { seed, quick }) => {
  const returns = quick ? 300 : 3_000;
  const shop = await stage.shop(returns, seed);
  const provider = await stage.provider(seed, { latencyMs: [5, 20], timeoutRate: 0.05, savedErrorRate: 0.1, savedErrorAppliedShare: 0.5, searchLagMs: 8_000 });
  const env = stage.env(shop.url, provider, stage.jobs('*/2 * * * * *', { maxAttempts: SHIPPED_MAX_ATTEMPTS }), { PAYMENT_PROVIDER_SEARCH_LAG: '10s' });
  const watch = watchMisses(shop.database);
  stage.defer(() => void watch.stop());
  const daemons = [stage.daemon(env), stage.daemon(env)];
  const { ms, failure } = await settledOrParked(shop.database, quick ? 120_000 : 600_000, `lookup-lag-${seed}`);
  const missed = await watch.stop();
  await stopAll(daemons);
  const outcome = await unknownOutcomes(stage, `lookup-lag-${seed}`, { shop, provider, env, ms, missed, failures: failure ? [failure] : [] });
  if (Number(outcome.figures.missedThenAdopted) === 0) outcome.failures.push('no lookup missed an applied effect that the search did not show yet (and adopted it later): the scenario tested less than it should');
  return outcome;
};

async function stopAll(daemons: RunningProcess[]): Promise<void> {
  await Promise.all(daemons.map((daemon) => daemon.kill('SIGTERM')));
}
