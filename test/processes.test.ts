/**
 * Real processes: `reconciler run` racing for a lease, takeover after a crash, the daemon's
 * schedule, catch-up, graceful shutdown, concurrent migrations and two daemons on one
 * database. Tests await log lines or poll the database for a state change; none sleeps.
 */
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import pg from 'pg';
import { MIGRATIONS_FOLDER } from '../src/store/migrate.js';
import { createEmptyDatabase, createTestDatabase, databaseUrl, dropDatabase, type TestDatabase } from './helpers/db.js';
import { jobsDir, tableJob, tableSql, type JobsDir } from './helpers/jobs.js';
import { isEvent, runCli, startProcess, type RunningProcess, useCleanup } from './helpers/processes.js';

let t: TestDatabase;
const { children, dirs } = useCleanup();

beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => {
  await t.drop();
});

interface RunRow {
  id: number;
  trigger: string;
  status: string;
  /** Epoch milliseconds (drizzle's pg driver returns timestamps as strings). */
  started_ms: number;
  finished_ms: number | null;
  found: number;
  changed: number;
  skipped: number;
  failed: number;
  complete: boolean;
  pid: number;
  error: string | null;
}

/** A job folder with one reconciler `name` over its own table of `rows` rows. */
async function setUp(name: string, rows: number, job: Parameters<typeof tableJob>[0] = {}): Promise<JobsDir> {
  const table = `${name}_items`;
  await t.rows(sql.raw(tableSql(rows, table)));
  const jobs = jobsDir({ [`${name}.ts`]: tableJob({ ...job, table }) });
  dirs.push(jobs);
  return jobs;
}

function env(jobs: JobsDir, extra: Record<string, string> = {}): Record<string, string> {
  return { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info', LEASE_TTL: '2s', SHUTDOWN_TIMEOUT: '10s', ...extra };
}

function start(args: string[], environment: Record<string, string>): RunningProcess {
  const child = startProcess(args, environment);
  children.push(child);
  return child;
}

const exitedEarly = (p: RunningProcess) => p.child.exitCode !== null || p.child.signalCode !== null;

/** Polls `probe` until it returns a truthy value; fails early if one of `watch` exits. */
async function until<T>(probe: () => Promise<T | undefined | null | false>, what: string, options: { timeoutMs?: number; watch?: RunningProcess[] } = {}): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  for (;;) {
    const value = await probe();
    if (value) return value;
    const dead = options.watch?.find(exitedEarly);
    if (dead) throw new Error(`process ${dead.pid} exited before: ${what}\nstderr: ${dead.stderr}\nstdout: ${dead.stdoutText.slice(-20).join('\n')}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const runs = (name: string) =>
  t.rows<RunRow>(sql`SELECT id::int AS id, trigger, status, (extract(epoch FROM started_at) * 1000)::float8 AS started_ms,
                            (extract(epoch FROM finished_at) * 1000)::float8 AS finished_ms, found, changed, skipped, failed, complete, pid, error
                     FROM reconciler.runs WHERE reconciler = ${name} ORDER BY id`);
const state = async (name: string) =>
  (await t.rows<{ holder_id: string | null; holder_pid: number | null; current_run_id: string | null; lease_expires_ms: number | null }>(
    sql`SELECT holder_id, holder_pid, current_run_id, (extract(epoch FROM lease_expires_at) * 1000)::float8 AS lease_expires_ms FROM reconciler.state WHERE reconciler = ${name} AND partition = 0`,
  ))[0];
const items = (name: string) =>
  t.rows<{ name: string; done: boolean; touched: number }>(sql.raw(`SELECT name, done, touched FROM ${name}_items ORDER BY id`));
const doneCount = async (name: string) => (await items(name)).filter((row) => row.done).length;
const heldLease = async (name: string) => {
  const row = await state(name);
  return row?.holder_id ? row : undefined;
};
const failureRecorded = async (name: string, key: string) =>
  (await t.rows(sql`SELECT 1 FROM reconciler.failures WHERE reconciler = ${name} AND key = ${key}`)).length > 0;

/** A pass summary line (`name: pass 12 succeeded in …`), optionally of one trigger. */
const isSummary = (name: string, trigger?: string) => isEvent('pass:finish', { reconciler: name, ...(trigger === undefined ? {} : { trigger }) });

describe('reconciler run, as processes', () => {
  it('lets exactly one of two racing `run` processes do the pass; the other exits 3 naming the holder', async () => {
    const jobs = await setUp('race', 3, { delayMs: 1_500, concurrency: 1 });
    const a = start(['run', 'race'], env(jobs));
    const b = start(['run', 'race'], env(jobs));
    const [exitA, exitB] = await Promise.all([a.exited, b.exited]);

    expect([exitA.code, exitB.code].sort()).toEqual([0, 3]);
    const [winner, loser] = exitA.code === 0 ? [a, b] : [b, a];
    expect(loser.stderr).toContain(`race: a pass is already running on ${hostname()} pid ${winner.pid}`);
    expect((await items('race')).map((row) => row.touched)).toEqual([1, 1, 1]);
    const history = await runs('race');
    expect(history).toHaveLength(1);
    expect(history[0]).toMatchObject({ status: 'succeeded', pid: winner.pid, changed: 3 });
  }, 60_000);

  it('with --wait, waits for the running pass and then runs its own', async () => {
    // The holder's items wait at a gate, opened once the waiter says it waits: however slow the machine, it meets the pass.
    const gate = join(mkdtempSync(join(tmpdir(), 'reconciler-gate-')), 'open');
    const jobs = await setUp('waiter', 3, { concurrency: 1, gate });
    const holder = start(['run', 'waiter'], env(jobs));
    await until(() => heldLease('waiter'), 'the first process to hold the lease', { watch: [holder] });

    const waiting = start(['run', 'waiter', '--wait'], env(jobs));
    await until(async () => waiting.stderr.includes('waiting for the pass running on'), 'the second process to wait for the first', { watch: [waiting, holder] });
    writeFileSync(gate, '');
    const waiter = { ...(await waiting.exited), stderr: waiting.stderr };
    expect(waiter.code).toBe(0);
    expect(waiter.stderr).toContain(`waiting for the pass running on ${hostname()} pid ${holder.pid}`);
    expect((await holder.exited).code).toBe(0);

    const history = await runs('waiter');
    expect(history.map((run) => run.status)).toEqual(['succeeded', 'succeeded']);
    expect(history[1]!.pid).not.toBe(holder.pid);
    expect(history[1]!.started_ms).toBeGreaterThanOrEqual(history[0]!.finished_ms!);
    expect((await items('waiter')).map((row) => row.touched)).toEqual([1, 1, 1]);
  }, 60_000);

  it('takes over the pass of a holder killed with SIGKILL once its lease expires, and marks that pass abandoned', async () => {
    const jobs = await setUp('killed', 4, { delayMs: 1_500, concurrency: 1 });
    const victim = start(['run', 'killed'], env(jobs, { LEASE_TTL: '2s' }));
    const lease = await until(() => heldLease('killed'), 'the victim to hold the lease', { watch: [victim] });
    const leaseBeforeKill = await state('killed');
    await victim.kill('SIGKILL');
    const killedAt = Date.now();

    const survivor = await runCli(['run', 'killed', '--wait'], env(jobs, { LEASE_TTL: '2s' }));
    expect(survivor.code, survivor.stderr).toBe(0);

    const history = await runs('killed');
    expect(history).toHaveLength(2);
    const [abandoned, takeover] = history as [RunRow, RunRow];
    expect(abandoned).toMatchObject({ id: Number(lease.current_run_id), pid: victim.pid, status: 'abandoned' });
    expect(abandoned.error).toContain('stopped renewing the lease');
    expect(takeover).toMatchObject({ status: 'succeeded', complete: true });
    // Not before the lease ran out, and within LEASE_TTL (plus start-up and polling slack) of the kill.
    expect(takeover.started_ms).toBeGreaterThanOrEqual(leaseBeforeKill!.lease_expires_ms!);
    const takeoverMs = takeover.started_ms - killedAt;
    expect(takeoverMs).toBeLessThan(2_000 + 8_000);
    expect(takeoverMs).toBeLessThan(30_000);
    expect((await items('killed')).map((row) => row.touched)).toEqual([1, 1, 1, 1]);
    expect(await heldLease('killed')).toBeUndefined();
  }, 60_000);

  it('on Ctrl-C finishes the items in flight, records the pass as aborted, releases the lease and exits 1', async () => {
    const jobs = await setUp('interrupted', 6, { delayMs: 800, concurrency: 1 });
    const run = start(['run', 'interrupted'], env(jobs));
    await until(() => heldLease('interrupted'), 'the run to hold the lease', { watch: [run] });
    run.child.kill('SIGINT');
    const { code } = await run.exited;
    expect(code).toBe(1);
    expect(run.stderr).toContain('SIGINT: finishing the items in flight');
    const [pass] = await runs('interrupted');
    expect(pass).toMatchObject({ status: 'aborted', complete: false, failed: 0 });
    expect(pass!.changed).toBe(await doneCount('interrupted'));
    expect(pass!.changed).toBeLessThan(6);
    expect(await heldLease('interrupted')).toBeUndefined();
  }, 60_000);
});

describe('the daemon, as a process', () => {
  it('runs a reconciler on its schedule and stops with exit 0 on SIGTERM', async () => {
    const jobs = await setUp('ticking', 2, { schedule: '*/1 * * * * *' });
    const daemon = start(['daemon'], env(jobs));
    const scheduled = isSummary('ticking', 'schedule');
    await daemon.waitFor((line) => scheduled(line) && daemon.lines.filter(scheduled).length >= 2, 'two scheduled passes', 20_000);

    daemon.child.kill('SIGTERM');
    const exit = await daemon.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(daemon.lines.some((line) => line.event === 'daemon:stopped')).toBe(true);
    const history = await runs('ticking');
    expect(history.filter((run) => run.trigger === 'schedule').length).toBeGreaterThanOrEqual(2);
    expect(history.every((run) => run.status === 'succeeded')).toBe(true);
    expect((await items('ticking')).map((row) => row.touched)).toEqual([1, 1]);
  }, 60_000);

  it('runs one catch-up pass at start for an overdue reconciler, and none on the next start', async () => {
    const jobs = await setUp('overdue', 2, { schedule: '0 0 1 1 *' });
    await t.rows(sql`INSERT INTO reconciler.state (reconciler, partition, last_started_at) VALUES ('overdue', 0, now() - interval '2 years')`);

    const first = start(['daemon'], env(jobs));
    const summary = await first.waitFor(isSummary('overdue', 'startup'), 'the catch-up pass', 20_000);
    expect(summary.status).toBe('succeeded');
    first.child.kill('SIGTERM');
    expect((await first.exited).code).toBe(0);

    const second = start(['daemon'], env(jobs));
    await second.waitForEvent('daemon:started', {}, 20_000);
    second.child.kill('SIGTERM');
    expect((await second.exited).code).toBe(0);

    expect(second.events('pass:catch-up')).toEqual([]);
    const history = await runs('overdue');
    expect(history.map((run) => [run.trigger, run.status])).toEqual([['startup', 'succeeded']]);
    expect((await items('overdue')).map((row) => row.touched)).toEqual([1, 1]);
  }, 60_000);

  it('retries a failed item when its backoff ends, in a `retry` pass, without waiting for the next tick', async () => {
    // A backoff of 3 s (1.5 to 3 s with jitter), longer than the 1 s minimum gap between passes.
    const jobs = await setUp('retried', 3, { schedule: '0 0 1 1 *', failOnceKeys: ['item-2'], extra: "retry: { backoff: { initial: '3s', max: '3s' } }," });
    const daemon = start(['daemon'], env(jobs));
    const retry = await daemon.waitFor(isSummary('retried', 'retry'), 'a retry pass', 20_000);
    expect(retry.status).toBe('succeeded');
    const history = await runs('retried');
    expect(history.map((run) => [run.trigger, run.status, run.changed, run.failed])).toEqual([['startup', 'failed', 2, 1], ['retry', 'succeeded', 1, 0]]);
    expect(history[1]!.started_ms - history[0]!.finished_ms!).toBeGreaterThanOrEqual(1_400); // when the backoff ends, not before
    expect((await items('retried')).map((row) => row.touched)).toEqual([1, 1, 1]);
  }, 60_000);

  it('retries the failures of a long pass when they fall due, not a pass-length later, when the pass worked all it found', async () => {
    // item-1 fails at once (backoff 100–200 ms); the others take 4 s, so the pass lasts about 4 s and defers nothing.
    const jobs = await setUp('drained', 3, { schedule: '0 0 1 1 *', failOnceKeys: ['item-1'], delayMs: 4_000, concurrency: 3, extra: "retry: { backoff: { initial: '200ms', max: '200ms' } }," });
    const daemon = start(['daemon'], env(jobs));
    await daemon.waitFor(isSummary('drained', 'retry'), 'a retry pass', 30_000);
    const history = await runs('drained');
    expect(history.map((run) => [run.trigger, run.changed, run.failed])).toEqual([['startup', 2, 1], ['retry', 1, 0]]);
    expect(history[0]!.finished_ms! - history[0]!.started_ms).toBeGreaterThanOrEqual(4_000);
    expect(history[1]!.started_ms - history[0]!.finished_ms!).toBeLessThan(3_000); // the 1 s minimum gap, not the pass's 4 s
  }, 60_000);

  it('keeps a retry pass a pass-length away when the pass before mostly found items still in backoff', async () => {
    // 8 of 10 items wait in backoff for 30 s; item-1 fails at once, item-10 takes 4 s: a 4 s pass that passed over 8 of 10.
    const jobs = await setUp('braked', 10, { schedule: '0 0 1 1 *', failOnceKeys: ['item-1'], delayMs: 4_000, concurrency: 3, extra: "retry: { backoff: { initial: '200ms', max: '200ms' } }," });
    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, partition, attempts, last_error, next_attempt_at)
                     SELECT 'braked', 'item-' || n, 0, 1, 'failed before', now() + interval '30 seconds' FROM generate_series(2, 9) AS n`);
    const daemon = start(['daemon'], env(jobs));
    await daemon.waitFor(isSummary('braked', 'retry'), 'a retry pass', 30_000);
    const history = await runs('braked');
    expect(history.map((run) => [run.trigger, run.changed, run.failed])).toEqual([['startup', 1, 1], ['retry', 1, 0]]);
    expect(history[1]!.started_ms - history[0]!.finished_ms!).toBeGreaterThanOrEqual(0.8 * (history[0]!.finished_ms! - history[0]!.started_ms) - 50);
  }, 60_000);

  it('after a kill -9 and a quick restart, catches up once the dead holder\'s lease has lapsed', async () => {
    const jobs = await setUp('restarted', 4, { schedule: '0 0 1 1 *', delayMs: 1_000, concurrency: 1 });
    const first = start(['daemon'], env(jobs));
    await until(() => heldLease('restarted'), 'the first daemon to start its catch-up pass', { watch: [first] });
    await first.kill('SIGKILL');

    const second = start(['daemon'], env(jobs));
    const summary = await second.waitFor(isSummary('restarted', 'startup'), 'the catch-up pass after the lease lapsed', 30_000);
    expect(summary.status).toBe('succeeded');
    second.child.kill('SIGTERM');
    expect((await second.exited).code).toBe(0);
    expect((await runs('restarted')).map((run) => [run.trigger, run.status])).toEqual([
      ['startup', 'abandoned'],
      ['startup', 'succeeded'],
    ]);
    expect((await items('restarted')).every((row) => row.done && row.touched === 1)).toBe(true);
  }, 60_000);

  it('shuts down gracefully when its parent exits, as under `npm start` stopped with SIGTERM', async () => {
    const jobs = await setUp('orphaned', 1, { schedule: '0 0 1 1 *' });
    const npm = startProcess(['start'], env(jobs), { command: 'npm' });
    children.push(npm);
    const started = await npm.waitForEvent('daemon:started', {}, 30_000);
    const daemonPid = Number(started.pid);
    expect(daemonPid).not.toBe(npm.pid);
    npm.child.kill('SIGTERM'); // npm exits without passing the signal on
    await until(async () => {
      try {
        process.kill(daemonPid, 0);
        return false;
      } catch {
        return true;
      }
    }, 'the orphaned daemon to exit', { timeoutMs: 20_000 });
    expect(npm.stdoutText.join('\n')).toContain(`the parent process`);
    expect(npm.lines.some((line) => line.event === 'daemon:stopped')).toBe(true);
  }, 60_000);

  it('on SIGTERM lets in-flight items finish, takes no new ones, records the pass and releases the lease', async () => {
    const jobs = await setUp('graceful', 6, { schedule: '*/1 * * * * *', delayMs: 2_000, concurrency: 2 });
    const daemon = start(['daemon'], env(jobs, { SHUTDOWN_TIMEOUT: '10s' }));
    // Once an item is done while the pass still runs, the next items are in flight.
    const doneBefore = await until(async () => {
      const running = (await runs('graceful')).some((run) => run.status === 'running');
      const done = await doneCount('graceful');
      return running && done >= 1 && done < 6 ? done : undefined;
    }, 'a pass with items done and more in flight', { watch: [daemon] });

    const signalledAt = Date.now();
    daemon.child.kill('SIGTERM');
    const exit = await daemon.exited;
    const shutdownMs = Date.now() - signalledAt;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(daemon.lines.some((line) => line.event === 'daemon:stopped')).toBe(true);
    expect(shutdownMs).toBeLessThan(10_000); // the items finished on their own, before SHUTDOWN_TIMEOUT

    const rows = await items('graceful');
    const doneAfter = rows.filter((row) => row.done).length;
    expect(doneAfter).toBeGreaterThan(doneBefore); // the items in flight at SIGTERM completed
    expect(rows.every((row) => row.touched === (row.done ? 1 : 0))).toBe(true);
    const history = await runs('graceful');
    expect(history).toHaveLength(1);
    expect(history[0]).toMatchObject({ status: doneAfter === 6 ? 'succeeded' : 'aborted', changed: doneAfter, skipped: 0, failed: 0 });
    expect(history[0]!.finished_ms).not.toBeNull();
    expect(await heldLease('graceful')).toBeUndefined();
  }, 60_000);

  it('aborts items still in flight when SHUTDOWN_TIMEOUT elapses, and records the pass as aborted', async () => {
    // item-1 fails at once: once its failure is recorded, item-2 and item-3 are in flight (20 s each).
    const jobs = await setUp('impatient', 4, { delayMs: 20_000, concurrency: 2, failKeys: ['item-1'] });
    const daemon = start(['daemon'], env(jobs, { SHUTDOWN_TIMEOUT: '1s' }));
    await until(() => failureRecorded('impatient', 'item-1'), 'items in flight', { watch: [daemon] });

    const signalledAt = Date.now();
    daemon.child.kill('SIGTERM');
    const exit = await daemon.exited;
    const shutdownMs = Date.now() - signalledAt;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(shutdownMs).toBeGreaterThanOrEqual(900);
    expect(shutdownMs).toBeLessThan(8_000);
    // One line for the pass, not one per aborted item: the summary counts them and says why.
    expect(daemon.lines.filter((line) => line.level >= 40 && line.key !== undefined).map((line) => line.msg)).toEqual([expect.stringMatching(/^failed: /)]);
    expect(daemon.events('pass:finish').map((line) => line.msg)).toContainEqual(expect.stringMatching(/pass \d+ aborted .* 2 skipped, 1 failed.*items still running after 1.0s were aborted/));
    expect(daemon.lines.some((line) => line.event === 'daemon:stopped')).toBe(true);

    const history = await runs('impatient');
    expect(history).toHaveLength(1);
    expect(history[0]).toMatchObject({ status: 'aborted', complete: false, failed: 1, changed: 0 });
    expect(history[0]!.skipped).toBeGreaterThanOrEqual(1);
    expect(await doneCount('impatient')).toBe(0);
    expect(await heldLease('impatient')).toBeUndefined();
  }, 60_000);

  it('exits at once with 143 on a second SIGTERM while items are still in flight', async () => {
    const jobs = await setUp('hasty', 4, { delayMs: 20_000, concurrency: 2, failKeys: ['item-1'] });
    const daemon = start(['daemon'], env(jobs, { SHUTDOWN_TIMEOUT: '60s' }));
    await until(() => failureRecorded('hasty', 'item-1'), 'items in flight', { watch: [daemon] });

    daemon.child.kill('SIGTERM');
    await daemon.waitForEvent('signal:shutdown', { signal: 'SIGTERM' }, 10_000);
    const secondAt = Date.now();
    daemon.child.kill('SIGTERM');
    const exit = await daemon.exited;
    expect(exit).toEqual({ code: 143, signal: null });
    expect(Date.now() - secondAt).toBeLessThan(5_000);
    expect(daemon.events('signal:exit-now', { signal: 'SIGTERM' })).not.toHaveLength(0);
    expect(daemon.lines.some((line) => line.event === 'daemon:stopped')).toBe(false);
    // It did not wait for the pass: nothing recorded its end.
    expect((await runs('hasty')).map((run) => run.status)).toEqual(['running']);
    expect(await doneCount('hasty')).toBe(0);
  }, 60_000);
});

describe('several processes on one database', () => {
  it('applies migrations once when three `reconciler migrate` run at once on a fresh database', async () => {
    const name = await createEmptyDatabase();
    try {
      const url = databaseUrl(name);
      const results = await Promise.all([1, 2, 3].map(() => runCli(['migrate'], { DATABASE_URL: url })));
      for (const result of results) expect(result.code, result.stderr).toBe(0);
      const files = readdirSync(MIGRATIONS_FOLDER).filter((file) => file.endsWith('.sql'));
      expect(results.filter((result) => result.stdout.startsWith(`applied ${files.length} migration(s)`))).toHaveLength(1);
      expect(results.filter((result) => result.stdout.includes('is up to date'))).toHaveLength(2);

      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        const { rows } = await client.query<{ n: number; hashes: number }>('SELECT count(*)::int AS n, count(DISTINCT hash)::int AS hashes FROM reconciler.migrations');
        expect(rows[0]).toEqual({ n: files.length, hashes: files.length });
        const { rows: tables } = await client.query<{ t: string }>("SELECT to_regclass('reconciler.runs')::text AS t");
        expect(tables[0]!.t).toBe('reconciler.runs');
      } finally {
        await client.end();
      }
    } finally {
      await dropDatabase(name);
    }
  }, 60_000);

  it('runs at most one pass per tick, never overlapping, with two daemons on one schedule', async () => {
    const jobs = await setUp('shared', 4, { schedule: '*/1 * * * * *', delayMs: 600, concurrency: 2 });
    const startedAt = Date.now();
    const a = start(['daemon'], env(jobs));
    const b = start(['daemon'], env(jobs));
    await until(async () => (await runs('shared')).filter((run) => run.trigger === 'schedule').length >= 4, 'four scheduled passes', { watch: [a, b], timeoutMs: 40_000 });
    a.child.kill('SIGTERM');
    b.child.kill('SIGTERM');
    const exits = await Promise.all([a.exited, b.exited]);
    const elapsedSeconds = Math.ceil((Date.now() - startedAt) / 1_000);
    expect(exits).toEqual([{ code: 0, signal: null }, { code: 0, signal: null }]);

    const history = await runs('shared');
    expect(history.every((run) => run.finished_ms !== null && run.status !== 'running')).toBe(true);
    for (const x of history) {
      for (const y of history) {
        if (x === y) continue;
        const overlap = x.started_ms < y.finished_ms! && y.started_ms < x.finished_ms!;
        expect(overlap, `passes ${x.id} and ${y.id} overlap`).toBe(false);
      }
    }
    const scheduled = history.filter((run) => run.trigger === 'schedule');
    expect(scheduled.length).toBeGreaterThanOrEqual(4);
    expect(scheduled.length).toBeLessThanOrEqual(elapsedSeconds);
    // Every tick-serving pass (schedule or catch-up) started in a second of its own: one pass per tick.
    const ticked = history.filter((run) => run.trigger === 'schedule' || run.trigger === 'startup');
    const seconds = new Set(ticked.map((run) => Math.floor(run.started_ms / 1_000)));
    expect(seconds.size).toBe(ticked.length);
    expect((await items('shared')).map((row) => row.touched)).toEqual([1, 1, 1, 1]);
  }, 90_000);
});
