/**
 * The `replicas` table: how daemons sharing a database count each other. Each keeps a row
 * fresh with a heartbeat through its ordinary pool, so it works through any pooler (a
 * session in pg_stat_activity does not: behind PgBouncer in transaction mode it is the
 * pooler's, not the daemon's). Times are the database's, so clocks that disagree do not matter.
 */
import { sql } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { ALONE, queryRows, type Membership } from './database.js';
import { engineSchema } from './schema.js';

export interface Replica {
  id: string;
  host: string;
  pid: number;
  /** The reconcilers it runs. */
  reconcilers: readonly string[];
}

const textArray = (values: readonly string[]) => sql`ARRAY[${sql.join(values.map((v) => sql`${v}`), sql`, `)}]::text[]`;

/**
 * Writes (or refreshes) this replica's row, valid for `ttlMs`, with the notification channels
 * its wake listener hears now; deletes rows long expired.
 */
export async function heartbeat(db: Db, replica: Replica, ttlMs: number, listening: readonly string[] = []): Promise<void> {
  const { replicas } = engineSchema();
  await db.execute(sql`
    WITH gone AS (DELETE FROM ${replicas} WHERE ${replicas.expiresAt} < now() - interval '1 hour')
    INSERT INTO ${replicas} (id, host, pid, reconcilers, listening, expires_at)
    VALUES (${replica.id}, ${replica.host}, ${replica.pid}, ${textArray(replica.reconcilers)}, ${textArray(listening)}, now() + ${ttlMs} * interval '1 millisecond')
    ON CONFLICT (id) DO UPDATE SET seen_at = now(), expires_at = excluded.expires_at, reconcilers = excluded.reconcilers, listening = excluded.listening`);
}

/**
 * Where replica `id` stands among the live replicas that run `reconciler`: `rank` of `count`,
 * ordered by id. It always counts itself, even if its own row has lapsed (a heartbeat that
 * could not be written): others may not see it for a moment, but its own rank stays sane.
 */
export async function membershipOf(db: Db, id: string, reconciler: string): Promise<Membership> {
  const { replicas } = engineSchema();
  const rows = await queryRows<{ id: string }>(
    db,
    sql`SELECT id::text AS id FROM ${replicas}
        WHERE ${replicas.expiresAt} > now() AND ${reconciler} = ANY(${replicas.reconcilers})
        UNION SELECT ${id}::text
        ORDER BY id`,
  );
  const rank = rows.findIndex((row) => row.id === id);
  return rank < 0 ? ALONE : { rank, count: rows.length };
}

/** Deletes this replica's row: the others count without it at once, rather than when it expires. */
export async function leave(db: Db, id: string): Promise<void> {
  const { replicas } = engineSchema();
  await db.execute(sql`DELETE FROM ${replicas} WHERE id = ${id}`);
}

/** How many live replicas run each reconciler: for the metric an alert watches when replicas drop out. */
export async function replicasByReconciler(db: Db): Promise<Map<string, number>> {
  const { replicas } = engineSchema();
  const rows = await queryRows<{ reconciler: string; n: number }>(
    db,
    sql`SELECT r.name AS reconciler, count(*)::int AS n FROM ${replicas}, unnest(${replicas.reconcilers}) AS r(name) WHERE ${replicas.expiresAt} > now() GROUP BY r.name`,
  );
  return new Map(rows.map((row) => [row.reconciler, Number(row.n)]));
}

/** Per reconciler: whether a live replica that runs it listens on every one of its `channels` now. */
export async function wakesListening(db: Db, wanted: ReadonlyMap<string, readonly string[]>): Promise<Map<string, boolean>> {
  const { replicas } = engineSchema();
  const rows = await queryRows<{ reconcilers: string[]; listening: string[] }>(
    db,
    sql`SELECT ${replicas.reconcilers} AS reconcilers, ${replicas.listening} AS listening FROM ${replicas} WHERE ${replicas.expiresAt} > now()`,
  );
  const out = new Map<string, boolean>();
  for (const [name, channels] of wanted) {
    out.set(name, rows.some((r) => r.reconcilers.includes(name) && channels.every((c) => r.listening.includes(c))));
  }
  return out;
}
