/**
 * Partitioned reconcilers (`partitions: N`): items split by a stable hash of their key, one
 * lease per partition, so that up to N replicas drain one reconciler side by side. In-process
 * engines for the lease and pass rules; real daemons and the CLI for what is about processes.
 */
import { describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { notifyTrigger, partitionOf } from '../src/index.js';
import type { Reconciler } from '../src/reconciler.js';
import { countFailures } from '../src/store/failures.js';
import { acquireLease, LEASE_LOCK_NAMESPACE } from '../src/store/lease.js';
import { Slots } from '../src/engine/slots.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { ALONE, type Membership } from '../src/store/database.js';
import { silentLog } from './helpers/db.js';
import pg from 'pg';
import { pino, type Logger } from 'pino';
import { handoverChannel, parseHandOver } from '../src/scheduler/handover.js';
import { randomUUID } from 'node:crypto';
import { useTestDatabase } from './helpers/db.js';
import { deferred, engine, reconciler } from './helpers/engine.js';
import { jobsDir, tableJob, tableSql } from './helpers/jobs.js';
import { isEvent, runCli, startProcess, until, useCleanup } from './helpers/processes.js';

const t = useTestDatabase({ resetEngineTables: true });
const { children, dirs } = useCleanup();

const keys = (n: number) => Array.from({ length: n }, (_, i) => `item-${i + 1}`);

/** A reconciler over in-memory keys whose scan filters on its partition, as a SQL scan would with reconciler.partition_of(). */
function quartered(name: string, options: { all: string[]; partitions?: number; concurrency?: number; filter?: boolean; reconcile: (key: string) => Promise<void> }): Reconciler {
  return reconciler<{ key: string }>(name, {
    schedule: '0 0 1 1 *',
    partitions: options.partitions ?? 4,
    concurrency: options.concurrency ?? 4,
    scan: async ({ after, limit, partition }) =>
      options.all
        .filter((k) => options.filter === false || partitionOf(k, partition.count) === partition.index)
        .filter((k) => after === undefined || k > after.key)
        .sort()
        .slice(0, limit)
        .map((key) => ({ key })),
    key: (item) => item.key,
    reconcile: async (item) => {
      await options.reconcile(item.key);
      return 'changed';
    },
  });
}

describe('partitionOf', () => {
  it('computes in JavaScript what reconciler.partition_of() computes in SQL, for every count', async () => {
    const sample = keys(500).concat(['return:1', 'return:2', 'ünïcödé', 'a'.repeat(300)]);
    for (const count of [2, 3, 4, 8, 16]) {
      const rows = await t.rows<{ key: string; p: number }>(sql`SELECT k AS key, reconciler.partition_of(k, ${count}::int) AS p FROM json_array_elements_text(${JSON.stringify(sample)}::json) AS k`);
      expect(rows.map((r) => [r.key, Number(r.p)])).toEqual(sample.map((k) => [k, partitionOf(k, count)]));
    }
    // Spread: no partition of 4 gets under a sixth of 500 keys.
    const sizes = [0, 1, 2, 3].map((p) => keys(500).filter((k) => partitionOf(k, 4) === p).length);
    for (const size of sizes) expect(size).toBeGreaterThan(500 / 6);
  });
});

describe('partitioned passes', () => {
  it('works every item once across the partitions, each under its own lease', async () => {
    const all = keys(200);
    const done: string[] = [];
    const r = quartered('split', { all, reconcile: async (key) => void done.push(key) });
    const e = engine(t.db, [r]);
    const outcomes = await Promise.all([0, 1, 2, 3].map((partition) => e.requestPass('split', { trigger: 'manual', partition })));
    expect(outcomes.map((o) => o.ran && o.result.partition)).toEqual([0, 1, 2, 3].map((index) => ({ index, count: 4 })));
    expect(done.sort()).toEqual([...all].sort());
    const runs = await t.rows<{ partition: number }>(sql`SELECT partition FROM reconciler.runs WHERE reconciler = 'split' ORDER BY partition`);
    expect(runs.map((row) => row.partition)).toEqual([0, 1, 2, 3]);
  });

  it('lets another process run a free partition while one is held, and tells who holds the other', async () => {
    const gate = deferred();
    const started = deferred();
    const all = keys(40);
    const inZero = all.filter((k) => partitionOf(k, 4) === 0);
    const r = quartered('held', {
      all,
      reconcile: async (key) => {
        if (key === inZero[0]) {
          started.resolve();
          await gate.promise;
        }
      },
    });
    const a = engine(t.db, [r], { host: 'replica-a', pid: 1 });
    const b = engine(t.db, [r], { host: 'replica-b', pid: 2 });
    const holding = a.requestPass('held', { trigger: 'manual', partition: 0 });
    await started.promise;
    const other = await b.requestPass('held', { trigger: 'manual', partition: 1 });
    expect(other.ran && other.result.status).toBe('succeeded');
    const blocked = await b.requestPass('held', { trigger: 'manual', partition: 0 });
    expect(blocked).toMatchObject({ ran: false, reason: 'held', holder: { host: 'replica-a', pid: 1 } });
    gate.resolve();
    expect(((await holding) as { ran: true }).ran).toBe(true);
  });

  it('holds a pass of a new partition count back until the passes of the old count end (4 → 8)', async () => {
    const gate = deferred();
    const started = deferred();
    const all = keys(80);
    const first = all.find((k) => partitionOf(k, 4) === 1)!;
    const old = quartered('recount', {
      all,
      partitions: 4,
      reconcile: async (key) => {
        if (key === first) {
          started.resolve();
          await gate.promise;
        }
      },
    });
    const renewed = quartered('recount', { all, partitions: 8, reconcile: async () => undefined });
    const before = engine(t.db, [old], { host: 'old-deploy', pid: 1 });
    const after = engine(t.db, [renewed], { host: 'new-deploy', pid: 2 });
    const running = before.requestPass('recount', { trigger: 'manual', partition: 1 });
    await started.promise;
    // Partition 5 of 8 is a half of partition 1 of 4, which is being worked: it must wait, and say for whom.
    expect(await after.requestPass('recount', { trigger: 'manual', partition: 5 })).toMatchObject({ ran: false, reason: 'held', holder: { host: 'old-deploy' } });
    // So must every other partition of the new count, overlapping or not: the rule is by count, not by slice.
    expect(await after.requestPass('recount', { trigger: 'manual', partition: 2 })).toMatchObject({ ran: false, reason: 'held' });
    gate.resolve();
    await running;
    const outcome = await after.requestPass('recount', { trigger: 'manual', partition: 5 });
    expect(outcome.ran && outcome.result.status).toBe('succeeded');
  });

  it('never lets passes of two partition counts take their leases at the same instant', async () => {
    const holder = (pid: number) => ({ id: randomUUID(), host: 'racer', pid });
    const base = { reconciler: 'racing-counts', trigger: 'manual' as const, leaseMs: 10_000 };
    for (let round = 0; round < 30; round++) {
      await t.rows(sql`DELETE FROM reconciler.state WHERE reconciler = 'racing-counts'`);
      // Partition 5 of 8 is half of partition 1 of 4: on separate connections, at once.
      const [four, eight] = await Promise.all([
        acquireLease(t.db, { ...base, partition: { index: 1, count: 4 }, holder: holder(4) }),
        acquireLease(t.db, { ...base, partition: { index: 5, count: 8 }, holder: holder(8) }),
      ]);
      expect([four.acquired, eight.acquired], `round ${round}`).not.toEqual([true, true]);
      expect([four.acquired, eight.acquired], `round ${round}`).toContain(true);
    }
  });

  it('lets a pass waiting for a shared slot give up when it is told to stop', async () => {
    const slots = new Slots(1);
    const stop = new AbortController();
    expect(await slots.take(stop.signal)).toBe(true);
    const waiting = slots.take(stop.signal);
    stop.abort();
    expect(await waiting).toBe(false);
    slots.give(); // the one slot is free again, and nobody is left queued for it
    expect(await slots.take(new AbortController().signal)).toBe(true);
  });

  it('shares the reconciler\'s concurrency among the partitions running in one process', async () => {
    let inFlight = 0;
    let most = 0;
    const r = quartered('shared', {
      all: keys(120),
      concurrency: 3,
      reconcile: async () => {
        most = Math.max(most, ++inFlight);
        await new Promise((resolve) => setImmediate(resolve));
        inFlight--;
      },
    });
    const e = engine(t.db, [r]);
    await Promise.all([0, 1, 2, 3].map((partition) => e.requestPass('shared', { trigger: 'manual', partition })));
    expect(most).toBe(3); // not 12: concurrency is per process, however many partitions it holds
  });

  it('leaves an item of another partition to that partition, and says the scan does not filter', async () => {
    const done: string[] = [];
    const r = quartered('unfiltered', { all: keys(40), filter: false, reconcile: async (key) => void done.push(key) });
    const lines: string[] = [];
    const log = (await import('pino')).pino({ level: 'error' }, { write: (line: string) => void lines.push(line) });
    const { Engine } = await import('../src/engine/engine.js');
    const e = new Engine({ db: t.db, reconcilers: [r], log, leaseMs: 10_000 });
    const outcome = await e.requestPass('unfiltered', { trigger: 'manual', partition: 2 });
    const mine = keys(40).filter((k) => partitionOf(k, 4) === 2);
    expect(done.sort()).toEqual(mine.sort());
    expect(outcome.ran && outcome.result.counts.found).toBe(mine.length);
    expect(lines.join('')).toContain(`returned ${40 - mine.length} item(s) of other partitions`);
    expect(lines.join('')).toContain('reconciler.partition_of(<key>, 4) = 2');
  });

  it('forgets, after a complete pass of a partition, only the failures of that partition', async () => {
    const all = keys(40);
    const failing = new Set([all.find((k) => partitionOf(k, 4) === 0)!, all.find((k) => partitionOf(k, 4) === 3)!]);
    let fail = true;
    const r = quartered('forget', { all, reconcile: async (key) => { if (fail && failing.has(key)) throw new Error('not yet'); } });
    const e = engine(t.db, [r]);
    for (const partition of [0, 3]) await e.requestPass('forget', { trigger: 'manual', partition });
    expect((await countFailures(t.db)).get('forget')?.backoff).toBe(2);
    // The item of partition 0 is done elsewhere: a complete pass of partition 0 no longer finds it and forgets it;
    // the failure of partition 3 stays, although that pass never saw it.
    fail = false;
    const zero = [...failing].find((k) => partitionOf(k, 4) === 0)!;
    const without = quartered('forget', { all: all.filter((k) => k !== zero), reconcile: async () => undefined });
    await engine(t.db, [without]).requestPass('forget', { trigger: 'manual', partition: 0 });
    expect((await countFailures(t.db)).get('forget')?.backoff).toBe(1);
  });

  it('refuses a partition the reconciler does not have', async () => {
    const e = engine(t.db, [quartered('bounds', { all: [], reconcile: async () => undefined })]);
    await expect(e.requestPass('bounds', { trigger: 'manual', partition: 4 })).rejects.toThrow('bounds has partitions 0 to 3; there is no partition 4');
    await expect(e.requestPass('bounds', { trigger: 'manual' })).rejects.toThrow('bounds has 4 partitions: name one (0 to 3), or run them all');
  });
});

describe('hand-over', () => {
  /**
   * A reconciler of 2 partitions over in-memory keys whose scan skips the keys in `done`, as a
   * scan of state would; with `hold`, the first key of partition 1 waits for its gate.
   */
  function twoPartitions(name: string, all: string[], done: string[], options: { hold?: { started: ReturnType<typeof deferred<void>>; gate: ReturnType<typeof deferred<void>> }; maxItemsPerPass?: number } = {}): Reconciler {
    const inOne = all.filter((k) => partitionOf(k, 2) === 1);
    return reconciler<{ key: string }>(name, {
      schedule: '0 0 1 1 *',
      partitions: 2,
      concurrency: 1,
      ...(options.maxItemsPerPass ? { maxItemsPerPass: options.maxItemsPerPass } : {}),
      scan: async ({ after, limit, partition }) =>
        all
          .filter((k) => partitionOf(k, partition.count) === partition.index && !done.includes(k) && (after === undefined || k > after.key))
          .sort()
          .slice(0, limit)
          .map((key) => ({ key })),
      key: (item) => item.key,
      reconcile: async ({ key }) => {
        if (options.hold && key === inOne[0]) {
          options.hold.started.resolve();
          await options.hold.gate.promise;
        }
        done.push(key);
        return 'changed';
      },
    });
  }

  /** A pino logger that keeps its lines, and awaits one. */
  function captureLog(): { log: Logger; waitFor: (what: (line: Record<string, unknown>) => boolean) => Promise<void> } {
    const lines: Record<string, unknown>[] = [];
    const waiters = new Set<() => void>();
    const log = pino({ level: 'debug' }, { write: (text: string) => { lines.push(JSON.parse(text) as Record<string, unknown>); for (const wake of [...waiters]) wake(); } });
    const waitFor = (what: (line: Record<string, unknown>) => boolean) =>
      new Promise<void>((resolve) => {
        const check = () => lines.some(what) && (waiters.delete(check), resolve());
        waiters.add(check);
        check();
      });
    return { log, waitFor };
  }

  /** A session listening on the hand-over channel, as a daemon's listen session does. */
  async function listenForHandOvers(url: string): Promise<{ next: () => Promise<string>; end: () => Promise<void> }> {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    const queue: string[] = [];
    let arrived: (() => void) | undefined;
    client.on('notification', (notice) => {
      queue.push(notice.payload ?? '');
      arrived?.();
    });
    await client.query(`LISTEN ${handoverChannel()}`);
    return {
      next: async () => {
        while (queue.length === 0) await new Promise<void>((resolve) => (arrived = resolve));
        return queue.shift()!;
      },
      end: () => client.end(),
    };
  }

  const partitionRuns = async (name: string, partition: number) =>
    (await t.rows<{ trigger: string; complete: boolean }>(sql`SELECT trigger, complete FROM reconciler.runs WHERE reconciler = ${name} AND partition = ${partition} ORDER BY id`)).map((run) => [run.trigger, run.complete]);

  /** State rows as after a pass of each partition just now: no catch-up is due at start. */
  /** Both partitions ran at the database's now(), which it returns: a scheduler whose clock says that time owes no catch-up. */
  const ranJustNow = async (name: string): Promise<Date> => {
    const [row] = await t.rows<{ at: Date | string }>(
      sql`INSERT INTO reconciler.state (reconciler, partition, partitions, last_started_at, last_tick_at, last_run_id) VALUES (${name}, 0, 2, now(), now(), 0), (${name}, 1, 2, now(), now(), 0) RETURNING last_tick_at AS at`,
    );
    return new Date(row!.at);
  };

  it('gives up a partition when another replica comes to own it, and runs it again itself when nobody takes it', async () => {
    const all = keys(60);
    const inOne = all.filter((k) => partitionOf(k, 2) === 1);
    const done: string[] = [];
    const hold = { started: deferred(), gate: deferred() };
    const r = twoPartitions('joined', all, done, { hold });
    let membership: Membership = ALONE;
    const scheduler = new Scheduler({ engine: engine(t.db, [r]), log: silentLog, membership: async () => membership, handOverLookMs: 0, handOverGraceMs: 100 });
    try {
      await scheduler.start(); // never ran: a catch-up pass of each partition, both its own while it is alone
      await hold.started.promise;
      membership = { rank: 0, count: 2 }; // a replica joined, ranked 1: partition 1 is its now
      hold.gate.resolve();
      // Nobody listens for the hand-over here: after the grace, this scheduler runs partition 1 again, to its end.
      await until(async () => (await t.rows(sql`SELECT 1 FROM reconciler.runs WHERE reconciler = 'joined' AND partition = 1 AND trigger = 'handback' AND status = 'succeeded'`)).length > 0, 'the hand-back pass');
    } finally {
      await scheduler.stop();
      await scheduler.drain();
    }
    const runs = await t.rows<{ partition: number; trigger: string; complete: boolean; found: number }>(
      sql`SELECT partition, trigger, complete, found FROM reconciler.runs WHERE reconciler = 'joined' ORDER BY id`,
    );
    const one = runs.filter((run) => run.partition === 1);
    expect(one.map((run) => [run.trigger, run.complete])).toEqual([['startup', false], ['handback', true]]);
    expect(Number(one[0]!.found)).toBeLessThan(inOne.length); // it stopped taking items when it learnt of the newcomer
    expect(runs.filter((run) => run.partition === 0).map((run) => [run.trigger, run.complete])).toEqual([['startup', true]]); // still its own
    expect(done.sort()).toEqual([...all].sort()); // each key once
  });

  it('lets the new owner run a given-up partition at once; the giver\'s fallback and a repeated notice then start nothing', async () => {
    const all = keys(60);
    const done: string[] = [];
    const hold = { started: deferred(), gate: deferred() };
    let membership: Membership = ALONE;
    const giverLog = captureLog();
    const giver = new Scheduler({ engine: engine(t.db, [twoPartitions('owned', all, done, { hold })], { log: giverLog.log }), log: giverLog.log, membership: async () => membership, handOverLookMs: 0 });
    const owner = new Scheduler({ engine: engine(t.db, [twoPartitions('owned', all, done)]), log: silentLog, membership: async () => ({ rank: 1, count: 2 }) });
    const listener = await listenForHandOvers(t.url);
    try {
      await giver.start(); // never ran: a catch-up pass of each partition, both its own while it is alone
      await hold.started.promise;
      await owner.start(); // its catch-up of partition 1 finds the giver's pass and watches it (lease 10 s)
      membership = { rank: 0, count: 2 }; // the owner joined, ranked 1: partition 1 is its now
      hold.gate.resolve();
      const notice = parseHandOver(await listener.next());
      expect(notice).toMatchObject({ reconciler: 'owned', partition: 1, partitions: 2 });
      await owner.handOver(notice!);
      await owner.drain();
      expect(await partitionRuns('owned', 1)).toEqual([['startup', false], ['handover', true]]);
      // The giver's own look, 3 s on, finds the partition served (or its pass still running, and watches it).
      await giverLog.waitFor((line) => line.event === 'pass:already-served' || line.event === 'lease:held');
      await giver.drain();
      await owner.handOver(notice!); // late, or sent twice: the run it names is no longer the last
      await owner.drain();
    } finally {
      await Promise.all([giver.stop(), owner.stop(), listener.end()]);
      await Promise.all([giver.drain(), owner.drain()]);
    }
    expect(await partitionRuns('owned', 1)).toEqual([['startup', false], ['handover', true]]);
    expect(done.sort()).toEqual([...all].sort()); // each key once
  });

  it('waits past its grace for a live owner that finds the given-up partition by looking (no notice), rather than running it again itself', async () => {
    const all = keys(60);
    const done: string[] = [];
    const hold = { started: deferred(), gate: deferred() };
    let membership: Membership = ALONE;
    const ownerLog = captureLog();
    // The owner looks every 400 ms, later than the giver's 100 ms grace (a loaded machine, a slow pooler), and hears no notice.
    const giver = new Scheduler({ engine: engine(t.db, [twoPartitions('late-owner', all, done, { hold })]), log: silentLog, membership: async () => membership, handOverLookMs: 0, handOverGraceMs: 100 });
    const owner = new Scheduler({ engine: engine(t.db, [twoPartitions('late-owner', all, done)], { log: ownerLog.log }), log: ownerLog.log, membership: async () => ({ rank: 1, count: 2 }), handOverLookMs: 400 });
    try {
      await giver.start();
      await hold.started.promise;
      await owner.start();
      await ownerLog.waitFor((line) => line.event === 'lease:held' && line.partition === 1); // its catch-up found the giver's pass, and watches it
      membership = { rank: 0, count: 2 };
      hold.gate.resolve();
      await until(async () => (await partitionRuns('late-owner', 1)).some(([trigger]) => trigger === 'handover'), "the owner's hand-over pass");
      await owner.drain();
      await giver.drain();
    } finally {
      await Promise.all([giver.stop(), owner.stop()]);
      await Promise.all([giver.drain(), owner.drain()]);
    }
    expect(await partitionRuns('late-owner', 1)).toEqual([['startup', false], ['handover', true]]); // no hand-back
    expect(done.sort()).toEqual([...all].sort()); // each key once
  });

  it('runs the rest of an own partition whose pass it found served by one that gave it up before it looked (no notice)', async () => {
    const all = keys(60);
    const done: string[] = [];
    const hold = { started: deferred(), gate: deferred() };
    let membership: Membership = ALONE;
    const giver = new Scheduler({ engine: engine(t.db, [twoPartitions('served-early', all, done, { hold })]), log: silentLog, membership: async () => membership, handOverLookMs: 0, handOverGraceMs: 10_000 });
    const owner = new Scheduler({ engine: engine(t.db, [twoPartitions('served-early', all, done)]), log: silentLog, membership: async () => ({ rank: 1, count: 2 }) });
    const locker = new pg.Client({ connectionString: t.url });
    await locker.connect();
    try {
      await giver.start();
      await hold.started.promise;
      // The owner's catch-up decides while the giver's pass runs, and asks for the lease only once that pass has ended.
      await locker.query('BEGIN');
      await locker.query('SELECT pg_advisory_xact_lock($1::int, hashtext($2))', [LEASE_LOCK_NAMESPACE, 'served-early']);
      await owner.start();
      await until(async () => (await t.rows(sql`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`)).length > 0, "the owner's catch-up to wait for the lease lock");
      membership = { rank: 0, count: 2 };
      hold.gate.resolve();
      await until(async () => (await t.rows(sql`SELECT 1 FROM reconciler.runs WHERE reconciler = 'served-early' AND partition = 1 AND status <> 'running'`)).length > 0, "the giver's pass to end");
      await locker.query('COMMIT');
      // The giver's hand-back is 10 s (and more, the owner being alive) away: the owner runs the rest itself.
      await until(async () => (await partitionRuns('served-early', 1)).some(([trigger]) => trigger === 'handover'), "the owner's hand-over pass");
      await owner.drain();
    } finally {
      await locker.end();
      await Promise.all([giver.stop(), owner.stop()]);
      await Promise.all([giver.drain(), owner.drain()]);
    }
    expect(await partitionRuns('served-early', 1)).toEqual([['startup', false], ['handover', true]]);
    expect(done.sort()).toEqual([...all].sort()); // each key once
  });

  it("gives a free partition's live owner a grace to start it before its sweep runs it", async () => {
    const all = keys(40);
    const sweeperDone: string[] = [];
    const ownerDone: string[] = [];
    // Partition 1 ran just now; partition 0 never did: a catch-up of it is due, and it is rank 0's.
    const [row] = await t.rows<{ at: Date | string }>(
      sql`INSERT INTO reconciler.state (reconciler, partition, partitions, last_started_at, last_tick_at, last_run_id) VALUES ('late-start', 1, 2, now(), now(), 0) RETURNING last_tick_at AS at`,
    );
    const now = () => new Date(row!.at);
    const sweeperLog = captureLog();
    // The sweeper (rank 1) sweeps at once, and would run partition 0 10 s on; its owner (rank 0) starts late, but within that.
    const sweeper = new Scheduler({ engine: engine(t.db, [twoPartitions('late-start', all, sweeperDone)], { log: sweeperLog.log }), log: sweeperLog.log, membership: async () => ({ rank: 1, count: 2 }), sweepDelayMs: 0, sweepGraceMs: 10_000, now });
    const owner = new Scheduler({ engine: engine(t.db, [twoPartitions('late-start', all, ownerDone)]), log: silentLog, membership: async () => ({ rank: 0, count: 2 }), now });
    try {
      await sweeper.start(); // its sweep finds partition 0 free
      await sweeperLog.waitFor((line) => line.event === 'sweep:free' && line.partition === 0);
      // Whatever the sweep started at once has started by the next turn of the timers: let it end before the owner starts.
      await new Promise((resolve) => setTimeout(resolve, 0));
      await sweeper.drain();
      await owner.start();
      await until(async () => (await partitionRuns('late-start', 0)).length > 0, 'a pass of partition 0');
      await owner.drain();
    } finally {
      await Promise.all([sweeper.stop(), owner.stop()]);
      await Promise.all([sweeper.drain(), owner.drain()]);
    }
    expect(ownerDone.sort()).toEqual(all.filter((k) => partitionOf(k, 2) === 0).sort());
    expect(sweeperDone).toEqual([]);
  });

  it('runs a notice only for a partition this replica owns, of its own count; one that comes while a launch of it is in flight runs after it', async () => {
    const all = keys(40);
    const done: string[] = [];
    await ranJustNow('noticed');
    const owner = new Scheduler({ engine: engine(t.db, [twoPartitions('noticed', all, done)]), log: silentLog, membership: async () => ({ rank: 1, count: 2 }) });
    const locker = new pg.Client({ connectionString: t.url });
    await locker.connect();
    try {
      await owner.start();
      await owner.handOver({ reconciler: 'noticed', partition: 0, partitions: 2, runId: 0 }); // rank 0's partition
      await owner.handOver({ reconciler: 'noticed', partition: 1, partitions: 4, runId: 0 }); // another deploy's count
      await owner.handOver({ reconciler: 'unknown', partition: 1, partitions: 2, runId: 0 });
      await owner.drain();
      expect(await t.rows(sql`SELECT 1 FROM reconciler.runs WHERE reconciler = 'noticed'`)).toEqual([]);
      // Another replica ran partition 1 to its end (run 7). A stale notice's pass waits for the lease lock while
      // the fresh notice comes: the stale one starts nothing when it gets the lock, and the fresh one runs after it.
      await t.rows(sql`UPDATE reconciler.state SET last_run_id = 7 WHERE reconciler = 'noticed' AND partition = 1`);
      await locker.query('BEGIN');
      await locker.query('SELECT pg_advisory_xact_lock($1::int, hashtext($2))', [LEASE_LOCK_NAMESPACE, 'noticed']);
      await owner.handOver({ reconciler: 'noticed', partition: 1, partitions: 2, runId: 3 });
      await until(async () => (await t.rows(sql`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`)).length > 0, 'the stale notice\'s pass to wait for the lock');
      await owner.handOver({ reconciler: 'noticed', partition: 1, partitions: 2, runId: 7 });
      await locker.query('COMMIT');
      await owner.drain();
    } finally {
      await locker.end();
      await owner.stop();
      await owner.drain();
    }
    expect(await partitionRuns('noticed', 1)).toEqual([['handover', true]]);
    expect(await partitionRuns('noticed', 0)).toEqual([]);
    expect(done.sort()).toEqual(all.filter((k) => partitionOf(k, 2) === 1).sort());
  });

  it('runs a tick that comes during a hand-over pass right after it, rather than skipping it', async () => {
    const all = keys(40);
    const done: string[] = [];
    const hold = { started: deferred(), gate: deferred() };
    // Every second's tick is due soon after: the catch-up decision takes the time of that last run, so that a
    // slow start (a loaded machine) does not add a catch-up pass before the hand-over.
    const ranAt = await ranJustNow('ticking');
    const ticking = { ...twoPartitions('ticking', all, done, { hold }), schedule: '* * * * * *' };
    const e = engine(t.db, [ticking]);
    const skipped: unknown[] = [];
    e.events.on('tick:skipped', (event) => void skipped.push(event));
    const owner = new Scheduler({ engine: e, log: silentLog, membership: async () => ({ rank: 1, count: 2 }), sweepDelayMs: 0, sweepGraceMs: 0, now: () => ranAt });
    try {
      await owner.start();
      await owner.handOver({ reconciler: 'ticking', partition: 1, partitions: 2, runId: 0 });
      await hold.started.promise;
      // A tick came while the hand-over pass runs: its sweep has run partition 0, which is not this replica's.
      // (Its pass waits for the one slot the hand-over pass holds: concurrency is shared by the partitions.)
      await until(async () => (await partitionRuns('ticking', 0)).length > 0, 'a tick');
      expect(skipped).toEqual([]); // (later ticks may meet the short passes that follow: not this test's)
      hold.gate.resolve();
      await until(async () => (await partitionRuns('ticking', 1)).length > 1, 'the pass after the hand-over pass');
    } finally {
      await owner.stop();
      await owner.drain();
    }
    expect((await partitionRuns('ticking', 1)).slice(0, 2)).toEqual([['handover', true], ['schedule', true]]);
  });

  it('tells the owner of a partition given up while the scheduler stops, and does not run it again', async () => {
    const all = keys(40);
    const done: string[] = [];
    const hold = { started: deferred(), gate: deferred() };
    let membership: Membership = ALONE;
    const scheduler = new Scheduler({ engine: engine(t.db, [twoPartitions('stopping', all, done, { hold })]), log: silentLog, membership: async () => membership, handOverLookMs: 0, handOverGraceMs: 0 });
    const listener = await listenForHandOvers(t.url);
    try {
      await scheduler.start();
      await hold.started.promise;
      membership = { rank: 0, count: 2 };
      await scheduler.stop();
      hold.gate.resolve();
      await scheduler.drain(); // which waits for the announcement
      expect(parseHandOver(await listener.next())).toMatchObject({ reconciler: 'stopping', partition: 1, partitions: 2 });
    } finally {
      await listener.end();
    }
    expect(await partitionRuns('stopping', 1)).toEqual([['startup', false]]); // given up, and not run again here
  });

  it('never hands over a budgeted reconciler\'s partition: another pass in the period would pass the budget', async () => {
    const all = keys(40);
    const done: string[] = [];
    const hold = { started: deferred(), gate: deferred() };
    let membership: Membership = ALONE;
    const scheduler = new Scheduler({ engine: engine(t.db, [twoPartitions('budgeted', all, done, { hold, maxItemsPerPass: 1_000 })]), log: silentLog, membership: async () => membership, handOverLookMs: 0 });
    try {
      await scheduler.start();
      await hold.started.promise;
      membership = { rank: 0, count: 2 };
      hold.gate.resolve();
    } finally {
      await scheduler.stop();
      await scheduler.drain();
    }
    expect(await partitionRuns('budgeted', 1)).toEqual([['startup', true]]);
    expect(done.sort()).toEqual([...all].sort());
  });
});

describe('parseHandOver', () => {
  it('reads what announceHandOver sends, and nothing else', () => {
    expect(parseHandOver('{"reconciler":"settle-returns","partition":1,"partitions":4,"runId":17}')).toEqual({ reconciler: 'settle-returns', partition: 1, partitions: 4, runId: 17 });
    expect(parseHandOver('{"reconciler":"settle-returns","partition":1,"partitions":4}')).toBeUndefined(); // no run to expect
    expect(parseHandOver('{"reconciler":"settle-returns","partition":-1,"partitions":4,"runId":17}')).toBeUndefined();
    expect(parseHandOver('{"reconciler":"settle-returns","partition":"1","partitions":4,"runId":17}')).toBeUndefined();
    expect(parseHandOver('sent by hand')).toBeUndefined();
    expect(parseHandOver('null')).toBeUndefined();
  });
});

describe('partitions in the CLI and the daemon', () => {
  const partitionedJobs = async (table: string, rows: number, extra = '', delayMs?: number) => {
    await t.rows(sql.raw(tableSql(rows, table)));
    const jobs = jobsDir({ [`${table.replace(/_/g, '-')}.ts`]: tableJob({ table, partitions: 4, concurrency: 2, extra, ...(delayMs ? { delayMs } : {}) }) });
    dirs.push(jobs);
    return jobs;
  };
  const notDone = async (table: string) => Number((await t.rows<{ n: number }>(sql.raw(`SELECT count(*)::int AS n FROM ${table} WHERE NOT done`)))[0]?.n);
  /** No pass is running: every run row holds its counts (a pass records what it changed when it ends). */
  const passesEnded = () => until(async () => Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE status = 'running'`))[0]?.n) === 0, 'the passes to end', 60_000);

  it('`run --partition 2` runs that partition only; a partition it does not have is a usage error', { timeout: 60_000 }, async () => {
    const jobs = await partitionedJobs('cli_parts', 100);
    const env = { DATABASE_URL: t.url, JOBS_DIR: jobs.dir };
    const one = await runCli(['run', 'cli-parts', '--partition', '2'], env);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/^cli-parts partition 2: pass \d+ succeeded/);
    const left = await t.rows<{ name: string }>(sql.raw('SELECT name FROM cli_parts WHERE NOT done'));
    expect(left.map((r) => r.name).sort()).toEqual(keys(100).filter((k) => partitionOf(k, 4) !== 2).sort());

    const bad = await runCli(['run', 'cli-parts', '--partition', '4'], env);
    expect([bad.code, bad.stderr.trim()]).toEqual([2, 'reconciler: cli-parts has partitions 0 to 3; there is no partition 4']);
    const elsewhere = keys(100).find((k) => partitionOf(k, 4) === 1)!;
    const wrongKey = await runCli(['run', 'cli-parts', '--partition', '2', '--key', elsewhere], env);
    expect([wrongKey.code, wrongKey.stderr.trim()]).toEqual([2, `reconciler: key "${elsewhere}" is in partition 1 of cli-parts, not 2; leave out --partition (--key finds its partition)`]);
    const notNumber = await runCli(['run', 'cli-parts', '--partition', 'two'], env);
    expect(notNumber.code).toBe(2);
    expect(notNumber.stderr).toContain('expected a whole number');

    // Without --partition: every partition, one pass each.
    const all = await runCli(['run', 'cli-parts'], env);
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout.trim().split('\n').map((line) => line.replace(/: pass.*/, ''))).toEqual([0, 1, 2, 3].map((p) => `cli-parts partition ${p}`));
    expect(await notDone('cli_parts')).toBe(0);

    const list = await runCli(['list'], env);
    expect(list.code, list.stderr).toBe(0);
    for (const p of [0, 1, 2, 3]) expect(list.stdout).toMatch(new RegExp(`^  partition ${p} +succeeded`, 'm'));
    expect(list.stdout).toContain('0 of 4 partitions');
    const json = JSON.parse((await runCli(['list', '--json'], env)).stdout) as { reconcilers: { partitions: { partition: number; lastStatus: string }[] }[] };
    expect(json.reconcilers[0]!.partitions.map((p) => [p.partition, p.lastStatus])).toEqual([0, 1, 2, 3].map((p) => [p, 'succeeded']));
  });

  it('two daemons split the partitions, two each, and drain the table together', { timeout: 90_000 }, async () => {
    const jobs = await partitionedJobs('replica_parts', 0, "wakeOn: ['replica_parts'],");
    for (const statement of notifyTrigger('replica_parts', 'replica_parts', ['INSERT']).split('--> statement-breakpoint')) await t.rows(sql.raw(statement));
    const env = { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info', LEASE_TTL: '2s' };
    const daemons = [startProcess(['daemon'], env), startProcess(['daemon'], env)];
    children.push(...daemons);
    for (const d of daemons) await d.waitForEvent('daemon:started');
    // Both are up and counted each other, and every partition's catch-up pass (over an empty table) has
    // ended: a catch-up still due now expects a run that is no longer the last, and starts nothing.
    // What follows is a wake both receive. The table was empty until now, so runs that changed rows are this wake's.
    await until(async () => Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.replicas WHERE expires_at > now()`))[0]?.n) === 2, 'both replicas counted');
    await until(async () => Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.state WHERE reconciler = 'replica-parts' AND last_run_id IS NOT NULL AND holder_id IS NULL`))[0]?.n) === 4, 'every partition\'s catch-up pass to end');
    await t.rows(sql.raw(`INSERT INTO replica_parts (name) SELECT 'item-' || n FROM generate_series(1, 400) AS n`));
    await until(async () => (await notDone('replica_parts')) === 0, 'every row to be done');
    await passesEnded();
    const runs = await t.rows<{ partition: number; pid: number; changed: number }>(
      sql`SELECT partition, pid, changed FROM reconciler.runs WHERE changed > 0 ORDER BY partition`,
    );
    const pids = new Map<number, Set<number>>();
    for (const run of runs) pids.set(run.pid, (pids.get(run.pid) ?? new Set()).add(run.partition));
    // Each daemon worked two partitions, and no partition was worked by both.
    expect([...pids.values()].map((set) => set.size).sort()).toEqual([2, 2]);
    expect(new Set(runs.map((r) => r.partition)).size).toBe(4);
    expect(Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM replica_parts WHERE touched <> 1`))[0]?.n)).toBe(0);
  });

  it('a replica that starts alone gives half its partitions to one that joins mid-backlog', { timeout: 90_000 }, async () => {
    const jobs = await partitionedJobs('joined_parts', 800, '', 40);
    const env = { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info', LEASE_TTL: '10s' };
    const first = startProcess(['daemon'], env);
    children.push(first);
    const url = String((await first.waitForEvent('http:listening')).url);
    // Alone, it claims every partition for its catch-up passes: about 16 s of work at 2 items at a time.
    await until(async () => Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.state WHERE reconciler = 'joined-parts' AND holder_pid = ${first.pid!}`))[0]?.n) === 4, 'the first daemon to hold all 4 partitions');
    const second = startProcess(['daemon'], env);
    children.push(second);
    const handedOver = await first.waitFor((l) => isEvent('pass:finish')(l) && typeof l.handedOver === 'string', 'the first daemon to hand a partition over', 30_000);
    expect(String(handedOver.msg)).toMatch(/^joined-parts partition \d: pass \d+ succeeded in .*\(handed over: 2 replicas share the partitions now, and partition \d is the one ranked \d's \(this one is ranked \d\)\)$/);
    await until(async () => (await notDone('joined_parts')) === 0, 'every row to be done', 60_000);
    await passesEnded();
    const worked = await t.rows<{ pid: number; partitions: number }>(
      sql`SELECT pid, count(DISTINCT partition)::int AS partitions FROM reconciler.runs WHERE reconciler = 'joined-parts' AND changed > 0 GROUP BY pid ORDER BY pid`,
    );
    // The newcomer worked the two partitions it was given, long before a lease could lapse (LEASE_TTL is 10 s).
    expect(Object.fromEntries(worked.map((w) => [w.pid, Number(w.partitions)]))).toMatchObject({ [second.pid!]: 2 });
    expect(Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE reconciler = 'joined-parts' AND status = 'abandoned'`))[0]?.n)).toBe(0);
    expect(Number((await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM joined_parts WHERE touched <> 1`))[0]?.n)).toBe(0);
    const gaveUp = first.lines.filter((l) => typeof l.handedOver === 'string').length;
    expect(gaveUp).toBe(2);
    expect(await (await fetch(`${url}/metrics`)).text()).toMatch(/^reconciler_partitions_handed_over_total\{reconciler="joined-parts"\} 2$/m);
  });
});
