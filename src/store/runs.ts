/** The `runs` table: the history of passes, for `reconciler history` and for operators. */
import { desc, eq, sql } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from './database.js';
import { engineSchema, type runs } from './schema.js';

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
