/**
 * `reconciler migrate`: applies pending migrations (safe to run from several replicas at once).
 * Like the daemon, it waits up to STARTUP_TIMEOUT for a database that is not up yet (a deploy's
 * migrate Job often starts with it).
 */
import { ExitCode } from '../../errors.js';
import { migrateDatabase, searchPathWarning } from '../../store/migrate.js';
import { withContext } from '../../context.js';

export async function migrateCommand(): Promise<number> {
  return withContext({ jobs: false, migrating: true, waitForDatabase: true, defaultLogLevel: 'warn' }, async ({ database }) => {
    const applied = await migrateDatabase(database);
    const warning = await searchPathWarning(database);
    if (warning) process.stderr.write(`reconciler: warning: ${warning}\n`);
    process.stdout.write(applied > 0 ? `applied ${applied} migration(s) to ${database.target}\n` : `${database.target} is up to date\n`);
    return ExitCode.ok;
  });
}
