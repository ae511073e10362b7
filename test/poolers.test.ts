/**
 * Behind a real PgBouncer in transaction mode, the pooler most managed PostgreSQL puts in front
 * of an application. It passes NOTIFY on but not LISTEN (the LISTEN lands on a server
 * connection handed to others), and no daemon's session shows in pg_stat_activity as its own.
 * So: replicas count each other by heartbeat rows and still split and hand over partitions;
 * wakes work with LISTEN_DATABASE_URL (a direct connection); without it, the daemon says so
 * once, reports it in /metrics, and the schedule settles everything exactly once.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { useTestDatabase } from './helpers/db.js';
import { jobsDir, tableJob, tableSql } from './helpers/jobs.js';
import { settleReturnsJobFile } from '../testkit/settle-returns.js';
import { isEvent, startProcess, until, useCleanup, type RunningProcess } from './helpers/processes.js';
import { PgBouncer } from './helpers/pgbouncer.js';
import { expectExactlyOnce, seedWithCheckout, settleEnv, startProvider, type Provider } from './helpers/returns.js';

const t = useTestDatabase({ returns: true });
const { children, dirs } = useCleanup();
let bouncer: PgBouncer;
let provider: Provider;
beforeAll(async () => {
  [bouncer, provider] = await Promise.all([PgBouncer.start(inject('adminUrl')), startProvider()]);
});
afterAll(async () => {
  await Promise.all([bouncer?.stop(), provider?.stop()]);
});

/** `t`'s database through the pooler. */
const pooled = () => bouncer.url(new URL(t.url).pathname.slice(1));
const count = async (query: ReturnType<typeof sql>) => Number((await t.rows<{ n: number }>(query))[0]?.n ?? 0);
const started = (daemon: RunningProcess) => daemon.waitForEvent('daemon:started');
const endpoint = async (daemon: RunningProcess) => String((await daemon.waitForEvent('http:listening')).url);
const metric = async (url: string, series: string) => {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(text.split('\n').find((line) => line.startsWith(`${series} `))?.split(' ')[1] ?? NaN);
};

/** settle-returns as it ships (4 partitions, woken by inserts into returns), on a schedule a test can wait for. */
function settleJobs(schedule: string): string {
  const jobs = jobsDir({
    'settle-returns.ts': settleReturnsJobFile({ schedule }),
  });
  dirs.push(jobs);
  return jobs.dir;
}

describe('behind PgBouncer in transaction mode', () => {
  it('two replicas split the partitions, and one that joins mid-backlog is handed its share, with no notification', { timeout: 120_000 }, async () => {
    await t.rows(sql.raw(tableSql(800, 'pooled_parts')));
    // The first daemon's items wait at a gate until the second is counted: it joins mid-backlog however slowly it starts.
    const jobs = jobsDir();
    dirs.push(jobs);
    const gate = join(jobs.dir, 'gate.open'); // not a job file: the loader passes it by
    jobs.write('pooled-parts.ts', tableJob({ table: 'pooled_parts', partitions: 4, concurrency: 2, delayMs: 40, gate }));
    // LEASE_TTL 10 s: the newcomer's share comes by hand-over, long before a lease could lapse.
    const env = { DATABASE_URL: pooled(), JOBS_DIR: jobs.dir, LOG_LEVEL: 'info', LEASE_TTL: '10s', HTTP_PORT: '0' };
    const first = startProcess(['daemon'], env);
    children.push(first);
    const ops = await endpoint(first);
    await started(first);
    await until(async () => (await count(sql`SELECT count(*)::int AS n FROM reconciler.state WHERE reconciler = 'pooled-parts' AND holder_pid = ${first.pid!}`)) === 4, 'the first daemon to hold all 4 partitions');
    const second = startProcess(['daemon'], env);
    children.push(second);
    await started(second);
    // Both count each other, through the pool: two live heartbeat rows.
    await until(async () => (await count(sql`SELECT count(*)::int AS n FROM reconciler.replicas WHERE expires_at > now()`)) === 2, 'both replicas counted');
    expect(await metric(ops, 'reconciler_replicas{reconciler="pooled-parts"}')).toBe(2);
    writeFileSync(gate, '');
    await until(async () => (await count(sql`SELECT count(*)::int AS n FROM pooled_parts WHERE NOT done`)) === 0, 'every row to be done', 90_000);
    await until(async () => (await count(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE status = 'running'`)) === 0, 'the passes to end');

    expect(first.lines.filter((l) => typeof l.handedOver === 'string')).toHaveLength(2);
    const worked = await t.rows<{ pid: number; partitions: number }>(
      sql`SELECT pid, count(DISTINCT partition)::int AS partitions FROM reconciler.runs WHERE reconciler = 'pooled-parts' AND changed > 0 AND pid = ${second.pid!} GROUP BY pid`,
    );
    expect(worked.map((w) => Number(w.partitions))).toEqual([2]);
    // It took them up when the first let go, not by a notice (none arrives here): a hand-over pass each.
    expect(await count(sql`SELECT count(DISTINCT partition)::int AS n FROM reconciler.runs WHERE reconciler = 'pooled-parts' AND pid = ${second.pid!} AND trigger = 'handover'`)).toBe(2);
    expect(await count(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE reconciler = 'pooled-parts' AND status = 'abandoned'`)).toBe(0);
    expect(await count(sql`SELECT count(*)::int AS n FROM pooled_parts WHERE touched <> 1`)).toBe(0);
    // Each said once that notifications do not arrive through the pooler.
    for (const daemon of [first, second]) expect(daemon.events('wake:deaf')).toHaveLength(1);

    // A replica that shuts down leaves at once: the other counts alone.
    await second.kill('SIGTERM');
    expect(await count(sql`SELECT count(*)::int AS n FROM reconciler.replicas WHERE expires_at > now()`)).toBe(1);
  });

  it('wakes work with LISTEN_DATABASE_URL: a new return is settled long before the schedule', { timeout: 90_000 }, async () => {
    // The schedule is a year away: only a wake can settle what is inserted after start.
    const env = settleEnv(t, provider, { DATABASE_URL: pooled(), LISTEN_DATABASE_URL: t.url, JOBS_DIR: settleJobs('0 0 1 1 *'), LOG_LEVEL: 'info', HTTP_PORT: '0', LEASE_TTL: '3s' });
    const daemons = [startProcess(['daemon'], env), startProcess(['daemon'], env)];
    children.push(...daemons);
    const urls = await Promise.all(daemons.map(endpoint));
    for (const daemon of daemons) await daemon.waitFor((l) => isEvent('wake:listening')(l) && (l.channels as string[]).includes('returns'), 'the LISTEN session to prove itself');
    await until(async () => (await count(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE reconciler = 'settle-returns' AND status <> 'running'`)) >= 4, "every partition's catch-up pass");

    await seedWithCheckout(t, provider, 12, 14);
    await until(async () => (await count(sql`SELECT count(*)::int AS n FROM returns WHERE settled_at IS NULL`)) === 0, 'the new returns to be settled by wakes', 20_000);
    expect(await count(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE reconciler = 'settle-returns' AND trigger = 'wake' AND changed > 0`)).toBeGreaterThan(0);
    for (const url of urls) expect(await metric(url, 'reconciler_wake_listening')).toBe(1);
    for (const daemon of daemons) expect(daemon.events('wake:deaf')).toHaveLength(0);
    await Promise.all(daemons.map((d) => d.kill('SIGTERM')));
    await expectExactlyOnce(t, provider);
  });

  it('without LISTEN_DATABASE_URL: one warning, wake_listening 0, and the schedule settles every return exactly once', { timeout: 90_000 }, async () => {
    const before = await count(sql`SELECT coalesce(max(id), 0)::int AS n FROM reconciler.runs`); // the earlier tests' runs
    const env = settleEnv(t, provider, { DATABASE_URL: pooled(), JOBS_DIR: settleJobs('*/2 * * * * *'), LOG_LEVEL: 'info', HTTP_PORT: '0', LEASE_TTL: '3s' });
    const daemons = [startProcess(['daemon'], env), startProcess(['daemon'], env)];
    children.push(...daemons);
    const urls = await Promise.all(daemons.map(endpoint));
    const warnings = await Promise.all(daemons.map((d) => d.waitForEvent('wake:deaf')));
    for (const warning of warnings) {
      expect(warning.level).toBe(40);
      expect(String(warning.msg)).toContain('set LISTEN_DATABASE_URL to a direct connection');
    }
    for (const url of urls) expect(await metric(url, 'reconciler_wake_listening')).toBe(0);

    await seedWithCheckout(t, provider, 20, 15);
    await until(async () => (await count(sql`SELECT count(*)::int AS n FROM returns WHERE settled_at IS NULL`)) === 0, 'the new returns to be settled by the schedule', 30_000);
    expect(await count(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE reconciler = 'settle-returns' AND trigger = 'wake' AND id > ${before}`)).toBe(0);
    await Promise.all(daemons.map((d) => d.kill('SIGTERM')));
    for (const daemon of daemons) expect(daemon.events('wake:deaf')).toHaveLength(1);
    await expectExactlyOnce(t, provider);
  });
});
