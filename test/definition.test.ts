import { describe, expect, it } from 'vitest';
import { defineReconciler, resolveReconciler } from '../src/reconciler.js';
import { parseDuration, parseWholeNumber, formatDuration } from '../src/duration.js';

const base = {
  schedule: '*/5 * * * *',
  scan: async () => [] as { id: number }[],
  key: (item: { id: number }) => String(item.id),
  reconcile: async () => 'changed' as const,
};

describe('defineReconciler', () => {
  it('accepts a minimal definition and fills in documented defaults', () => {
    const r = resolveReconciler('demo', 'jobs/demo.ts', defineReconciler(base));
    expect(r).toMatchObject({ name: 'demo', timezone: 'UTC', concurrency: 5, timeoutMs: 30_000, pageSize: 500, retry: { maxAttempts: 10, initialDelayMs: 10_000, maxDelayMs: 3_600_000 } });
  });

  it('suggests the closest option for a misspelt one', () => {
    expect(() => defineReconciler({ ...base, timout: '5s' } as never)).toThrow('unknown option `timout`, did you mean `timeout`?');
    expect(() => defineReconciler({ ...base, retry: { maxAtempts: 3 } } as never)).toThrow('unknown option `retry.maxAtempts`, did you mean `maxAttempts`?');
  });

  it('lists the known options when nothing is close', () => {
    expect(() => defineReconciler({ ...base, zzzzzzzzzz: 1 } as never)).toThrow(/unknown option `zzzzzzzzzz` \(known options: schedule, timezone/);
  });

  it('accepts 5- and 6-field cron expressions and rejects others', () => {
    expect(() => defineReconciler({ ...base, schedule: '*/10 * * * * *' })).not.toThrow();
    expect(() => defineReconciler({ ...base, schedule: '* * * *' })).toThrow('invalid cron "* * * *": it has 4 fields');
    expect(() => defineReconciler({ ...base, schedule: '61 * * * *' })).toThrow(/invalid cron "61 \* \* \* \*": minute/);
    expect(() => defineReconciler({ ...base, schedule: '' })).toThrow('`schedule` is required');
  });

  it('rejects an unknown time zone', () => {
    expect(() => defineReconciler({ ...base, timezone: 'Mars/Olympus' })).toThrow('invalid timezone "Mars/Olympus"');
    expect(() => defineReconciler({ ...base, timezone: 'Europe/Berlin' })).not.toThrow();
  });

  it('checks manual actions: kebab-case names, a description and a run function, nothing else', () => {
    const run = async () => 'done';
    expect(resolveReconciler('demo', 'jobs/demo.ts', defineReconciler(base)).actions).toEqual({});
    expect(Object.keys(resolveReconciler('demo', 'jobs/demo.ts', defineReconciler({ ...base, actions: { 'settled-by-hand': { description: 'd', run } } })).actions)).toEqual(['settled-by-hand']);
    expect(() => defineReconciler({ ...base, actions: [] as never })).toThrow('`actions` must be an object of manual actions by name');
    expect(() => defineReconciler({ ...base, actions: { 'Settled By Hand': { description: 'd', run } } })).toThrow('`actions`: "Settled By Hand" is not an action name: use kebab-case');
    expect(() => defineReconciler({ ...base, actions: { fix: { description: '', run } } })).toThrow('`actions.fix.description` must be a non-empty string');
    expect(() => defineReconciler({ ...base, actions: { fix: { description: 'd', run: 'x' as never } } })).toThrow('`actions.fix.run` must be a function');
    expect(() => defineReconciler({ ...base, actions: { fix: { description: 'd', run, confirm: true } as never } })).toThrow('unknown option `actions.fix.confirm`');
  });

  it('rejects bad numbers and durations with the option named', () => {
    expect(() => defineReconciler({ ...base, concurrency: 0 })).toThrow('`concurrency` must be a whole number of at least 1, got 0');
    expect(() => defineReconciler({ ...base, timeout: 'soon' as never })).toThrow('`timeout`: "soon" is not a duration');
    expect(() => defineReconciler({ ...base, scan: undefined as never })).toThrow('`scan` must be a function');
  });

  it('lets the item type flow from scan to key and reconcile without casts', () => {
    defineReconciler({
      schedule: '* * * * *',
      scan: async () => [{ returnId: 7, amountMinor: 100 }],
      key: (item) => `return:${item.returnId}`,
      reconcile: async (item, ctx) => {
        const cents: number = item.amountMinor;
        // @ts-expect-error the item has no such field: the type flowed from scan
        void item.missing;
        return ctx.dryRun ? { outcome: 'skipped', note: `${cents}` } : 'changed';
      },
    });
  });

  it('takes the item type once as a type argument when the scan uses `after`', () => {
    interface Row {
      id: number;
      email: string;
    }
    defineReconciler<Row>({
      schedule: '* * * * *',
      scan: async ({ after, limit }) => [{ id: (after?.id ?? 0) + limit, email: 'a@example.com' }],
      key: (row) => `signup:${row.id}`,
      reconcile: async (row) => (row.email.endsWith('@example.com') ? 'skipped' : 'changed'),
    });
  });
});

describe('durations', () => {
  it('parses numbers and unit strings', () => {
    expect(parseDuration(250)).toBe(250);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('1.5m')).toBe(90_000);
    expect(parseDuration('14d')).toBe(14 * 86_400_000);
    expect(parseDuration('1500')).toBe(1_500); // as an environment variable spells milliseconds
    expect(() => parseDuration('-1s')).toThrow(RangeError);
  });

  it('formats for people', () => {
    expect(formatDuration(850)).toBe('850ms');
    expect(formatDuration(12_300)).toBe('12.3s');
    expect(formatDuration(245_000)).toBe('4m05s');
  });
});

describe('whole numbers', () => {
  it('take numbers and digits, the one spelling configuration, definitions and flags share', () => {
    expect(parseWholeNumber(5, 1)).toBe(5);
    expect(parseWholeNumber(' 42 ', 0, 100)).toBe(42);
    for (const bad of ['', '0x50', '1e3', '-1', '5.0', 1.5, Number.NaN, '101']) expect(parseWholeNumber(bad, 0, 100)).toBeUndefined();
    expect(parseWholeNumber(0, 1)).toBeUndefined();
  });
});
