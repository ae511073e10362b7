/** What every benchmark case shares: result rows, statistics, scratch databases, process readings. */
import { readFileSync } from 'node:fs';
import { sql, type SQL } from 'drizzle-orm';
import { queryRows, type Database } from '../../src/store/database.js';
import { ADMIN_URL } from '../faults/harness.js';
import { createTestDatabase, silentLog, type TestDatabase } from '../../testkit/database.js';
import type { App } from '../faults/app.js';

export interface CaseResult {
  case: string;
  figure: string;
  unit: string;
  median: number;
  min: number;
  max: number;
  goal: string;
  met: boolean;
}

export interface CaseOptions {
  quick: boolean;
  runs: number;
  /** The build, as the image runs it (built once per bench run, on first use). */
  app: () => Promise<App>;
  /** Only the sub-cases whose label contains this (`--only "backlog drain/provider"`). */
  subset?: string | undefined;
}

export const silent = silentLog;

export function stats(samples: number[]): { median: number; min: number; max: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  const round = (n: number) => Math.round(n * 100) / 100;
  return { median: round(median), min: round(sorted[0]!), max: round(sorted[sorted.length - 1]!) };
}

/** A fresh database with the engine's and the returns example's migrations (the benchmarks settle returns), dropped by `drop`. */
export function scratchDatabase(poolSize?: number): Promise<TestDatabase> {
  return createTestDatabase(ADMIN_URL, { returns: true, prefix: 'reconciler_bench', ...(poolSize ? { poolSize } : {}) });
}

/**
 * Adds `count` bare returns in bulk (one customer, a Fix with the styling fee and no items):
 * settled ones, the shape of a system with nothing left to do, or pending ones, each of
 * which settling charges the styling fee.
 */
export async function addReturns(database: Database, count: number, state: 'settled' | 'pending'): Promise<void> {
  const [customer] = await queryRows<{ id: number }>(database.db, sql`INSERT INTO customers (name, email, payment_method) VALUES ('Bench', 'bench@example.com', 'pm_card_visa') RETURNING id`);
  for (let done = 0; done < count; done += 500_000) {
    const n = Math.min(500_000, count - done);
    await queryRows(
      database.db,
      state === 'settled'
        ? sql`WITH f AS (INSERT INTO fixes (customer_id, styling_fee_minor) SELECT ${customer!.id}, 2000 FROM generate_series(1, ${n}) RETURNING id)
              INSERT INTO returns (fix_id, settled_at, settlement) SELECT id, now(), 'none' FROM f`
        : sql`WITH f AS (INSERT INTO fixes (customer_id, styling_fee_minor) SELECT ${customer!.id}, 2000 FROM generate_series(1, ${n}) RETURNING id)
              INSERT INTO returns (fix_id, recorded_by) SELECT id, 'bench' FROM f`,
    );
  }
  await settleDown(database);
}

/** Fresh statistics and a checkpoint, so that autovacuum and a pending checkpoint do not land in the measurement. */
export async function settleDown(database: Database, tables?: SQL): Promise<void> {
  await queryRows(database.db, tables ? sql`VACUUM ANALYZE ${tables}` : sql`VACUUM ANALYZE`);
  await queryRows(database.db, sql`CHECKPOINT`).catch(() => undefined); // needs superuser or pg_checkpoint; only a nicety
}

/** Grows `returns` to `total` rows, every one settled. */
export async function growSettled(database: Database, total: number): Promise<void> {
  const [row] = await queryRows<{ n: number }>(database.db, sql`SELECT count(*)::int AS n FROM returns`);
  const missing = total - Number(row?.n ?? 0);
  if (missing > 0) await addReturns(database, missing, 'settled');
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS; // utime, stime
}

/** Resident memory of a process in MB, from /proc: now (VmRSS), or its peak so far (VmHWM). */
export function rssMb(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): number {
  const kb = Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  return Math.round(kb / 102.4) / 10;
}

export const CLOCK_TICKS = 100; // USER_HZ on Linux


/** The machine's CPU time so far, busy and total, in clock ticks over all cores (from /proc/stat). */
export function machineCpu(): { busy: number; total: number } {
  const [user, nice, system, idle, iowait, irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number) as number[];
  const busy = user! + nice! + system! + irq! + softirq! + steal!;
  return { busy, total: busy + idle! + iowait! };
}

/** The share of the machine's CPU that was busy between two readings of `machineCpu()`, in %. */
export function busyPercent(from: { busy: number; total: number }, to: { busy: number; total: number }): number {
  return Math.round(((to.busy - from.busy) / Math.max(1, to.total - from.total)) * 1000) / 10;
}
