/**
 * Connection faults below the driver, through a TCP proxy written here: a stall that loses
 * what is sent (as a NAT or load balancer that dropped its state does) leaves a connection out
 * of step with the server. A query on it never gets an answer; after its query timeout, the
 * pool must throw that connection away, never hand it out again, or every later lease query
 * queues behind the lost one and the replica never runs another pass.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { createTestDatabase, silentLog, type TestDatabase } from './helpers/db.js';
import { FaultyProxy } from './helpers/proxy.js';
import { openDatabase, queryRows, type Database } from '../src/store/database.js';
import { migrateDatabase } from '../src/store/migrate.js';
import { LEASE_LOCK_NAMESPACE, acquireLease } from '../src/store/lease.js';
import { startProcess, until, useCleanup } from './helpers/processes.js';
import { API, jobsDir, tableSql } from './helpers/jobs.js';
import pg from 'pg';

let t: TestDatabase;
let proxy: FaultyProxy;
let database: Database;
beforeAll(async () => {
  t = await createTestDatabase();
  const target = new URL(inject('adminUrl'));
  proxy = await FaultyProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
  const url = new URL(t.url);
  url.host = `127.0.0.1:${proxy.port}`;
  database = await openDatabase({ databaseUrl: url.toString(), dataDir: '.data', log: silentLog, poolSize: 3, queryTimeoutMs: 500, controlQueryTimeoutMs: 500 });
  await migrateDatabase(database);
});
afterAll(async () => {
  await proxy?.close(); // first: it ends what the stalls left half open, which closing the pools would wait for
  await database?.close();
  await t?.drop();
});

const holder = { id: '00000000-0000-4000-8000-00000000000a', host: 'test', pid: 1 };

describe('a connection left out of step by a stall that lost its bytes', () => {
  it('is thrown away after its query times out, so the lease pool works again once the network does', async () => {
    // Both lease connections open and idle, as in a running daemon.
    await Promise.all([1, 2].map(() => queryRows(database.control, sql`SELECT pg_sleep(0.05)`)));
    // A lease statement the server holds (another session has the lock), so that its answer comes during the stall.
    const blocker = new pg.Client({ connectionString: t.url });
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query('SELECT pg_advisory_xact_lock($1::int, hashtext($2))', [LEASE_LOCK_NAMESPACE, 'stalled']);
      const held = acquireLease(database.control, { reconciler: 'stalled', partition: { index: 0, count: 4 }, holder, trigger: 'schedule', leaseMs: 3_000 });
      await until(async () => (await t.rows(sql`SELECT 1 FROM pg_stat_activity WHERE application_name = 'reconciler-lease' AND wait_event_type = 'Lock'`)).length > 0, 'the lease statement to wait for the lock');
      proxy.stall();
      await blocker.query('COMMIT'); // the server answers the lease's lock query now: the answer is lost
      const other = acquireLease(database.control, { reconciler: 'stalled-too', partition: { index: 0, count: 4 }, holder, trigger: 'schedule', leaseMs: 3_000 });
      const lost = await Promise.allSettled([held, other]);
      expect(lost.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    } finally {
      await blocker.end();
    }
    proxy.resume();
    // Every later lease statement answers: none waits behind a query whose answer was lost.
    for (let i = 0; i < 6; i++) {
      const result = await acquireLease(database.control, { reconciler: `after-${i}`, partition: { index: 0, count: 4 }, holder, trigger: 'manual', leaseMs: 3_000 });
      expect(result.acquired).toBe(true);
    }
    // The lease transaction the server still thinks open (its COMMIT never came) ends within the lease's length.
    await until(
      async () => (await t.rows(sql`SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`)).length === 0,
      'no lease transaction left open',
      10_000,
    );
  });

  it('does the same for the pool the items use', async () => {
    await Promise.all([1, 2, 3].map(() => queryRows(database.db, sql`SELECT 1`)));
    proxy.stall();
    const lost = await Promise.allSettled([1, 2, 3].map(() => database.db.transaction(async (tx) => tx.execute(sql`SELECT 1`))));
    expect(lost.every((r) => r.status === 'rejected')).toBe(true);
    proxy.resume();
    for (let i = 0; i < 12; i++) await database.db.transaction(async (tx) => tx.execute(sql`SELECT 1`));
    const rows = await Promise.all(Array.from({ length: 10 }, () => queryRows<{ one: number }>(database.db, sql`SELECT 1 AS one`)));
    expect(rows.flat()).toHaveLength(10);
  });
});

describe('shutdown', () => {
  const { children, dirs } = useCleanup();

  /**
   * A job whose items never finish and ignore ctx.signal: the worst an item can do to a shutdown.
   * With `markStarted`, each item first counts itself in `touched`, so that a test knows it is in flight.
   */
  const stuckJobs = async (table: string, markStarted = false) => {
    await t.rows(sql.raw(tableSql(3, table)));
    const jobs = jobsDir({
      [`${table.replace(/_/g, '-')}.ts`]: `import { defineReconciler, sql } from ${JSON.stringify(API)};
export default defineReconciler<{ id: number }>({
  schedule: '0 0 1 1 *',
  timeout: '1h',
  scan: async ({ db, after, limit }) => (await db.execute(sql\`SELECT id FROM ${table} WHERE id > \${after?.id ?? 0} ORDER BY id LIMIT \${limit}\`)).rows as unknown as { id: number }[],
  key: (item) => String(item.id),
  reconcile: async (item, ctx) => {
    ${markStarted ? `await ctx.db.execute(sql\`UPDATE ${table} SET touched = touched + 1 WHERE id = \${item.id}\`);` : ''}
    return new Promise<never>(() => undefined);
  },
});
`,
    });
    dirs.push(jobs);
    return jobs;
  };

  it('records the items it aborted in the pass, when the database still answers', async () => {
    const jobs = await stuckJobs('aborted_items', true);
    const daemon = startProcess(['daemon'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, SHUTDOWN_TIMEOUT: '1s', LEASE_TTL: '3s', LOG_LEVEL: 'info' });
    children.push(daemon);
    // All three items in flight (a held lease alone is not enough: a shutdown before the scan's page takes no item).
    await until(async () => (await t.rows(sql`SELECT 1 FROM aborted_items WHERE touched > 0`)).length === 3, 'the catch-up pass with its 3 items in flight', 30_000);
    daemon.child.kill('SIGTERM');
    await daemon.exited;
    const [run] = await t.rows<{ status: string; error: string }>(sql`SELECT status, error FROM reconciler.runs WHERE reconciler = 'aborted-items' ORDER BY id DESC LIMIT 1`);
    expect(run?.status).toBe('aborted');
    expect(run?.error).toMatch(/^shutting down: items still running after 1\.0s were aborted; 3 item\(s\) aborted in flight, no attempt spent: [123], [123], [123]$/);
    // No attempt spent: nothing in the failure memory, the next pass finds them again.
    expect(await t.rows(sql`SELECT 1 FROM reconciler.failures WHERE reconciler = 'aborted-items'`)).toHaveLength(0);
  });

  it('ends within SHUTDOWN_TIMEOUT + 2 s with a stalled database and an item that ignores its AbortSignal', async () => {
    const jobs = await stuckJobs('stuck_items');
    const url = new URL(t.url);
    url.host = `127.0.0.1:${proxy.port}`;
    const daemon = startProcess(['daemon'], { DATABASE_URL: url.toString(), JOBS_DIR: jobs.dir, SHUTDOWN_TIMEOUT: '2s', LEASE_TTL: '3s', LOG_LEVEL: 'info' });
    children.push(daemon);
    // Its catch-up pass has the items in flight, then the network stalls: nothing it sends arrives.
    await until(async () => (await t.rows(sql`SELECT 1 FROM reconciler.state WHERE reconciler = 'stuck-items' AND holder_id IS NOT NULL`)).length > 0, 'the catch-up pass', 30_000);
    proxy.stall();
    try {
      const signalled = Date.now();
      daemon.child.kill('SIGTERM');
      const exit = await daemon.exited;
      const took = Date.now() - signalled;
      expect(exit.code === 0 || exit.code === 143, JSON.stringify(exit)).toBe(true);
      // The bound is SHUTDOWN_TIMEOUT + 2 s; 500 ms more allow for a timer that fires late on a loaded machine.
      expect(took).toBeLessThan(2_000 + 2_000 + 500);
    } finally {
      proxy.resume();
    }
  });
});
