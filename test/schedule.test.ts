import { describe, expect, it } from 'vitest';
import { CronSchedule } from '../src/scheduler/cron.js';
import { dueForCatchUp } from '../src/scheduler/scheduler.js';
import { backoffDelay } from '../src/engine/backoff.js';
import { resolveReconciler, defineReconciler } from '../src/reconciler.js';

const at = (iso: string) => new Date(iso);
const hourly = resolveReconciler('hourly', 'x', defineReconciler({ schedule: '0 * * * *', scan: async () => [], key: () => 'k', reconcile: async () => 'changed' as const }));
const nineInBerlin = resolveReconciler('berlin', 'x', defineReconciler({ schedule: '0 9 * * *', timezone: 'Europe/Berlin', scan: async () => [], key: () => 'k', reconcile: async () => 'changed' as const }));

describe('cron arithmetic', () => {
  it('finds the next and the previous tick', () => {
    const every5 = new CronSchedule('*/5 * * * *', 'UTC');
    expect(every5.next(at('2026-01-01T00:00:00Z'))).toEqual(at('2026-01-01T00:05:00Z'));
    expect(every5.previous(at('2026-01-01T00:07:30Z'))).toEqual(at('2026-01-01T00:05:00Z'));
    expect(every5.previous(at('2026-01-01T00:05:00Z'))).toEqual(at('2026-01-01T00:05:00Z'));
  });

  it('reads the schedule in its time zone', () => {
    const nine = new CronSchedule('0 9 * * *', 'Europe/Berlin');
    expect(nine.next(at('2026-07-01T00:00:00Z'))).toEqual(at('2026-07-01T07:00:00Z')); // CEST, UTC+2
    expect(nine.next(at('2026-12-01T00:00:00Z'))).toEqual(at('2026-12-01T08:00:00Z')); // CET, UTC+1
  });

  it('finds a previous tick far back for a yearly schedule', () => {
    expect(new CronSchedule('0 0 1 1 *', 'UTC').previous(at('2026-11-27T12:00:00Z'))).toEqual(at('2026-01-01T00:00:00Z'));
  });
});

describe('catch-up after downtime (controlled clock)', () => {
  const now = at('2026-11-27T10:20:00Z');

  it('runs a reconciler whose last pass is older than its latest tick, once, for that tick', () => {
    const due = dueForCatchUp([hourly], new Map([['hourly', at('2026-11-27T06:00:03Z')]]), now);
    expect(due).toEqual([{ name: 'hourly', tick: at('2026-11-27T10:00:00Z') }]);
  });

  it('leaves alone a reconciler that already ran since its latest tick', () => {
    expect(dueForCatchUp([hourly], new Map([['hourly', at('2026-11-27T10:00:01Z')]]), now)).toEqual([]);
  });

  it('runs a reconciler that never ran', () => {
    expect(dueForCatchUp([hourly], new Map(), now)).toEqual([{ name: 'hourly', tick: at('2026-11-27T10:00:00Z') }]);
  });

  it('judges lateness by the schedule in its own time zone', () => {
    // 09:00 Berlin is 08:00 UTC in November: a pass at 07:30 UTC is before that tick.
    expect(dueForCatchUp([nineInBerlin], new Map([['berlin', at('2026-11-27T07:30:00Z')]]), now)).toEqual([{ name: 'berlin', tick: at('2026-11-27T08:00:00Z') }]);
    expect(dueForCatchUp([nineInBerlin], new Map([['berlin', at('2026-11-27T08:00:05Z')]]), now)).toEqual([]);
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
