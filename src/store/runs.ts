/** The `runs` table: the history of passes, for `reconciler history` and for operators. */
import { desc, eq, sql } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from './database.js';
import { engineSchema, type runs } from './schema.js';

/**
 * What started a pass. `retry`: an early pass the daemon starts when failed items fall due
 * before the next tick; `wake`: one it starts on a notification (`wakeOn`); `handover`: a pass
 * of a partition another replica gave up to this one, which owns it now; `handback`: the pass
 * of the replica that gave it up, when nobody took it within the grace (see handover.ts).
 */
export type Trigger = 'schedule' | 'manual' | 'startup' | 'retry' | 'wake' | 'handover' | 'handback';

/**
 * How a pass ended:
 * - `succeeded`: every item it took was reconciled (or deferred by backoff);
 * - `failed`: it finished, but some items threw (they are in failure memory);
 * - `error`: the pass itself broke (its scan threw, the database went away);
 * - `aborted`: stopped early by shutdown or a lost lease;
 * - `abandoned`: its process died; set by the process that took the lease over.
 */
export type PassStatus = 'succeeded' | 'failed' | 'error' | 'aborted' | 'abandoned';

/** Per-pass item counts. `found` = every item the pass considered = the sum of the others. */
export interface PassCounts {
  found: number;
  changed: number;
  unchanged: number;
  skipped: number;
  failed: number;
  /** Items in backoff: their next attempt is later. */
  deferred: number;
  /** Dead items the scan still finds: waiting for a person (`retry` or `clear`). */
  dead: number;
}

export type RunRow = typeof runs.$inferSelect;

export async function listRuns(db: Db, options: { reconciler?: string; limit: number }): Promise<RunRow[]> {
  const { runs } = engineSchema();
  return db
    .select()
    .from(runs)
    .where(options.reconciler === undefined ? undefined : eq(runs.reconciler, options.reconciler))
    .orderBy(desc(runs.id))
    .limit(options.limit);
}

/** Deletes up to `batch` finished runs older than the retention; returns how many went. */
export async function pruneRuns(db: Db, retentionMs: number, batch = 5_000): Promise<number> {
  const { runs } = engineSchema();
  const rows = await queryRows<{ id: string }>(
    db,
    sql`DELETE FROM ${runs} WHERE id IN (
          SELECT id FROM ${runs}
          WHERE started_at < now() - ${retentionMs} * interval '1 millisecond' AND status <> 'running'
          LIMIT ${batch})
        RETURNING id`,
  );
  return rows.length;
}

export async function readRun(db: Db, id: number): Promise<RunRow | undefined> {
  const { runs } = engineSchema();
  const rows = await db.select().from(runs).where(eq(runs.id, id));
  return rows[0];
}
