/** `reconciler migrate`: applies pending migrations (safe to run from several replicas at once). */
import { ExitCode } from '../../errors.js';
import { migrateDatabase } from '../../store/migrate.js';
import { withContext } from '../context.js';

export async function migrateCommand(): Promise<number> {
  return withContext({ jobs: false, migrating: true, defaultLogLevel: 'warn' }, async ({ database }) => {
    const applied = await migrateDatabase(database);
    process.stdout.write(applied > 0 ? `applied ${applied} migration(s) to ${database.target}\n` : `${database.target} is up to date\n`);
    return ExitCode.ok;
  });
}
