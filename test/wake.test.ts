/**
 * Wake-on-change (`wakeOn`): a real daemon LISTENing on a real PostgreSQL. A committed
 * insert starts a pass long before the schedule would; a storm of notifications costs a
 * handful of passes; a LISTEN session killed by the server is opened again, followed by one
 * pass for what may have been missed. Tests await log lines and database state, never sleep.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { notifyTrigger } from '../src/index.js';
import { defineReconciler, resolveReconciler } from '../src/reconciler.js';
import { WakeListener } from '../src/scheduler/wake.js';
import { RETURNS_MIGRATIONS } from '../examples/returns/src/migrate.js';
import { silentLog, useTestDatabase } from './helpers/db.js';
import { jobsDir, tableJob, tableSql } from './helpers/jobs.js';
import { isEvent, startProcess, until, type RunningProcess, useCleanup } from './helpers/processes.js';

const t = useTestDatabase();
const { children, dirs } = useCleanup();


/** A daemon whose only reconciler works on `table`, scheduled once a year, woken by inserts into it. */
async function wakingDaemon(table: string, extraEnv: Record<string, string> = {}): Promise<{ daemon: RunningProcess; url: string }> {
  await t.rows(sql.raw(tableSql(0, table)));
  for (const statement of notifyTrigger(table, table, ['INSERT']).split('--> statement-breakpoint')) await t.rows(sql.raw(statement));
  const jobs = jobsDir({ [`${table.replace(/_/g, '-')}.ts`]: tableJob({ table, schedule: '0 0 1 1 *', extra: `wakeOn: [${JSON.stringify(table)}],` }) });
  dirs.push(jobs);
  const daemon = startProcess(['daemon'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info', LEASE_TTL: '2s', ...extraEnv });
  children.push(daemon);
  const url = String((await daemon.waitForEvent('http:listening')).url);
  await daemon.waitForEvent('wake:listening');
  // The start-up catch-up pass (the reconciler never ran) has ended: what follows is the wake's.
  const name = table.replace(/_/g, '-');
  await until(async () => (await t.rows(sql`SELECT 1 FROM reconciler.runs WHERE reconciler = ${name} AND trigger = 'startup' AND status <> 'running'`)).length > 0, 'the catch-up pass');
  return { daemon, url };
}

const wakePasses = async (reconciler: string) =>
  Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE reconciler = ${reconciler} AND trigger = 'wake'`))[0]?.n);
const notDone = async (table: string) => Number((await t.rows<{ n: number }>(sql.raw(`SELECT count(*)::int AS n FROM ${table} WHERE NOT done`)))[0]?.n);
const metric = async (url: string, series: string) => {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(text.split('\n').find((line) => line.startsWith(`${series} `))?.split(' ')[1] ?? NaN);
};

describe('wakeOn', () => {
  it('starts a wake pass on a committed insert, although the schedule is a year away', { timeout: 60_000 }, async () => {
    const { url } = await wakingDaemon('wake_basic');
    await t.rows(sql`INSERT INTO wake_basic (name) VALUES ('first')`);
    await until(async () => (await notDone('wake_basic')) === 0, 'the row to be done');
    // Done by a wake pass: no tick is due until next year. (How soon is the benchmark's to measure.)
    expect(await wakePasses('wake-basic')).toBeGreaterThanOrEqual(1);
    expect(await metric(url, 'reconciler_wake_notifications_total{channel="wake_basic"}')).toBeGreaterThanOrEqual(1);
    expect(await metric(url, 'reconciler_wake_listening')).toBe(1);
  });

  it('folds a storm of 10,000 notifications into a handful of passes', { timeout: 60_000 }, async () => {
    const { url } = await wakingDaemon('wake_storm');
    // Distinct payloads, so that PostgreSQL does not fold them: 10,000 notifications at one commit, with one row to do.
    await t.rows(sql`WITH r AS (INSERT INTO wake_storm (name) VALUES ('one') RETURNING 1) SELECT count(pg_notify('wake_storm', n::text)) FROM generate_series(1, 10000) AS n, r`);
    await until(async () => (await metric(url, 'reconciler_wake_notifications_total{channel="wake_storm"}')) >= 10_001, 'every notification to arrive');
    await until(async () => (await notDone('wake_storm')) === 0, 'the row to be done');
    await until(async () => Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE status = 'running'`))[0]?.n) === 0, 'the passes to end');
    const passes = await wakePasses('wake-storm');
    expect(passes).toBeGreaterThanOrEqual(1);
    expect(passes).toBeLessThanOrEqual(5);
  });

  it('opens the LISTEN session again after the server kills it, runs one pass for what was missed, and counts it', { timeout: 60_000 }, async () => {
    const { daemon, url } = await wakingDaemon('wake_lost', { WAKE_DEBOUNCE: '20ms' });
    expect(await wakePasses('wake-lost')).toBe(0);
    // A row whose notification is lost (its trigger off): only the pass that follows the reconnect can find it.
    await t.rows(sql`ALTER TABLE wake_lost DISABLE TRIGGER wake_lost_reconciler_notify`);
    await t.rows(sql`INSERT INTO wake_lost (name) VALUES ('missed')`);
    await t.rows(sql`ALTER TABLE wake_lost ENABLE TRIGGER wake_lost_reconciler_notify`);
    expect(await notDone('wake_lost')).toBe(1);
    await t.rows(sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'reconciler-listen' AND datname = current_database()`);
    await daemon.waitForEvent('wake:down');
    await daemon.waitFor((l) => isEvent('wake:restored')(l) && (l.channels as string[]).includes('wake_lost'), 'the session to be back');
    await until(async () => (await notDone('wake_lost')) === 0, 'the missed row to be done');
    expect(await wakePasses('wake-lost')).toBe(1);
    expect(await metric(url, 'reconciler_wake_reconnects_total')).toBe(1);
    expect(await metric(url, 'reconciler_wake_listening')).toBe(1);
    // And it listens again: a new row is picked up by a wake.
    await t.rows(sql`INSERT INTO wake_lost (name) VALUES ('after')`);
    await until(async () => (await notDone('wake_lost')) === 0, 'the row inserted after to be done', 5_000);
    expect(daemon.events('wake:down')).toHaveLength(1); // one line per outage
  });

  it('debounces: the first notification wakes at once, the rest of a burst is one more wake when the window closes', async () => {
    await t.rows(sql`SELECT 1`); // the database is up
    const reconciler = resolveReconciler('burst', 'test', defineReconciler({ schedule: '0 0 1 1 *', wakeOn: ['wake_burst'], scan: async () => [], key: () => 'k', reconcile: async () => 'unchanged' }));
    const wakes: { names: string[]; at: number }[] = [];
    let counted = 0;
    let woken: () => void = () => undefined;
    const listener = new WakeListener({
      database: t.database, reconcilers: [reconciler], log: silentLog, debounceMs: 1_000,
      target: { wake: (names) => void (wakes.push({ names: [...names], at: performance.now() }), woken()), handOver: () => undefined },
      counters: { notification: () => counted++, reconnected: () => undefined, listening: () => undefined },
    });
    await listener.start();
    try {
      const next = () => new Promise<void>((resolve) => (woken = resolve));
      const first = next();
      const sent = performance.now();
      await t.rows(sql`SELECT count(pg_notify('wake_burst', n::text)) FROM generate_series(1, 2000) AS n`);
      await first;
      expect(wakes[0]!.at - sent).toBeLessThan(500); // at once, not after the window
      const second = next();
      await second;
      expect(wakes.map((w) => w.names)).toEqual([['burst'], ['burst']]);
      expect(wakes[1]!.at - wakes[0]!.at).toBeGreaterThanOrEqual(990); // the rest waited for the window to close
      expect(counted).toBe(2_000);
    } finally {
      await listener.stop();
    }
  });

  it('rejects a wakeOn that is not a list of channel names', () => {
    const base = { schedule: '* * * * *', scan: async () => [], key: () => 'k', reconcile: async () => 'unchanged' as const };
    expect(() => defineReconciler({ ...base, wakeOn: 'returns' as unknown as string[] })).toThrow("`wakeOn` must be a list of notification channels, e.g. ['returns']");
    expect(() => defineReconciler({ ...base, wakeOn: [''] })).toThrow('"" is not a notification channel');
    expect(() => defineReconciler({ ...base, wakeOn: ['x'.repeat(64)] })).toThrow('at most 63 bytes');
  });

  it('ships the returns trigger exactly as notifyTrigger writes it', () => {
    const migration = readFileSync(join(RETURNS_MIGRATIONS, '0001_returns_notify.sql'), 'utf8');
    expect(migration).toContain(notifyTrigger('returns', 'returns', ['INSERT']));
    expect(notifyTrigger('app.Orders')).toContain(`AFTER INSERT ON "app"."Orders" FOR EACH STATEMENT EXECUTE FUNCTION reconciler_notify('Orders')`);
    expect(notifyTrigger('orders', "it's", ['INSERT', 'UPDATE'])).toContain(`AFTER INSERT OR UPDATE ON "orders" FOR EACH STATEMENT EXECUTE FUNCTION reconciler_notify('it''s')`);
    expect(() => notifyTrigger('orders', 'orders', [])).toThrow('events must be some of INSERT, UPDATE, DELETE');
  });
});
