/**
 * The daemon as operations see it: health, readiness and metrics over HTTP, readiness
 * during an outage and a shutdown, three replicas on one database, and secrets that must
 * never leak. Real daemons, real PostgreSQL, real simulator.
 */
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { sql } from 'drizzle-orm';
import pg from 'pg';
import { useTestDatabase, databaseUrl } from './helpers/db.js';
import { join } from 'node:path';
import { API, REPO_ROOT, jobsDir, tableJob, tableSql, type JobsDir } from './helpers/jobs.js';
import { runCli, startProcess, until, type RunningProcess, useCleanup } from './helpers/processes.js';
import { everySettlePartitionPassed, seedWithCheckout, startProvider } from './helpers/returns.js';

const t = useTestDatabase({ resetEngineTables: true, returns: true });
const { children, dirs } = useCleanup();

function daemon(env: Record<string, string>): RunningProcess {
  const child = startProcess(['daemon'], { LOG_LEVEL: 'info', LEASE_TTL: '2s', ...env });
  children.push(child);
  return child;
}

async function endpoint(child: RunningProcess): Promise<string> {
  const line = await child.waitForEvent('http:listening', {}, 30_000);
  return String(line.url);
}


const get = async (url: string) => {
  const response = await fetch(url);
  return { status: response.status, text: await response.text() };
};

async function tableJobs(name: string, rows: number, job: Parameters<typeof tableJob>[0] = {}): Promise<JobsDir> {
  await t.rows(sql.raw(`DROP TABLE IF EXISTS ${name}_items; ${tableSql(rows, `${name}_items`)}`));
  const dir = jobsDir({ [`${name}.ts`]: tableJob({ ...job, table: `${name}_items` }) });
  dirs.push(dir);
  return dir;
}

/** promtool's verdict on a /metrics text: `0:` when it accepts it. Missing, it fails the test: .ci/run installs it (Debian package prometheus). */
const promtool = async (text: string): Promise<string> => {
  await promisify(execFile)('promtool', ['--version']).catch(() => {
    throw new Error('promtool is not installed: apt-get install prometheus (.ci/run does)');
  });
  const child = execFile('promtool', ['check', 'metrics']);
  child.stdin!.end(text);
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return `${code}:${output}`;
};

describe('the operations endpoint', () => {
  it('answers /healthz, /readyz and /metrics, with metrics that promtool accepts', async () => {
    const jobs = await tableJobs('observed', 3, { schedule: '*/1 * * * * *', failKeys: ['item-2'] });
    const d = daemon({ DATABASE_URL: t.url, JOBS_DIR: jobs.dir });
    const url = await endpoint(d);
    await d.waitForEvent('pass:finish', { reconciler: 'observed' }, 20_000);
    expect(await get(`${url}/healthz`)).toMatchObject({ status: 200 });
    const ready = await get(`${url}/readyz`);
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.text)).toMatchObject({ status: 'ready', checks: { database: { ok: true }, migrations: { ok: true }, jobs: { ok: true }, shutdown: { ok: true } } });
    const metrics = (await get(`${url}/metrics`)).text;
    expect(metrics).toMatch(/^reconciler_job_files_invalid 0$/m);
    for (const family of ['reconciler_passes_total', 'reconciler_items_total', 'reconciler_pass_duration_seconds_bucket', 'reconciler_items_in_backoff', 'reconciler_items_dead', 'reconciler_last_success_timestamp_seconds', 'reconciler_ticks_skipped_total']) {
      expect(metrics, family).toContain(family);
    }
    expect(metrics).toMatch(/reconciler_items_total\{reconciler="observed",outcome="changed"\} [1-9]/);
    expect(metrics).toMatch(/reconciler_items_in_backoff\{reconciler="observed"\} 1/);
    expect(await promtool(metrics)).toBe('0:');
  }, 60_000);

  it('reports staleness: the age of the oldest item the last scan found, for a reconciler with since()', async () => {
    const provider = await startProvider();
    try {
      await t.rows(sql`TRUNCATE payments, return_items, returns, fix_items, fixes, customers CASCADE`);
      await seedWithCheckout(t, provider, 3, 11);
      await t.rows(sql`UPDATE returns SET received_at = now() - interval '2 hours'`);
      await provider.setFaults({ errorRate: 1 }); // nothing settles: the returns stay stale
      const d = daemon({ DATABASE_URL: t.url, JOBS_DIR: 'jobs', PAYMENT_PROVIDER_URL: provider.url, PAYMENT_PROVIDER_KEY: 'sk_test_reconciler_suite' });
      const url = await endpoint(d);
      await everySettlePartitionPassed(d, 30_000); // the catch-up passes; staleness is that of the stalest partition
      const metrics = (await get(`${url}/metrics`)).text;
      const staleness = Number(/reconciler_staleness_seconds\{reconciler="settle-returns"\} ([\d.]+)/.exec(metrics)?.[1]);
      expect(staleness).toBeGreaterThan(7_000);
      expect(staleness).toBeLessThan(7_400);
    } finally {
      await provider.stop();
    }
  }, 60_000);

  it('fails readiness while the database refuses connections, and recovers', async () => {
    const jobs = await tableJobs('outage', 1);
    const d = daemon({ DATABASE_URL: t.url, JOBS_DIR: jobs.dir });
    const url = await endpoint(d);
    await until(async () => (await get(`${url}/readyz`)).status === 200, 'ready');
    const admin = new pg.Client({ connectionString: databaseUrl('postgres') });
    await admin.connect();
    try {
      await admin.query(`ALTER DATABASE ${t.name} WITH ALLOW_CONNECTIONS false`);
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'reconciler%'`, [t.name]);
      const down = await until(async () => {
        const r = await get(`${url}/readyz`);
        return r.status === 503 ? r : undefined;
      }, 'readiness to fail');
      expect(JSON.parse(down.text).checks.database.ok).toBe(false);
      expect((await get(`${url}/healthz`)).status).toBe(200); // alive: do not restart it for an outage
    } finally {
      await admin.query(`ALTER DATABASE ${t.name} WITH ALLOW_CONNECTIONS true`);
      await admin.end();
    }
    await until(async () => (await get(`${url}/readyz`)).status === 200, 'ready again');
    expect(d.child.exitCode).toBeNull();
  }, 60_000);

  it('fails readiness as soon as a shutdown begins, while in-flight items finish', async () => {
    const jobs = await tableJobs('draining', 4, { schedule: '0 0 1 1 *', delayMs: 1_500, concurrency: 1 });
    const d = daemon({ DATABASE_URL: t.url, JOBS_DIR: jobs.dir, SHUTDOWN_TIMEOUT: '20s' });
    const url = await endpoint(d);
    await until(async () => (await t.rows(sql`SELECT 1 FROM reconciler.state WHERE reconciler = 'draining' AND holder_id IS NOT NULL`)).length > 0, 'the catch-up pass');
    d.child.kill('SIGTERM');
    const during = await until(async () => {
      const r = await get(`${url}/readyz`).catch(() => undefined);
      return r && r.status === 503 ? r : undefined;
    }, 'readiness to fail during shutdown');
    expect(JSON.parse(during.text).checks.shutdown).toEqual({ ok: false, detail: 'shutting down' });
    expect((await d.exited).code).toBe(0);
  }, 60_000);
});

describe('broken job files', () => {
  const rel = (dir: JobsDir, file: string) => join(dir.dir, file).slice(REPO_ROOT.length + 1);
  const isError = (l: { level: number }) => l.level === 50;

  it('keep the daemon running the good reconciler; each is logged once, fails readiness and is counted in /metrics', async () => {
    const jobs = await tableJobs('survivor', 2, { schedule: '*/1 * * * * *' });
    // Two good files under one name: neither runs (which one is meant is anyone's guess).
    jobs.write('twin.mts', tableJob({ schedule: '*/1 * * * * *', table: 'survivor_items' }));
    jobs.write('twin.ts', tableJob({ schedule: '*/1 * * * * *', table: 'survivor_items' }));
    jobs.write('boom.ts', `throw new Error('boom at import');\n`);
    jobs.write('nodefault.ts', `export const x = 1;\n`);
    jobs.write('badcron.ts', `import { defineReconciler } from ${JSON.stringify(API)};\nexport default defineReconciler({ schedule: '61 * * * *', scan: async () => [], key: () => 'k', reconcile: () => 'unchanged' });\n`);
    const d = daemon({ DATABASE_URL: t.url, JOBS_DIR: jobs.dir });
    const url = await endpoint(d);
    await d.waitForEvent('pass:finish', { reconciler: 'survivor', trigger: 'schedule', status: 'succeeded' }, 20_000);
    expect((await t.rows<{ done: boolean }>(sql`SELECT done FROM survivor_items`)).every((r) => r.done)).toBe(true);

    const problems = { 'badcron.ts': 'invalid cron "61 * * * *"', 'boom.ts': 'failed to import: boom at import', 'nodefault.ts': 'does not default-export a reconciler',
      'twin.mts': `shares the reconciler name \`twin\` with ${rel(jobs, 'twin.ts')}: neither runs`, 'twin.ts': `shares the reconciler name \`twin\` with ${rel(jobs, 'twin.mts')}: neither runs` };
    expect(d.lines.filter(isError).map((l) => l.file).sort()).toEqual(Object.keys(problems).map((file) => rel(jobs, file)).sort());
    for (const [file, problem] of Object.entries(problems)) {
      const [line] = d.lines.filter((l) => isError(l) && l.file === rel(jobs, file));
      expect(line!.msg).toMatch(new RegExp(`^${rel(jobs, file).replace(/\./g, '\\.')}: `));
      expect(line!.msg).toContain(problem);
    }
    expect(d.events('daemon:started')[0]?.msg).toMatch(/with 1 reconciler\(s\): survivor \(\*\/1 \* \* \* \* \*\); 5 job file\(s\) did not load/);

    const ready = await get(`${url}/readyz`);
    expect(ready.status).toBe(503);
    const { checks } = JSON.parse(ready.text);
    expect(checks.database.ok).toBe(true);
    expect(checks.jobs.ok).toBe(false);
    expect(checks.jobs.detail).toContain(`${rel(jobs, 'badcron.ts')}: invalid cron "61 * * * *"`);
    expect(checks.jobs.detail).toMatch(/ \(and 4 more job file\(s\) that did not load: see the log\); 1 reconciler\(s\) loaded and scheduled$/);
    const metrics = (await get(`${url}/metrics`)).text;
    expect(metrics).toMatch(/^reconciler_job_files_invalid 5$/m);
    expect(await promtool(metrics)).toBe('0:');
    expect(d.child.exitCode).toBeNull();
  }, 60_000);

  it('leave a daemon with no good reconciler idling, not exiting', async () => {
    const jobs = jobsDir({ 'boom.ts': `throw new Error('boom at import');\n` });
    dirs.push(jobs);
    const d = daemon({ DATABASE_URL: t.url, JOBS_DIR: jobs.dir });
    const url = await endpoint(d);
    await d.waitForEvent('daemon:started');
    expect(d.lines.filter(isError).map((l) => l.msg)).toEqual([`${rel(jobs, 'boom.ts')}: failed to import: boom at import`]);
    expect(d.events('daemon:no-reconcilers').some((l) => String(l.msg).startsWith(`no job file in ${jobs.dir} could be loaded`))).toBe(true);
    expect(JSON.parse((await get(`${url}/readyz`)).text).checks.jobs).toEqual({ ok: false, detail: `${rel(jobs, 'boom.ts')}: failed to import: boom at import; 0 reconciler(s) loaded and scheduled` });
    expect(d.child.exitCode).toBeNull();
  }, 60_000);
});

describe('three replicas on one database', () => {
  it('run each tick once cluster-wide, and hand the work on within 30 s when one is killed mid-pass', async () => {
    const jobs = await tableJobs('shared', 40, { schedule: '*/2 * * * * *', delayMs: 150, concurrency: 2 });
    const env = { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, STARTUP_JITTER: '500ms' };
    const startedAt = Date.now();
    const replicas = [daemon(env), daemon(env), daemon(env)];
    await Promise.all(replicas.map((r) => r.waitForEvent('daemon:started', {}, 30_000)));
    const holderPid = await until(async () => {
      const [row] = await t.rows<{ pid: number }>(sql`SELECT holder_pid AS pid FROM reconciler.state WHERE reconciler = 'shared' AND holder_id IS NOT NULL`);
      return row?.pid;
    }, 'a replica holding the pass');
    const victim = replicas.find((r) => r.pid === Number(holderPid))!;
    await victim.kill('SIGKILL');
    const killedAt = Date.now();
    await until(async () => (await t.rows(sql`SELECT 1 FROM shared_items WHERE NOT done`)).length === 0, 'the survivors to finish the work', 45_000);
    const runs = await t.rows<{ status: string; pid: number; started_ms: number; finished_ms: number | null; trigger: string }>(
      sql`SELECT status, pid, (extract(epoch FROM started_at) * 1000)::float8 AS started_ms, (extract(epoch FROM finished_at) * 1000)::float8 AS finished_ms, trigger
          FROM reconciler.runs WHERE reconciler = 'shared' ORDER BY started_at`,
    );
    expect(runs.find((r) => r.pid === victim.pid && r.status !== 'succeeded')).toBeDefined();
    const takeover = runs.find((r) => r.pid !== victim.pid && r.started_ms >= killedAt - 100)!;
    expect(takeover.started_ms - killedAt).toBeLessThan(30_000);
    // Never two passes at once: each run starts after the previous one finished (or was abandoned by the killed replica).
    for (let i = 1; i < runs.length; i++) {
      const previous = runs[i - 1]!;
      if (previous.status !== 'abandoned') expect(runs[i]!.started_ms).toBeGreaterThanOrEqual(previous.finished_ms!);
    }
    // One pass per tick cluster-wide, not three: at most one scheduled run per 2-second tick.
    const ticks = Math.ceil((Date.now() - startedAt) / 2_000) + 1;
    expect(runs.filter((r) => r.trigger === 'schedule').length).toBeLessThanOrEqual(ticks);
    const touched = await t.rows<{ touched: number }>(sql`SELECT touched FROM shared_items`);
    expect(touched.every((r) => r.touched === 1)).toBe(true); // every row done, none twice
    expect(replicas.filter((r) => r !== victim).every((r) => r.events('daemon:jitter').length > 0)).toBe(true);
  }, 90_000);
});

describe('takeover between scheduled ticks', () => {
  it('hands a killed holder\'s pass to a running replica once its lease lapses, not at the next tick', async () => {
    // 60 items at 400 ms: a pass of about 24 s, so the holder is killed well inside it.
    const jobs = await tableJobs('longtick', 60, { schedule: '*/20 * * * * *', delayMs: 400, concurrency: 1 });
    await t.rows(sql`INSERT INTO reconciler.state (reconciler, partition, last_started_at, last_tick_at, last_run_id) VALUES ('longtick', 0, now(), now(), 0)`); // no catch-up: wait for the schedule
    const env = { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'debug' };
    const replicas = [daemon(env), daemon(env)];
    await Promise.all(replicas.map((r) => r.waitForEvent('daemon:started', {}, 30_000)));
    // Whichever replica lost the tick says it is watching the holder (whether it found the tick served or the lease held).
    const watching = await Promise.race(replicas.map((r) => r.waitForEvent('lease:held', { reconciler: 'longtick' }, 40_000).then((line) => ({ r, line }))));
    const survivor = watching.r;
    const victim = replicas.find((r) => r !== survivor && r.pid === watching.line.holderPid)!;
    expect(victim).toBeDefined();
    await victim.kill('SIGKILL');
    const killedAt = Date.now();
    const [left] = await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM longtick_items WHERE NOT done`);
    expect(left!.n).toBeGreaterThan(0); // killed mid-pass: there is work to take over
    const takeover = await until(async () => {
      const [row] = await t.rows<{ started: number }>(sql`SELECT (extract(epoch FROM started_at) * 1000)::float8 AS started FROM reconciler.runs WHERE reconciler = 'longtick' AND pid = ${survivor.pid} ORDER BY id LIMIT 1`);
      return row;
    }, 'the survivor to take over', 30_000);
    const [victimRun] = await t.rows<{ status: string }>(sql`SELECT status FROM reconciler.runs WHERE reconciler = 'longtick' AND pid = ${victim.pid} ORDER BY id DESC LIMIT 1`);
    expect(victimRun!.status).toBe('abandoned');
    // The survivor looks again when the lease it saw expires; one the holder renewed after that
    // look lapses at most a lease length (LEASE_TTL 2 s) after the kill, and a look follows 250 ms
    // later. Slack for a loaded machine: still well before the next 20-second tick.
    expect(Number(takeover.started) - killedAt).toBeLessThan(2 * 2_000 + 3_000);
  }, 90_000);
});

describe('secrets', () => {
  it('never show the database password or the provider key in logs, metrics, CLI output or rows the engine writes', async () => {
    const dbCanary = 'CanaryDbPw7Q2x';
    const keyCanary = 'sk_canary_K3yZ9';
    const provider = await startProvider([], keyCanary);
    try {
      await t.rows(sql`TRUNCATE payments, return_items, returns, fix_items, fixes, customers CASCADE`);
      await seedWithCheckout(t, provider, 6, 12, { apiKey: keyCanary });
      await provider.setFaults({ errorRate: 0.5, timeoutRate: 0.2 });
      // A role whose password is the canary, so that the daemon really connects with it (trust or password authentication).
      await t.rows(sql.raw(`DROP ROLE IF EXISTS reconciler_canary; CREATE ROLE reconciler_canary LOGIN SUPERUSER PASSWORD '${dbCanary}'`));
      const url = new URL(t.url);
      url.username = 'reconciler_canary';
      url.password = dbCanary;
      const env = { DATABASE_URL: url.toString(), JOBS_DIR: 'jobs', PAYMENT_PROVIDER_URL: provider.url, PAYMENT_PROVIDER_KEY: keyCanary, LOG_LEVEL: 'debug' };
      const d = daemon(env);
      const ops = await endpoint(d);
      await d.waitForEvent('pass:finish', { reconciler: 'settle-returns' }, 30_000);
      const outputs: string[] = [(await get(`${ops}/metrics`)).text, (await get(`${ops}/readyz`)).text];
      d.child.kill('SIGTERM');
      await d.exited;
      outputs.push(d.stdoutText.join('\n'), d.stderr);
      for (const args of [['config'], ['config', '--json'], ['list'], ['history'], ['failures'], ['run', 'settle-returns'], ['run', 'settle-returns', '--dry-run']]) {
        const result = await runCli(args, { ...env, LOG_LEVEL: 'debug' });
        outputs.push(result.stdout, result.stderr);
      }
      const badKey = await runCli(['run', 'settle-returns'], { ...env, PAYMENT_PROVIDER_KEY: `${keyCanary}-wrong` });
      outputs.push(badKey.stdout, badKey.stderr);
      const unreachable = new URL(url);
      unreachable.port = '1';
      const noDb = await runCli(['list'], { ...env, DATABASE_URL: unreachable.toString() });
      outputs.push(noDb.stdout, noDb.stderr);
      const rows = await t.rows<{ text: string }>(sql`SELECT coalesce(error, '') AS text FROM reconciler.runs UNION ALL SELECT last_error FROM reconciler.failures UNION ALL SELECT coalesce(last_error, '') FROM payments`);
      outputs.push(...rows.map((r) => r.text));
      const all = outputs.join('\n');
      expect(all.length).toBeGreaterThan(1_000);
      expect(all).not.toContain(dbCanary);
      expect(all).not.toContain(keyCanary);
    } finally {
      await provider.stop();
      await t.rows(sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'reconciler_canary'`);
      await t.rows(sql`DROP ROLE IF EXISTS reconciler_canary`);
    }
  }, 120_000);
});

