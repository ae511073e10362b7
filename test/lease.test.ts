import { describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import pg from 'pg';
import { useTestDatabase } from './helpers/db.js';
import { deferred, engine, numbers, reconciler } from './helpers/engine.js';
import { acquireLease } from '../src/store/lease.js';
import { pruneRuns } from '../src/store/runs.js';

const t = useTestDatabase({ resetEngineTables: true });

/** A reconciler whose single item waits until released: a pass held open on demand. */
function heldOpen(name = 'held') {
  const gate = deferred<void>();
  const entered = deferred<void>();
  const definition = reconciler(name, {
    schedule: '* * * * *',
    scan: numbers(1),
    key: () => 'only',
    reconcile: async (_item) => {
      entered.resolve();
      await gate.promise;
      return 'changed' as const;
    },
  });
  return { definition, gate, entered };
}

describe('pass leases', () => {
  it('lets only one process run a pass of a reconciler, and names the holder to the other', async () => {
    const { definition, gate, entered } = heldOpen();
    const a = engine(t.db, [definition], { host: 'replica-a', pid: 101 });
    const b = engine(t.db, [definition], { host: 'replica-b', pid: 202 });
    const first = a.requestPass('held', { trigger: 'manual' });
    await entered.promise;
    const second = await b.requestPass('held', { trigger: 'manual' });
    expect(second).toMatchObject({ ran: false, reason: 'held', holder: { host: 'replica-a', pid: 101 } });
    gate.resolve();
    expect(await first).toMatchObject({ ran: true, result: { status: 'succeeded' } });
    expect(await b.requestPass('held', { trigger: 'manual' })).toMatchObject({ ran: true });
  });

  it('takes over a lease whose holder stopped renewing it, and marks that run abandoned', async () => {
    const dead = { id: '00000000-0000-4000-8000-000000000001', host: 'gone', pid: 999 };
    const lease = await acquireLease(t.db, { reconciler: 'orphan', partition: { index: 0, count: 1 }, holder: dead, trigger: 'schedule', leaseMs: 60_000 });
    expect(lease.acquired).toBe(true);
    const e = engine(t.db, [reconciler('orphan', { schedule: '* * * * *', scan: numbers(1), key: () => 'k', reconcile: async () => 'changed' })]);
    expect(await e.requestPass('orphan', { trigger: 'manual' })).toMatchObject({ ran: false, reason: 'held' });
    // The holder died: time passes on the database clock until its lease has lapsed.
    await t.rows(sql`UPDATE reconciler.state SET lease_expires_at = now() - interval '1 millisecond' WHERE reconciler = 'orphan'`);
    expect(await e.requestPass('orphan', { trigger: 'manual' })).toMatchObject({ ran: true });
    const runs = await t.rows<{ status: string; host: string }>(sql`SELECT status, host FROM reconciler.runs ORDER BY id`);
    expect(runs).toEqual([{ status: 'abandoned', host: 'gone' }, { status: 'succeeded', host: expect.any(String) }]);
  });

  it('runs a scheduled tick once across replicas', async () => {
    const definition = reconciler('ticking', { schedule: '* * * * *', scan: numbers(1), key: () => 'k', reconcile: async () => 'changed' });
    const a = engine(t.db, [definition], { host: 'a' });
    const b = engine(t.db, [definition], { host: 'b' });
    // Each replica's cron fires for the same nominal tick; a replica whose clock runs a little late comes second.
    const tick = new Date(Math.floor(Date.now() / 1_000) * 1_000);
    expect(await a.requestPass('ticking', { trigger: 'schedule', tick })).toMatchObject({ ran: true });
    expect(await b.requestPass('ticking', { trigger: 'schedule', tick })).toEqual({ ran: false, reason: 'already-served' });
    const nextTick = new Date(tick.getTime() + 60_000);
    expect(await b.requestPass('ticking', { trigger: 'schedule', tick: nextTick })).toMatchObject({ ran: true });
    expect(await a.requestPass('ticking', { trigger: 'schedule', tick: nextTick })).toEqual({ ran: false, reason: 'already-served' });
  });

  it('runs a catch-up pass only if no pass finished since the replica looked (compare-and-set on the last run)', async () => {
    const definition = reconciler('caught-up', { schedule: '* * * * *', scan: numbers(1), key: () => 'k', reconcile: async () => 'changed' });
    const a = engine(t.db, [definition], { host: 'a' });
    const b = engine(t.db, [definition], { host: 'b' });
    const tick = new Date(Math.floor(Date.now() / 60_000) * 60_000);
    // Both replicas start, both see "never ran" (last run 0), both ask for the same catch-up.
    expect(await a.requestPass('caught-up', { trigger: 'startup', tick, expectLastRunId: 0 })).toMatchObject({ ran: true });
    expect(await b.requestPass('caught-up', { trigger: 'startup', tick, expectLastRunId: 0 })).toEqual({ ran: false, reason: 'already-served' });
  });

  it('repeats the tick of an aborted pass on catch-up', async () => {
    const definition = reconciler('redo', { schedule: '* * * * *', scan: numbers(1), key: () => 'k', reconcile: async () => 'changed' });
    const e = engine(t.db, [definition]);
    const tick = new Date(Math.floor(Date.now() / 60_000) * 60_000);
    const first = await e.requestPass('redo', { trigger: 'schedule', tick });
    await t.rows(sql`UPDATE reconciler.state SET last_status = 'aborted' WHERE reconciler = 'redo'`);
    expect(await e.requestPass('redo', { trigger: 'schedule', tick })).toEqual({ ran: false, reason: 'already-served' });
    const lastRunId = first.ran ? first.result.runId! : 0;
    expect(await e.requestPass('redo', { trigger: 'startup', tick, expectLastRunId: lastRunId })).toMatchObject({ ran: true });
  });

  it('skips a tick that finds a pass still running, and counts it once across replicas', async () => {
    const { definition, gate, entered } = heldOpen('busy');
    const a = engine(t.db, [definition], { host: 'a' });
    const b = engine(t.db, [definition], { host: 'b' });
    const tick = new Date('2026-11-27T10:00:00Z');
    const running = a.requestPass('busy', { trigger: 'schedule', tick });
    await entered.promise;
    const skipped: string[] = [];
    a.events.on('tick:skipped', (s) => skipped.push(`a:${s.reason}`));
    b.events.on('tick:skipped', (s) => skipped.push(`b:${s.reason}`));
    // The same tick, seen late by another replica, is being served: that is not a skipped tick.
    expect(await b.requestPass('busy', { trigger: 'schedule', tick })).toMatchObject({ ran: false, reason: 'already-served', holder: { host: 'a' } });
    const next = new Date('2026-11-27T10:01:00Z');
    expect(await a.requestPass('busy', { trigger: 'schedule', tick: next })).toEqual({ ran: false, reason: 'running-here' });
    expect(await b.requestPass('busy', { trigger: 'schedule', tick: next })).toMatchObject({ ran: false, reason: 'held' });
    gate.resolve();
    await running;
    expect(skipped).toEqual(['a:running']);
    const [state] = await t.rows<{ skipped_ticks: string }>(sql`SELECT skipped_ticks FROM reconciler.state WHERE reconciler = 'busy'`);
    expect(Number(state!.skipped_ticks)).toBe(1);
  });

  it('aborts a pass whose lease was taken by another process', async () => {
    let aborted: unknown;
    const entered = deferred<void>();
    const e = engine(t.db, [reconciler('stolen', {
      schedule: '* * * * *',
      scan: numbers(1),
      key: () => 'k',
      reconcile: async (_, ctx) => {
        entered.resolve();
        await new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject((aborted = ctx.signal.reason))));
        return 'changed' as const;
      },
    })], { leaseMs: 600 });
    const running = e.requestPass('stolen', { trigger: 'manual' });
    await entered.promise;
    await t.rows(sql`UPDATE reconciler.state SET holder_id = '00000000-0000-4000-8000-000000000002' WHERE reconciler = 'stolen'`);
    const outcome = await running;
    expect(outcome).toMatchObject({ ran: true, result: { status: 'aborted', counts: { skipped: 1, failed: 0 } } });
    expect(String(aborted)).toContain('lease lost');
    expect(await t.rows(sql`SELECT key FROM reconciler.failures`)).toEqual([]); // not the item's fault: no attempt spent
  });

  it('aborts a pass whose lease renewal hangs, before the lease can lapse on the database', async () => {
    const entered = deferred<void>();
    const aborted = deferred<unknown>();
    const e = engine(t.db, [reconciler('stalled', {
      schedule: '* * * * *',
      scan: numbers(1),
      key: () => 'k',
      reconcile: async (_item, ctx) => {
        entered.resolve();
        await new Promise((_, reject) => ctx.signal.addEventListener('abort', () => {
          aborted.resolve(ctx.signal.reason);
          reject(ctx.signal.reason);
        }));
        return 'changed' as const;
      },
    })], { leaseMs: 1_500 });
    const running = e.requestPass('stalled', { trigger: 'manual' });
    await entered.promise;
    // Another session locks the lease row: every renewal now hangs, as on a stalled network.
    const blocker = new pg.Client({ connectionString: t.url });
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query(`SELECT 1 FROM reconciler.state WHERE reconciler = 'stalled' FOR UPDATE`);
      const started = performance.now();
      expect(String(await aborted.promise)).toContain('lease expired');
      expect(performance.now() - started).toBeLessThan(1_500);
    } finally {
      await blocker.query('ROLLBACK'); // the pass can now record its end
      await blocker.end();
    }
    expect(await running).toMatchObject({ ran: true, result: { status: 'aborted' } });
  });

  it('stops a pass on shutdown: no new items, in-flight ones finish, recorded as aborted with counts', async () => {
    const started: number[] = [];
    const gate = deferred<void>();
    const e = engine(t.db, [reconciler('draining', {
      schedule: '* * * * *',
      concurrency: 2,
      scan: numbers(10),
      key: (i) => `n${i.n}`,
      reconcile: async (i) => {
        started.push(i.n);
        await gate.promise;
        return 'changed' as const;
      },
    })]);
    const running = e.requestPass('draining', { trigger: 'manual' });
    while (started.length < 2) await new Promise((resolve) => setImmediate(resolve));
    const stopping = e.stop(5_000);
    gate.resolve();
    await stopping;
    const outcome = await running;
    expect(outcome).toMatchObject({ ran: true, result: { status: 'aborted', counts: { changed: 2 }, complete: false } });
    expect(started).toEqual([1, 2]);
    expect(await e.requestPass('draining', { trigger: 'manual' })).toEqual({ ran: false, reason: 'stopping' });
  });
});

describe('history retention', () => {
  it('prunes finished passes older than the retention, and keeps the rest', async () => {
    await t.rows(sql`INSERT INTO reconciler.runs (reconciler, trigger, status, started_at, host, pid) VALUES
      ('old', 'schedule', 'succeeded', now() - interval '20 days', 'h', 1),
      ('old', 'schedule', 'running', now() - interval '20 days', 'h', 1),
      ('new', 'schedule', 'succeeded', now() - interval '1 day', 'h', 1)`);
    expect(await pruneRuns(t.db, 14 * 86_400_000)).toBe(1);
    expect((await t.rows<{ reconciler: string }>(sql`SELECT reconciler FROM reconciler.runs ORDER BY id`)).map((r) => r.reconciler)).toEqual(['old', 'new']);
  });
});
