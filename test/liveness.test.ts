/**
 * Liveness that means progress, on real daemons: /healthz fails (with the reason, and one log
 * line) when the daemon's pool hands out no connection for HEALTH_MAX_STALL while the database
 * answers; it keeps passing through a plain database outage, which readiness reports instead.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { useTestDatabase } from './helpers/db.js';
import { FaultyProxy } from './helpers/proxy.js';
import { API, jobsDir, tableJob, tableSql } from './helpers/jobs.js';
import { startProcess, until, useCleanup, type RunningProcess } from './helpers/processes.js';

const t = useTestDatabase();
const { children, dirs } = useCleanup();
let proxy: FaultyProxy;
beforeAll(async () => {
  const target = new URL(inject('adminUrl'));
  proxy = await FaultyProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
});
afterAll(async () => {
  await proxy?.close();
});

const health = async (url: string) => {
  const response = await fetch(`${url}/healthz`);
  return { status: response.status, body: (await response.json()) as { status: string; reason?: string } };
};
const endpoint = async (daemon: RunningProcess) => String((await daemon.waitForEvent('http:listening')).url);
const started = (daemon: RunningProcess) => daemon.waitForEvent('daemon:started');

describe('liveness', () => {
  it('fails /healthz, with the reason, when the pool stays exhausted while the database answers', { timeout: 60_000 }, async () => {
    await t.rows(sql.raw(tableSql(4, 'hung_items')));
    // Each item holds a pooled connection in a query that outlives its own timeout (DATABASE_QUERY_TIMEOUT is an hour):
    // two of them take the whole pool of two, and nothing of the daemon's own can get a connection.
    const jobs = jobsDir({
      'hung.ts': `import { defineReconciler, sql } from ${JSON.stringify(API)};
export default defineReconciler<{ id: number }>({
  schedule: '* * * * * *',
  timeout: '1s',
  concurrency: 2,
  scan: async ({ db, after, limit }) => (await db.execute(sql\`SELECT id FROM hung_items WHERE id > \${after?.id ?? 0} ORDER BY id LIMIT \${limit}\`)).rows as unknown as { id: number }[],
  key: (item) => String(item.id),
  reconcile: async (item, ctx) => { await ctx.db.execute(sql\`SELECT pg_sleep(600), 'hung-item'\`); return 'changed'; },
});
`,
    });
    dirs.push(jobs);
    const daemon = startProcess(['daemon'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, DATABASE_POOL_SIZE: '2', DATABASE_QUERY_TIMEOUT: '1h', HEALTH_MAX_STALL: '3s', HTTP_PORT: '0', LOG_LEVEL: 'info' });
    children.push(daemon);
    try {
      const url = await endpoint(daemon);
      await started(daemon);
      expect((await health(url)).status).toBe(200);
      const line = await daemon.waitForEvent('liveness:stalled', {}, 30_000);
      expect(line.level).toBe(50);
      expect(String(line.reason)).toMatch(/^the database pool has handed out no connection for \d/);
      const verdict = await health(url);
      expect(verdict.status).toBe(503);
      expect(verdict.body).toMatchObject({ status: 'not progressing', reason: line.reason });
      expect(daemon.events('liveness:stalled')).toHaveLength(1); // one line, not one per round
    } finally {
      await t.rows(sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%hung-item%' AND pid <> pg_backend_pid()`);
    }
  });

  it('keeps passing through a database outage (readiness fails instead), and the daemon works again after it', { timeout: 60_000 }, async () => {
    await t.rows(sql.raw(tableSql(0, 'outage_items')));
    const jobs = jobsDir({ 'outage-items.ts': tableJob({ table: 'outage_items', schedule: '* * * * * *' }) });
    dirs.push(jobs);
    const url = new URL(t.url);
    url.host = `127.0.0.1:${proxy.port}`;
    const daemon = startProcess(['daemon'], { DATABASE_URL: url.toString(), JOBS_DIR: jobs.dir, HEALTH_MAX_STALL: '2s', HTTP_PORT: '0', LOG_LEVEL: 'info', LEASE_TTL: '2s' });
    children.push(daemon);
    const ops = await endpoint(daemon);
    await started(daemon);
    proxy.cut();
    try {
      await until(async () => (await fetch(`${ops}/readyz`)).status === 503, 'readiness to fail during the outage');
      // Three times the bound, looking all along: liveness never fails while the database does not answer.
      const watchUntil = Date.now() + 6_000;
      while (Date.now() < watchUntil) {
        const verdict = await health(ops);
        expect(verdict.status, JSON.stringify(verdict.body)).toBe(200);
        await new Promise((resolve) => setTimeout(resolve, 250)); // the pace of the watch, not a wait for an event
      }
    } finally {
      proxy.restore();
    }
    // And it works again: a row inserted now is done by the schedule.
    await t.rows(sql`INSERT INTO outage_items (name) VALUES ('after the outage')`);
    await until(async () => Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM outage_items WHERE NOT done`))[0]?.n) === 0, 'the row to be done after the outage', 30_000);
    expect((await health(ops)).status).toBe(200);
    expect(daemon.events('liveness:stalled')).toHaveLength(0);
  });
});
