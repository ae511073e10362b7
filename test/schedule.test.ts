import { describe, expect, it } from 'vitest';
import { nextTick, previousTick } from '../src/scheduler/cron.js';
import { dueForCatchUp, ownPartitions, retryGap, type StateSummary } from '../src/scheduler/scheduler.js';
import { laneOf } from '../src/engine/engine.js';
import { backoffDelay } from '../src/engine/backoff.js';
import { resolveReconciler, defineReconciler } from '../src/reconciler.js';

const at = (iso: string) => new Date(iso);
const hourly = resolveReconciler('hourly', 'x', defineReconciler({ schedule: '0 * * * *', scan: async () => [], key: () => 'k', reconcile: async () => 'changed' as const }));
const nineInBerlin = resolveReconciler('berlin', 'x', defineReconciler({ schedule: '0 9 * * *', timezone: 'Europe/Berlin', scan: async () => [], key: () => 'k', reconcile: async () => 'changed' as const }));

describe('cron arithmetic', () => {
  it('finds the next and the previous tick', () => {
    expect(nextTick('*/5 * * * *', 'UTC', at('2026-01-01T00:00:00Z'))).toEqual(at('2026-01-01T00:05:00Z'));
    expect(previousTick('*/5 * * * *', 'UTC', at('2026-01-01T00:07:30Z'))).toEqual(at('2026-01-01T00:05:00Z'));
    expect(previousTick('*/5 * * * *', 'UTC', at('2026-01-01T00:05:00Z'))).toEqual(at('2026-01-01T00:05:00Z'));
  });

  it('reads the schedule in its time zone', () => {
    expect(nextTick('0 9 * * *', 'Europe/Berlin', at('2026-07-01T00:00:00Z'))).toEqual(at('2026-07-01T07:00:00Z')); // CEST, UTC+2
    expect(nextTick('0 9 * * *', 'Europe/Berlin', at('2026-12-01T00:00:00Z'))).toEqual(at('2026-12-01T08:00:00Z')); // CET, UTC+1
  });

  it('finds a previous tick far back for a yearly schedule', () => {
    expect(previousTick('0 0 1 1 *', 'UTC', at('2026-11-27T12:00:00Z'))).toEqual(at('2026-01-01T00:00:00Z'));
  });
});

describe('catch-up after downtime (controlled clock)', () => {
  const now = at('2026-11-27T10:20:00Z');
  const ranAt = (started: string, extra: Partial<StateSummary> = {}): Map<string, StateSummary> =>
    new Map([[laneOf('hourly', 0), { lastTickAt: null, lastStartedAt: at(started), lastStatus: 'succeeded', lastRunId: 41, holderId: null, ...extra }]]);

  it('runs a reconciler whose last pass is older than its latest tick, once, for that tick', () => {
    expect(dueForCatchUp([hourly], ranAt('2026-11-27T06:00:03Z'), now)).toMatchObject([{ name: 'hourly', tick: at('2026-11-27T10:00:00Z'), expectLastRunId: 41 }]);
  });

  it('leaves alone a reconciler that already ran since its latest tick', () => {
    expect(dueForCatchUp([hourly], ranAt('2026-11-27T10:00:01Z'), now)).toEqual([]);
  });

  it('runs a reconciler that never ran', () => {
    expect(dueForCatchUp([hourly], new Map(), now)).toMatchObject([{ name: 'hourly', tick: at('2026-11-27T10:00:00Z'), expectLastRunId: 0, reason: 'it never ran' }]);
  });

  it('runs again a reconciler whose last pass was aborted by a deploy, or broke off', () => {
    expect(dueForCatchUp([hourly], ranAt('2026-11-27T10:00:01Z', { lastStatus: 'aborted' }), now)).toMatchObject([{ reason: 'its last pass was aborted' }]);
    expect(dueForCatchUp([hourly], ranAt('2026-11-27T10:00:01Z', { lastStatus: 'error' }), now)).toMatchObject([{ reason: 'its last pass broke off' }]);
  });

  it('runs again a reconciler whose pass was left unfinished by a process that died', () => {
    expect(dueForCatchUp([hourly], ranAt('2026-11-27T10:00:01Z', { holderId: '00000000-0000-4000-8000-000000000009' }), now)).toMatchObject([
      { reason: 'a pass was left unfinished by a process that stopped' },
    ]);
  });

  it('judges lateness by the schedule in its own time zone', () => {
    // 09:00 Berlin is 08:00 UTC in November: a pass at 07:30 UTC is before that tick.
    const berlin = (started: string) => new Map([[laneOf('berlin', 0), { lastTickAt: null, lastStartedAt: at(started), lastStatus: 'succeeded', lastRunId: 1, holderId: null }]]);
    expect(dueForCatchUp([nineInBerlin], berlin('2026-11-27T07:30:00Z'), now)).toMatchObject([{ name: 'berlin', tick: at('2026-11-27T08:00:00Z') }]);
    expect(dueForCatchUp([nineInBerlin], berlin('2026-11-27T08:00:05Z'), now)).toEqual([]);
  });
});

describe('partitions', () => {
  const quartered = resolveReconciler('quartered', 'x', defineReconciler({ schedule: '0 * * * *', partitions: 4, scan: async () => [], key: () => 'k', reconcile: async () => 'changed' as const }));

  it('catches up each partition by its own state', () => {
    const now = at('2026-11-27T10:20:00Z');
    const states = new Map<string, StateSummary>([
      [laneOf('quartered', 0), { lastTickAt: at('2026-11-27T10:00:00Z'), lastStartedAt: at('2026-11-27T10:00:01Z'), lastStatus: 'succeeded', lastRunId: 7, holderId: null }],
      [laneOf('quartered', 1), { lastTickAt: at('2026-11-27T10:00:00Z'), lastStartedAt: at('2026-11-27T10:00:01Z'), lastStatus: 'aborted', lastRunId: 8, holderId: null }],
      [laneOf('quartered', 2), { lastTickAt: at('2026-11-27T10:00:00Z'), lastStartedAt: at('2026-11-27T10:00:01Z'), lastStatus: 'succeeded', lastRunId: 9, holderId: null }],
    ]);
    expect(dueForCatchUp([quartered], states, now)).toMatchObject([
      { partition: 1, expectLastRunId: 8, reason: 'its last pass was aborted' },
      { partition: 3, expectLastRunId: 0, reason: 'it never ran' },
    ]);
  });

  it('splits the partitions evenly over the replicas, each one claiming its own share without racing', () => {
    expect(ownPartitions(4, { rank: 0, count: 1 })).toEqual([0, 1, 2, 3]);
    expect(ownPartitions(4, { rank: 0, count: 2 })).toEqual([0, 2]);
    expect(ownPartitions(4, { rank: 1, count: 2 })).toEqual([1, 3]);
    expect([0, 1, 2].map((rank) => ownPartitions(4, { rank, count: 3 }))).toEqual([[0, 3], [1], [2]]);
    expect(ownPartitions(4, { rank: 5, count: 6 })).toEqual([]); // more replicas than partitions: the spare ones only sweep
  });
});

describe('backoff', () => {
  const policy = { maxAttempts: 10, initialDelayMs: 10_000, maxDelayMs: 3_600_000 };

  it('doubles per attempt and stays within half and all of it (jitter)', () => {
    expect(backoffDelay(1, policy, () => 0)).toBe(5_000);
    expect(backoffDelay(1, policy, () => 1)).toBe(10_000);
    expect(backoffDelay(3, policy, () => 1)).toBe(40_000);
    expect(backoffDelay(3, policy, () => 0)).toBe(20_000);
  });

  it('is capped at the maximum delay', () => {
    expect(backoffDelay(30, policy, () => 1)).toBe(3_600_000);
  });
});

describe('the gap before a retry pass', () => {
  const counts = (found: number, deferred: number, dead = 0) => ({ found, changed: found - deferred - dead, unchanged: 0, skipped: 0, failed: 0, deferred, dead });

  it('is the 1 s minimum after a pass that worked all it found, however long it ran', () => {
    expect(retryGap({ durationMs: 110_000, counts: counts(7_334, 0) })).toBe(1_000);
  });

  it('is the share of the pass spent passing over items in backoff or dead', () => {
    expect(retryGap({ durationMs: 10_000, counts: counts(100, 90) })).toBe(9_000);
    expect(retryGap({ durationMs: 10_000, counts: counts(100, 45, 5) })).toBe(5_000);
    expect(retryGap({ durationMs: 400, counts: counts(100, 100) })).toBe(1_000);
  });
});
