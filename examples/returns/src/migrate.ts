/**
 * The example's own tables (customers, fixes, returns, payments …), applied only when the
 * example runs: by the demo, the seed, and the tests and benchmarks that settle returns.
 * The engine never creates them.
 *
 * Their journal is drizzle's default (`drizzle.__drizzle_migrations`), as in any application
 * that uses drizzle-kit; the entries keep the timestamps these migrations had when the engine
 * still applied them, so that a database set up before picks up where it was.
 */
import { fileURLToPath } from 'node:url';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import { migrateDatabase, type Database } from 'reconciler';

export const RETURNS_MIGRATIONS = fileURLToPath(new URL('../migrations', import.meta.url));
/** pg_advisory_lock key for the example's migrations: "rtrn" in ASCII. */
const LOCK_KEY = 0x7274726e;

/**
 * Applies the engine's migrations (its partition function indexes `returns`), then the example's,
 * under a lock: several processes may start the example at once.
 */
export async function migrateReturns(database: Database): Promise<void> {
  await migrateDatabase(database);
  // drizzle's migrator only drives the handle's dialect and session: the same call serves PGlite.
  await database.withExclusiveLock(LOCK_KEY, (db) => migrate(db as never, { migrationsFolder: RETURNS_MIGRATIONS }));
}
