/**
 * Applies the drizzle-kit migrations. drizzle's migrator takes no lock, so concurrent
 * start-ups of several replicas are serialised here with a cluster-wide advisory lock.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { sql } from 'drizzle-orm';
import type { Database } from './database.js';
import { queryRows } from './database.js';
import type { Db } from '../reconciler.js';

/** Resolved from this file, so `tsx` (src/) and the build (dist/src/) find the same folder. */
export const MIGRATIONS_FOLDER = fileURLToPath(new URL('./migrations', import.meta.url));
/** pg_advisory_lock key for migrations: "reco" in ASCII. */
const MIGRATION_LOCK_KEY = 0x7265636f;

function migrationCount(): number {
  const journal = JSON.parse(readFileSync(`${MIGRATIONS_FOLDER}/meta/_journal.json`, 'utf8')) as { entries: unknown[] };
  return journal.entries.length;
}

async function appliedCount(db: Db): Promise<number> {
  const [exists] = await queryRows<{ present: boolean }>(db, sql`SELECT to_regclass('drizzle.__drizzle_migrations') IS NOT NULL AS present`);
  if (!exists?.present) return 0;
  const [row] = await queryRows<{ n: number }>(db, sql`SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations`);
  return Number(row?.n ?? 0);
}

/** How many migrations this code has that the database has not applied yet. */
export async function pendingMigrations(database: Database): Promise<number> {
  return Math.max(0, migrationCount() - (await appliedCount(database.db)));
}

/**
 * Applies pending migrations under the migration lock; returns how many it applied. When
 * nothing is pending it takes no lock at all (the common start of a replica, and the only
 * safe one through a transaction-mode pooler).
 */
export async function migrateDatabase(database: Database): Promise<number> {
  if ((await pendingMigrations(database)) === 0) return 0;
  return database.withExclusiveLock(MIGRATION_LOCK_KEY, async (db) => {
    const before = await appliedCount(db);
    if (before >= migrationCount()) return 0;
    const config = { migrationsFolder: MIGRATIONS_FOLDER };
    if (database.kind === 'postgres') {
      const { migrate } = await import('drizzle-orm/node-postgres/migrator');
      await migrate(db as never, config);
    } else {
      const { migrate } = await import('drizzle-orm/pglite/migrator');
      await migrate(db as never, config);
    }
    return (await appliedCount(db)) - before;
  });
}
