/**
 * The fault scenarios of issue 7: wake-on-change under a NOTIFY storm and with its LISTEN
 * session killed mid-storm, a partition holder killed with SIGKILL mid-drain, and the
 * partition count changed between deploys (4 → 8) with passes in flight. Each ends with the
 * exactly-once audit against the provider's ledger.
 *
 * The wake scenarios schedule settle-returns once a year: only wakes (and the pass that
 * follows a reconnect) can find the returns, so convergence proves the signal path.
 */
import pg from 'pg';
import { sql } from 'drizzle-orm';
import { queryRows, type Database } from '../../src/store/database.js';
import type { SettlementAudit } from '../../examples/returns/src/audit.js';
import { isEvent, type RunningProcess } from '../../testkit/processes.js';
import { converge, daemonStarted, until, type Stage } from './harness.js';

interface Outcome {
  failures: string[];
  figures: Record<string, number | string>;
}
type Scenario = (stage: Stage, options: { seed: number; quick: boolean }) => Promise<Outcome>;

const YEARLY = '0 0 1 1 *';
const LIVE_REPLICAS = sql`SELECT count(*)::int AS n FROM reconciler.replicas WHERE expires_at > now()`;

async function count(database: Database, query: ReturnType<typeof sql>): Promise<number> {
  return Number((await queryRows<{ n: number }>(database.db, query))[0]?.n ?? 0);
}

/** Daemons up and listening (their start-up passes may still run). */
async function listening(stage: Stage, database: Database, env: Record<string, string>, replicas: number): Promise<RunningProcess[]> {
  const daemons = Array.from({ length: replicas }, () => stage.daemon(env));
  for (const daemon of daemons) await daemonStarted(daemon);
  await until(async () => (await count(database, LIVE_REPLICAS)) >= replicas, 'every replica counted', 30_000);
  return daemons;
}

function exactlyOnce(a: SettlementAudit): string[] {
  const failures: string[] = [];
  if (a.duplicates > 0) failures.push(`${a.duplicates} return(s) with more than one effect`);
  if (a.missing > 0) failures.push(`${a.missing} return(s) missing their effect`);
  if (a.disagreements > 0) failures.push(`${a.disagreements} disagreement(s) between the ledger and the database`);
  if (a.unsettled > 0) failures.push(`${a.unsettled} return(s) never settled`);
  return failures;
}

const auditFigures = (a: SettlementAudit) => ({ returns: a.returns, effects: a.effects, duplicates: a.duplicates, missing: a.missing });

/**
 * Floods the `returns` channel from one session (distinct payloads, so PostgreSQL folds none)
 * for `ms`, while `during` records returns; resolves with the notifications sent.
 */
async function storm(url: string, ms: number, during: (elapsed: number) => Promise<void>): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  let sent = 0;
  try {
    const started = Date.now();
    while (Date.now() - started < ms) {
      await client.query("SELECT count(pg_notify('returns', 'storm-' || $1::text || '-' || n::text)) FROM generate_series(1, 1000) AS n", [sent]);
      sent += 1_000;
      await during(Date.now() - started);
    }
  } finally {
    await client.end();
  }
  return sent;
}

/** Wake passes and all passes of settle-returns so far. */
async function passCounts(database: Database): Promise<{ wake: number; all: number }> {
  const [row] = await queryRows<{ wake: number; all: number }>(
    database.db,
    sql`SELECT count(*) FILTER (WHERE trigger = 'wake')::int AS wake, count(*)::int AS all FROM reconciler.runs WHERE reconciler = 'settle-returns'`,
  );
  return { wake: Number(row?.wake ?? 0), all: Number(row?.all ?? 0) };
}

/**
 * A NOTIFY storm: hundreds of thousands of notifications (tens of thousands with --quick)
 * in a few seconds, with returns recorded in the middle of it. The daemon must fold them
 * into a bounded number of passes, keep up, and settle every return exactly once.
 */
export const notifyStorm: Scenario = async (stage, { seed, quick }) => {
  const stormMs = quick ? 3_000 : 10_000;
  const shop = await stage.shop(0, seed);
  const provider = await stage.provider(seed, { latencyMs: [5, 20] });
  const env = stage.env(shop.url, provider, stage.jobs(YEARLY, { partitions: 4, wakeOn: true }), { WAKE_DEBOUNCE: '100ms' });
  const [daemon] = await listening(stage, shop.database, env, 1);
  await until(async () => (await count(shop.database, sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE status = 'running'`)) === 0, 'the start-up passes to end', 30_000);
  const before = await passCounts(shop.database);
  let batches = 0;
  const sent = await storm(shop.url, stormMs, async () => {
    if (batches < 10) await shop.seed(20, seed * 100 + batches++);
  });
  const { audit: result, ms } = await converge(shop.database, provider, 60_000);
  const after = await passCounts(shop.database);
  const passes = after.all - before.all;
  const failures = exactlyOnce(result);
  // One wake per debounce window at most, per partition; each may be followed by one more pass when it met a running one.
  const bound = 2 * 4 * (Math.ceil(stormMs / 100) + 2);
  if (passes > bound) failures.push(`${passes} passes for the storm (criterion: at most ${bound}, one per 100 ms window per partition, plus one after each)`);
  if (daemon!.child.exitCode !== null || daemon!.child.signalCode !== null) failures.push('the daemon exited during the storm');
  return { failures, figures: { ...auditFigures(result), notifications: sent, passes, wakePasses: after.wake - before.wake, convergenceMs: ms } };
};

/**
 * The LISTEN session killed (pg_terminate_backend) in the middle of a storm, with returns
 * recorded while it is down: their notifications are lost, and only the pass that follows
 * the reconnect can find them. Every return must settle exactly once, within 30 s.
 */
export const listenKilled: Scenario = async (stage, { seed, quick }) => {
  const stormMs = quick ? 4_000 : 10_000;
  const shop = await stage.shop(0, seed);
  const provider = await stage.provider(seed, { latencyMs: [5, 20] });
  const env = stage.env(shop.url, provider, stage.jobs(YEARLY, { partitions: 4, wakeOn: true }));
  const [daemon] = await listening(stage, shop.database, env, 1);
  let killedAt = 0;
  let batches = 0;
  const sent = await storm(shop.url, stormMs, async (elapsed) => {
    if (batches < 10) await shop.seed(10, seed * 100 + batches++);
    if (!killedAt && elapsed > stormMs / 3) {
      await queryRows(shop.database.db, sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'reconciler-listen' AND datname = current_database()`);
      killedAt = Date.now();
      // Recorded with the session down: lost notifications.
      await shop.seed(25, seed * 100 + 99);
    }
  });
  const { audit: result } = await converge(shop.database, provider, 60_000);
  const convergedAfterKillMs = Date.now() - killedAt;
  const failures = exactlyOnce(result);
  const reconnected = daemon!.lines.some((l) => isEvent('wake:restored')(l) && (l.channels as string[]).includes('returns'));
  if (!reconnected) failures.push('the daemon never said it was listening again');
  if (convergedAfterKillMs > 30_000) failures.push(`converged ${(convergedAfterKillMs / 1000).toFixed(1)} s after the kill (criterion: within 30 s)`);
  return { failures, figures: { ...auditFigures(result), notifications: sent, reconnected: reconnected ? 1 : 0, convergedAfterKillMs } };
};

/**
 * A partition holder killed with SIGKILL in the middle of the drain: two replicas share 4
 * partitions, one dies; the other must take its partitions over within 30 s, and every
 * return must be settled exactly once.
 */
export const partitionHolderKilled: Scenario = async (stage, { seed, quick }) => {
  const shop = await stage.shop(quick ? 400 : 4_000, seed);
  const provider = await stage.provider(seed, { latencyMs: [20, 50] });
  const env = stage.env(shop.url, provider, stage.jobs('* * * * *', { partitions: 4, wakeOn: true, concurrency: 4 }));
  const daemons = [stage.daemon(env), stage.daemon(env)];
  for (const daemon of daemons) await daemonStarted(daemon);
  // Mid-drain: the victim holds partitions with items in flight.
  const victim = daemons[0]!;
  const victimPid = victim.child.pid!;
  const held = await until(async () => {
    const rows = await queryRows<{ partition: number }>(shop.database.db, sql`SELECT partition FROM reconciler.state WHERE holder_pid = ${victimPid} AND lease_expires_at > now()`);
    const settled = await count(shop.database, sql`SELECT count(*)::int AS n FROM returns WHERE settled_at IS NOT NULL`);
    return rows.length > 0 && settled > 20 ? rows.map((r) => r.partition) : undefined;
  }, 'the victim to hold a partition mid-drain', 60_000);
  await victim.kill('SIGKILL');
  const killedAt = new Date();
  // Taken over: a pass of each of the victim's partitions started by another process after the kill.
  const takeoverMs = await until(async () => {
    const [row] = await queryRows<{ taken: number; last: number | null }>(
      shop.database.db,
      sql`SELECT count(DISTINCT partition)::int AS taken, (extract(epoch FROM max(started_at)) * 1000)::float8 AS last FROM (
            SELECT DISTINCT ON (partition) partition, started_at FROM reconciler.runs
            WHERE reconciler = 'settle-returns' AND pid <> ${victimPid} AND started_at > ${killedAt.toISOString()}::timestamptz AND partition IN (${sql.join(held.map((p) => sql`${p}`), sql`, `)})
            ORDER BY partition, started_at) AS first_after`,
    );
    return Number(row?.taken) === held.length ? Number(row!.last) - killedAt.getTime() : undefined;
  }, 'every partition of the killed holder to be taken over', 60_000);
  const { audit: result, ms } = await converge(shop.database, provider, 120_000);
  const failures = exactlyOnce(result);
  if (takeoverMs > 30_000) failures.push(`took the killed holder's partitions over ${(takeoverMs / 1000).toFixed(1)} s after the kill (criterion: within 30 s)`);
  const abandoned = await count(shop.database, sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE status = 'abandoned' AND pid = ${victimPid}`);
  return { failures, figures: { ...auditFigures(result), victimPartitions: held.length, takeoverMs: Math.round(takeoverMs), abandonedRuns: abandoned, convergenceMs: ms } };
};

/**
 * The partition count changed between deploys (4 → 8) with passes in flight: two daemons on
 * 4 partitions drain; two daemons on 8 start beside them (a rolling deploy), then the old
 * ones stop. The new count must wait for the old passes (their slices overlap), no return
 * may be worked by two holders at once, and every return must be settled exactly once.
 */
export const repartition: Scenario = async (stage, { seed, quick }) => {
  const shop = await stage.shop(quick ? 400 : 4_000, seed);
  const provider = await stage.provider(seed, { latencyMs: [20, 50] });
  const base = { wakeOn: true, concurrency: 4 };
  const before = stage.env(shop.url, provider, stage.jobs('*/5 * * * * *', { ...base, partitions: 4 }));
  const after = stage.env(shop.url, provider, stage.jobs('*/5 * * * * *', { ...base, partitions: 8 }));
  const old = [stage.daemon(before), stage.daemon(before)];
  for (const daemon of old) await daemonStarted(daemon);
  await until(async () => (await count(shop.database, sql`SELECT count(*)::int AS n FROM returns WHERE settled_at IS NOT NULL`)) > 20, 'the drain to be under way', 60_000);
  const next = [stage.daemon(after), stage.daemon(after)];
  for (const daemon of next) await daemonStarted(daemon);
  const inFlightAtSwitch = await count(shop.database, sql`SELECT count(*)::int AS n FROM reconciler.state WHERE partitions = 4 AND holder_id IS NOT NULL AND lease_expires_at > now()`);
  await Promise.all(old.map((daemon) => daemon.kill('SIGTERM')));
  const { audit: result, ms } = await converge(shop.database, provider, 120_000);
  const failures = exactlyOnce(result);
  if (inFlightAtSwitch === 0) failures.push('no pass of the old count was in flight when the new count started: the scenario tested nothing');
  // Two holders of overlapping slices at once would send some keys twice; a clean switch sends each once.
  const stats = await provider.stats();
  if (stats.replayed > 0) failures.push(`${stats.replayed} request(s) replayed a key: a return was worked twice`);
  // Passes of the two counts never overlapped in time.
  const [overlap] = await queryRows<{ n: number }>(
    shop.database.db,
    sql`SELECT count(*)::int AS n FROM reconciler.runs a JOIN reconciler.runs b
          ON a.started_at < coalesce(b.finished_at, now()) AND b.started_at < coalesce(a.finished_at, now())
        WHERE a.reconciler = 'settle-returns' AND b.reconciler = 'settle-returns' AND a.pid IN ${old.map((d) => d.child.pid!)} AND b.pid IN ${next.map((d) => d.child.pid!)}`,
  );
  if (Number(overlap?.n) > 0) failures.push(`${overlap!.n} pair(s) of passes of the old and the new count overlapped in time`);
  const newPasses = await count(shop.database, sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE pid IN ${next.map((d) => d.child.pid!)} AND partition >= 4`);
  if (newPasses === 0) failures.push('the new count never ran its partitions 4 to 7');
  return { failures, figures: { ...auditFigures(result), inFlightAtSwitch, replayed: stats.replayed, newCountPasses: newPasses, convergenceMs: ms } };
};
