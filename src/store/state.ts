/**
 * The `state` table, one row per reconciler partition: its pass lease (lease.ts takes, renews
 * and releases it) and its schedule memory (last tick served, last pass, skipped ticks), which
 * catch-up, sweeps and `reconciler list` read.
 */
import { asc, eq, getTableColumns, sql } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from './database.js';
import { engineSchema, type state } from './schema.js';

export type StateRow = typeof state.$inferSelect & {
  /** The lease is held and not expired, by the database clock. */
  leaseLive: boolean;
};


/**
 * Counts a scheduled tick that found a pass still running, once per tick across all
 * replicas (each replica sees the same tick). Returns false when another replica counted it.
 */
export async function countSkippedTick(db: Db, reconciler: string, partition: number, tick: Date): Promise<boolean> {
  const t = engineSchema();
  const rows = await queryRows<{ ok: number }>(
    db,
    sql`UPDATE ${t.state} SET skipped_ticks = skipped_ticks + 1, last_skipped_tick_at = ${tick.toISOString()}::timestamptz
        WHERE reconciler = ${reconciler} AND partition = ${partition}
          AND last_skipped_tick_at IS DISTINCT FROM ${tick.toISOString()}::timestamptz
        RETURNING 1 AS ok`,
  );
  return rows.length > 0;
}

/** Every reconciler's state rows (one per partition), or those of one reconciler: for `reconciler list`, catch-up and sweeps. */
export async function readStates(db: Db, reconciler?: string): Promise<StateRow[]> {
  const { state } = engineSchema();
  return db
    .select({ ...getTableColumns(state), leaseLive: sql<boolean>`(${state.holderId} IS NOT NULL AND ${state.leaseExpiresAt} >= now())` })
    .from(state)
    .where(reconciler === undefined ? undefined : eq(state.reconciler, reconciler))
    .orderBy(asc(state.reconciler), asc(state.partition));
}
