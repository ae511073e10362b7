/**
 * The fault scenarios of `npm run test:faults`. Each returns its figures and whether it met
 * its pass criterion; every one ends with the exactly-once audit against the provider's ledger.
 */
import { loadavg } from 'node:os';
import { sql } from 'drizzle-orm';
import { dice } from '../../examples/returns/src/dice.js';
import { queryRows, type Database } from '../../src/store/database.js';
import { Stage, audit, auditFigures, converge, exactlyOnce, quietAfter, unsettledReturns, until, type Outcome } from './harness.js';
import type { App } from './app.js';
import { badInput } from './bad-input.js';
import { secrets } from './secrets.js';
import { listenKilled, notifyStorm, partitionHolderKilled, repartition } from './partitions.js';
import { connectionFaults } from './connections.js';
import { keyExpiry, lookupLag, savedErrors } from './lookups.js';

export interface ScenarioResult {
  scenario: string;
  seed: number;
  pass: boolean;
  /** The criteria it missed, in words. */
  failures: string[];
  figures: Record<string, number | string>;
}

export interface ScenarioOptions {
  seed: number;
  quick: boolean;
  app: App;
}

/** A scenario measures one outcome, or several cases that each get their own line (`bad-input: invalid cron`). */
type Scenario = (stage: Stage, options: ScenarioOptions) => Promise<Outcome | { cases: Record<string, Outcome> }>;

/** 1. Crash storm: `replicas` replicas, one SIGKILLed and restarted every 2 s while the provider fails 20% and loses 5% of answers. */
const crashStorm = (replicaCount: number): Scenario => async (stage, { seed, quick }) => {
  const returns = quick ? 300 : 10_000;
  const stormMs = quick ? 10_000 : 60_000;
  const killEveryMs = 2_000;
  // The period the convergence criterion counts in: the shipped settle-returns schedule, every
  // minute. Concurrency 50 for the drain (one call in 20 is applied and then loses its answer:
  // the simulator drops the connection at once, the client sees a socket error, not its 2 s
  // timeout). The quick run keeps 10: with 300 returns, 50 items in flight at each kill would be
  // replayed often enough to dominate POSTs per settlement.
  const periodMs = 60_000;
  const roll = dice(seed);
  const shop = await stage.shop(returns, seed);
  const provider = await stage.provider(seed, { errorRate: 0.2, timeoutRate: 0.05, latencyMs: [20, 50] });
  const env = stage.env(shop.url, provider, stage.jobs('* * * * *', { concurrency: quick ? 10 : 50 }));
  const replicas = Array.from({ length: replicaCount }, () => stage.daemon(env));
  let kills = 0;
  const watch = watchFailures(shop.database);
  stage.defer(() => watch.stop());
  const stormEnds = Date.now() + stormMs;
  let peakBacklog = 0;
  while (Date.now() < stormEnds) {
    await new Promise((resolve) => setTimeout(resolve, killEveryMs));
    peakBacklog = Math.max(peakBacklog, await unsettledReturns(shop.database));
    const victim = Math.floor(roll() * replicas.length);
    await replicas[victim]!.kill('SIGKILL');
    kills++;
    replicas[victim] = stage.daemon(env);
  }
  watch.stormEnded();
  const backlogAtStormEnd = await unsettledReturns(shop.database);
  const postsAtStormEnd = (await provider.stats()).posts;
  const { audit: result, ms } = await converge(shop.database, provider, 600_000).finally(() => watch.stop());
  const stats = await provider.stats();
  const settlements = result.needingEffect;
  const postsPerSettlement = settlements === 0 ? 0 : stats.posts / settlements;
  const [passes] = await queryRows<{ n: number; skipped: number }>(
    shop.database.db,
    sql`SELECT (SELECT count(*)::int FROM reconciler.runs) AS n, (SELECT coalesce(sum(skipped_ticks), 0)::int FROM reconciler.state) AS skipped`,
  );
  const failures = [...exactlyOnce(result), ...(await quietAfter(stage, env, () => provider.stats()))];
  // Both runs: the last work may wait for the safety-net tick, when the kills took the process that would have retried it.
  const convergenceBound = 2 * periodMs;
  if (ms > convergenceBound) failures.push(`converged ${(ms / 1000).toFixed(1)} s after the storm (criterion: within ${convergenceBound / 1000} s)`);
  if (postsPerSettlement > 1.6) failures.push(`${postsPerSettlement.toFixed(2)} provider POSTs per settlement (criterion: at most 1.6)`);
  return {
    failures,
    figures: {
      ...auditFigures(result), replicas: replicaCount, kills, convergenceMs: ms, postsPerSettlement: Number(postsPerSettlement.toFixed(2)), passes: Number(passes?.n ?? 0),
      skippedTicks: Number(passes?.skipped ?? 0), peakBacklog, backlogAtStormEnd, postsPerSecondAfterStorm: Math.round((stats.posts - postsAtStormEnd) / (ms / 1_000)), ...(await watch.figures()),
    },
  };
};

/**
 * What the returns of a storm waited for. From the storm's start to convergence, failure memory
 * is sampled every second: the most attempts an item reached, the longest wait recorded between
 * two attempts, and the failed attempts seen by kind of error. After it: the last return settled
 * (its provider sends, when) and the passes after the storm.
 */
function watchFailures(database: Database): { stormEnded(): void; stop(): void; figures(): Promise<Record<string, number | string>> } {
  let peakAttempts = 0;
  let longestBackoffMs = 0;
  /** Failed attempts seen (key and attempt number), by kind of error. */
  const seen = new Map<string, Set<string>>();
  let stopped = false;
  let stormEnd: Promise<string> | undefined;
  const sample = async () => {
    const rows = await queryRows<{ key: string; attempts: number; backoff: number; kind: string }>(
      database.db,
      sql`SELECT key, attempts, (extract(epoch FROM next_attempt_at - last_failed_at) * 1000)::float8 AS backoff,
                 CASE WHEN last_error LIKE '%no answer within%' THEN 'provider timeout' WHEN last_error LIKE 'timed out after%' THEN 'item timeout'
                      ELSE coalesce('provider ' || substring(last_error FROM 'POST /v1/[a-z]+: ([0-9]{3}|[A-Z_]+)'), left(last_error, 60)) END AS kind
          FROM reconciler.failures WHERE dead_at IS NULL`,
    );
    for (const row of rows) {
      peakAttempts = Math.max(peakAttempts, Number(row.attempts));
      longestBackoffMs = Math.max(longestBackoffMs, Number(row.backoff));
      const kind = row.kind;
      const keys = seen.get(kind) ?? new Set<string>();
      keys.add(`${row.key}#${row.attempts}`);
      seen.set(kind, keys);
    }
  };
  /** The machine's 1-minute load average, sampled with failure memory: the figures depend on it (2 shared cores). */
  const loads: number[] = [];
  const sampling = (async () => {
    while (!stopped) {
      loads.push(loadavg()[0]!);
      await sample().catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
  })();
  return {
    stormEnded: () => void (stormEnd = queryRows<{ at: string }>(database.db, sql`SELECT now()::text AS at`).then(([row]) => row!.at)),
    stop: () => void (stopped = true),
    async figures() {
      await sampling;
      const end = await stormEnd!;
      const [last] = await queryRows<{ id: number; sends: number | null; after: number }>(
        database.db,
        sql`SELECT r.id, p.attempts AS sends, (extract(epoch FROM r.settled_at - ${end}::timestamptz) * 1000)::float8 AS after
            FROM returns r LEFT JOIN payments p ON p.return_id = r.id ORDER BY r.settled_at DESC NULLS FIRST LIMIT 1`,
      );
      const [sends] = await queryRows<{ max: number | null }>(database.db, sql`SELECT max(attempts)::int AS max FROM payments`);
      const runs = await queryRows<{ trigger: string; at: number; found: number; changed: number; failed: number; deferred: number; status: string }>(
        database.db,
        sql`SELECT trigger, status, (extract(epoch FROM started_at - ${end}::timestamptz))::float8 AS at, found, changed, failed, deferred
            FROM reconciler.runs WHERE coalesce(finished_at, now()) >= ${end}::timestamptz ORDER BY started_at`,
      );
      const passesAfter = runs
        .map((r) => `${r.trigger}@${Number(r.at).toFixed(0)}s:${r.status === 'abandoned' ? 'abandoned' : `${r.changed}/${r.found}${Number(r.failed) ? ` failed ${r.failed}` : ''}${Number(r.deferred) ? ` deferred ${r.deferred}` : ''}`}`)
        .join(' ');
      return {
        meanLoad: Number((loads.reduce((sum, l) => sum + l, 0) / Math.max(1, loads.length)).toFixed(1)),
        peakAttempts, longestBackoffMs: Math.round(longestBackoffMs), maxSendsPerReturn: Number(sends?.max ?? 0),
        failedAttemptsSeen: [...seen].map(([kind, keys]) => `${kind}: ${keys.size}`).join(', '),
        lastReturn: Number(last?.id ?? 0), lastReturnSends: Number(last?.sends ?? 0), lastSettledAfterStormMs: Math.round(Number(last?.after ?? 0)), passesAfterStorm: passesAfter,
      };
    },
  };
}

/**
 * 2. Exact crash windows: SIGKILL before the call, after the provider applied it, and during
 * the recording transaction. The three windows run side by side, each on its own shop and
 * provider, since each kill is a process start.
 */
const crashWindows: Scenario = async (stage, { seed, quick }) => {
  const killsPerWindow = quick ? 3 : 200;
  const perWindow = quick ? 10 : 60;
  const windows = ['before-call', 'after-call', 'during-record'] as const;
  // Each window's provider first, then its shop, one window after another: a shop is charged at checkout at the latest provider.
  const stages = [];
  for (const [index, window] of windows.entries()) {
    const provider = await stage.provider(seed + index, { latencyMs: [0, 5] });
    stages.push({ window, provider, shop: await stage.shop(perWindow, seed + index) });
  }
  const outcomes = await Promise.all(
    stages.map(async ({ window, provider, shop }) => {
      const env = stage.env(shop.url, provider, stage.jobs('0 0 1 1 *'));
      let kills = 0;
      for (let i = 0; i < killsPerWindow; i++) {
        const result = await stage.run(['run', 'settle-returns', '--wait'], { ...env, RECONCILER_CRASH_AT: window });
        if (result.signal === 'SIGKILL') kills++;
        else if (result.code === 0) break; // nothing left to crash on
        // The killed process's lease would lapse after LEASE_TTL; let that time pass on the database clock.
        await queryRows(shop.database.db, sql`UPDATE reconciler.state SET lease_expires_at = now() - interval '1 millisecond' WHERE holder_id IS NOT NULL`);
        // Fresh returns now and then, so that the window keeps meeting new intents, not only replays.
        if (i % 20 === 19) await shop.seed(5, seed * 1_000 + i);
      }
      await until(async () => (await stage.run(['run', 'settle-returns', '--wait'], env)).code === 0 && (await audit(shop.database, provider)).unsettled === 0, 'convergence', 120_000);
      const result = await audit(shop.database, provider);
      return { window, kills, result, failures: [...exactlyOnce(result), ...(await quietAfter(stage, env, () => provider.stats()))], replayed: (await provider.stats()).replayed };
    }),
  );
  const figures: Record<string, number | string> = {};
  for (const key of ['returns', 'needing', 'effects', 'duplicates', 'missing', 'declined'] as const) {
    figures[key] = outcomes.reduce((sum, o) => sum + Number(auditFigures(o.result)[key]), 0);
  }
  for (const o of outcomes) figures[`kills ${o.window}`] = o.kills;
  figures.replayed = outcomes.reduce((sum, o) => sum + o.replayed, 0);
  return { failures: outcomes.flatMap((o) => o.failures.map((f) => `${o.window}: ${f}`)), figures };
};

/** Polls a daemon's /readyz until its status is `status`; resolves with how long that took. */
async function readyzBecomes(url: string, status: 200 | 503, timeoutMs: number): Promise<number> {
  const started = Date.now();
  let last = 'no answer yet';
  await until(async () => {
    const asked = Date.now();
    const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(timeoutMs) }).catch((error: Error) => error);
    last = response instanceof Error ? `${response.message} after ${Date.now() - asked} ms` : `${response.status} after ${Date.now() - asked} ms: ${await response.text()}`;
    return !(response instanceof Error) && response.status === status;
  }, `/readyz ${status} at ${url}`, timeoutMs).catch((error: Error) => {
    throw new Error(`${error.message} (last answer: ${last})`);
  });
  return Date.now() - started;
}

/**
 * 3. Database restart: PostgreSQL stops for 5 s in the middle of a pass, twice. The daemons
 * stay up, say so once per pass (not once per item), turn /readyz red and back, and converge.
 */
const databaseRestart: Scenario = async (stage, { seed, quick }) => {
  const server = await stage.ownedPostgres();
  const shop = await stage.shop(quick ? 400 : 3_000, seed, server.url);
  const provider = await stage.provider(seed, { latencyMs: [20, 50] });
  const env = stage.env(shop.url, provider, stage.jobs('*/2 * * * * *'));
  const daemons = [stage.daemon(env), stage.daemon(env)];
  const opsUrls = await Promise.all(daemons.map(async (d) => String((await d.waitForEvent('http:listening', {}, 30_000)).url)));
  const restarts = quick ? 1 : 2;
  const downMs = 5_000;
  let redMs = 0;
  let greenMs = 0;
  const unsettled = () => unsettledReturns(shop.database);
  for (let i = 0; i < restarts; i++) {
    // In the middle of a pass: some returns settled since the last restart, some still to do.
    const before = await unsettled();
    await until(async () => (await unsettled()) < before - 40, 'a pass to be under way', 60_000);
    await server.stop();
    const stoppedAt = Date.now();
    redMs = Math.max(redMs, ...(await Promise.all(opsUrls.map((url) => readyzBecomes(url, 503, downMs))).catch((error: Error) => {
      const dead = daemons.find((d) => d.child.exitCode !== null || d.child.signalCode !== null);
      throw dead ? new Error(`a daemon exited (${dead.child.exitCode ?? dead.child.signalCode}) when the database stopped: ${dead.stderr.trim().split('\n').filter((l) => !/^\s+at /.test(l)).slice(-12).join(' / ')} ${dead.stdoutText.slice(-2).join(' / ')}`) : error;
    })));
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, stoppedAt + downMs - Date.now())));
    await server.start();
    greenMs = Math.max(greenMs, ...(await Promise.all(opsUrls.map((url) => readyzBecomes(url, 200, 30_000)))));
  }
  const { audit: result, ms } = await converge(shop.database, provider, 180_000);
  const failures = [...exactlyOnce(result), ...(await quietAfter(stage, env, () => provider.stats()))];
  const exited = daemons.filter((d) => d.child.exitCode !== null || d.child.signalCode !== null).length;
  if (exited > 0) failures.push(`${exited} daemon(s) exited during the outage`);
  // Once per pass: no provider fault here, so every warning of a pass is about the outage.
  let worstPass = 0;
  let outageLines = 0;
  const messages = new Set<string>();
  for (const daemon of daemons) {
    const perPass = new Map<unknown, number>();
    for (const line of daemon.lines.filter((l) => l.level >= 40)) {
      outageLines++;
      messages.add(line.msg.slice(0, 120));
      if (line.passId !== undefined) perPass.set(line.passId, (perPass.get(line.passId) ?? 0) + 1);
    }
    worstPass = Math.max(worstPass, ...perPass.values());
  }
  if (worstPass > 1) failures.push(`a pass logged ${worstPass} warnings or errors about the outage (criterion: one per pass): ${[...messages].slice(0, 6).join(' | ')}`);
  return { failures, figures: { ...auditFigures(result), restarts, downMs, readyzRedAfterMs: redMs, readyzGreenAfterMs: greenMs, outageLines, worstPassLines: worstPass, convergenceMs: ms } };
};

/** 4. Provider outage: the provider refuses every connection for a while; items back off, no hot loop, all converge after. */
const providerOutage: Scenario = async (stage, { seed, quick }) => {
  const returns = quick ? 150 : 1_000;
  const outageMs = quick ? 5_000 : 30_000;
  const shop = await stage.shop(returns, seed);
  const provider = await stage.provider(seed, { latencyMs: [50, 100] });
  const env = stage.env(shop.url, provider, stage.jobs('*/2 * * * * *'));
  const daemon = stage.daemon(env);
  await daemon.waitFor((l) => l.reconciler === 'settle-returns' && typeof l.passId === 'number', 'a pass to start', 30_000).catch(() => undefined);
  provider.proxy.cut();
  const pending = await unsettledReturns(shop.database);
  await new Promise((resolve) => setTimeout(resolve, outageMs));
  const attempts = provider.proxy.attemptsWhileCut;
  provider.proxy.restore();
  const { audit: result, ms } = await converge(shop.database, provider, 120_000);
  // Bounded: backoff (0.5 s doubling to 4 s) allows about one attempt per pending item per backoff step.
  const bound = Math.max(1, pending) * (2 + Math.ceil(outageMs / 4_000) + 3);
  const failures = [...exactlyOnce(result), ...(await quietAfter(stage, env, () => provider.stats()))];
  if (attempts > bound) failures.push(`${attempts} connection attempts during a ${outageMs / 1000} s outage (bound ${bound}): a hot loop`);
  return { failures, figures: { ...auditFigures(result), pendingAtOutage: pending, outageMs, attemptsDuringOutage: attempts, attemptBound: bound, convergenceMs: ms } };
};

/** 5. Manual passes (`reconciler run`) in a loop while two daemons run on a schedule: one pass at a time, no duplicate. */
const racingPasses: Scenario = async (stage, { seed, quick }) => {
  const shop = await stage.shop(quick ? 200 : 2_000, seed);
  const provider = await stage.provider(seed, { latencyMs: [5, 20], errorRate: 0.1 });
  const env = stage.env(shop.url, provider, stage.jobs('*/2 * * * * *'));
  stage.daemon(env);
  stage.daemon(env);
  const manual = quick ? 4 : 20;
  let locked = 0;
  for (let i = 0; i < manual; i++) {
    const result = await stage.run(['run', 'settle-returns'], env);
    if (result.code === 3) locked++;
  }
  const { audit: result } = await converge(shop.database, provider, 180_000);
  const runs = await queryRows<{ started: number; finished: number | null; status: string }>(
    shop.database.db,
    sql`SELECT (extract(epoch FROM started_at) * 1000)::float8 AS started, (extract(epoch FROM finished_at) * 1000)::float8 AS finished, status FROM reconciler.runs ORDER BY started_at`,
  );
  let overlaps = 0;
  for (let i = 1; i < runs.length; i++) {
    const previous = runs[i - 1]!;
    if (previous.status !== 'abandoned' && previous.finished !== null && Number(runs[i]!.started) < Number(previous.finished)) overlaps++;
  }
  const failures = [...exactlyOnce(result), ...(await quietAfter(stage, env, () => provider.stats()))];
  if (overlaps > 0) failures.push(`${overlaps} overlapping pass(es) in the history`);
  return { failures, figures: { ...auditFigures(result), manualRuns: manual, manualLocked: locked, passes: runs.length, overlaps } };
};

/** 6 (part). Random CLI argument lines: exit codes only 0, 1, 2 or 3, and never a stack trace on stderr. */
const randomCliLines: Scenario = async (stage, { seed, quick }) => {
  const lines = quick ? 20 : 1_000;
  const roll = dice(seed);
  const words = ['run', 'list', 'history', 'failures', 'retry', 'clear', 'migrate', 'config', '--all', '--dry-run', '--key', '--json', '--wait', '--limit', '-1', '0',
    '99999999999', 'settle-returns', 'nope', '--help', '-h', '--version', '--dead', '', ' ', '--', '-', "'; DROP TABLE returns;--", 'ü', '--limit=abc', '--key=', '%s%n',
    '{}', '[', 'x'.repeat(5_000), '--unknown', 'help', 'return:1'];
  const shop = await stage.shop(5, seed);
  const provider = await stage.provider(seed, {});
  const env = stage.env(shop.url, provider, stage.jobs('0 0 1 1 *'));
  const codes: Record<string, number> = {};
  const failures: string[] = [];
  // Drawn up front, so the lines depend on the seed only; then run by 3 workers (each line is a process start).
  const argLines = Array.from({ length: lines }, () => Array.from({ length: Math.floor(roll() * 4) }, () => words[Math.floor(roll() * words.length)]!));
  const worker = async () => {
    for (let args = argLines.shift(); args; args = argLines.shift()) {
      const result = await stage.run(args, env);
      const code = String(result.code ?? result.signal);
      codes[code] = (codes[code] ?? 0) + 1;
      if (![0, 1, 2, 3].includes(result.code ?? -1)) failures.push(`\`reconciler ${args.join(' ').slice(0, 80)}\` exited ${code}`);
      if (/\n\s+at /.test(result.stderr)) failures.push(`\`reconciler ${args.join(' ').slice(0, 80)}\` printed a stack trace`);
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  const [before] = await queryRows<{ n: number }>(shop.database.db, sql`SELECT count(*)::int AS n FROM returns`);
  if (Number(before?.n) !== 5) failures.push('a random command line lost data');
  return { failures: failures.slice(0, 5), figures: { lines, ...Object.fromEntries(Object.entries(codes).map(([k, v]) => [`exit ${k}`, v])) } };
};

export const SCENARIOS: Record<string, Scenario> = {
  'crash-storm': crashStorm(3),
  'crash-storm-5': crashStorm(5),
  'crash-windows': crashWindows,
  'database-restart': databaseRestart,
  'bad-input': async (stage, { seed, quick }) => ({ cases: await badInput(stage, seed, quick) }),
  'provider-outage': providerOutage,
  'racing-passes': racingPasses,
  'random-cli-lines': randomCliLines,
  secrets: (stage, { seed, quick }) => secrets(stage, seed, quick),
  'notify-storm': notifyStorm,
  'listen-killed': listenKilled,
  'partition-holder-killed': partitionHolderKilled,
  repartition,
  'connection-faults': connectionFaults,
  'saved-errors': savedErrors,
  'key-expiry': keyExpiry,
  'lookup-lag': lookupLag,
};

/** Scenarios run only when named (`--scenario crash-storm-5`): variants of a default one, too long to run every time. */
const ON_REQUEST = new Set(['crash-storm-5']);
/** What `npm run test:faults` runs without `--scenario`. */
export const DEFAULT_SCENARIOS = Object.keys(SCENARIOS).filter((name) => !ON_REQUEST.has(name));

export async function runScenario(name: string, options: ScenarioOptions): Promise<ScenarioResult[]> {
  const stage = new Stage(options.app);
  const started = Date.now();
  const line = (scenario: string, { failures, figures }: Outcome): ScenarioResult => ({ scenario, seed: options.seed, pass: failures.length === 0, failures, figures });
  try {
    const outcome = await SCENARIOS[name]!(stage, options);
    const durationMs = Date.now() - started;
    if ('cases' in outcome) return Object.entries(outcome.cases).map(([label, c]) => line(`${name}: ${label}`, { ...c, figures: { ...c.figures, durationMs } }));
    return [line(name, { ...outcome, figures: { ...outcome.figures, durationMs } })];
  } catch (error) {
    return [line(name, { failures: [`broke off: ${(error as Error).message}`], figures: { durationMs: Date.now() - started } })];
  } finally {
    await stage.teardown();
  }
}
