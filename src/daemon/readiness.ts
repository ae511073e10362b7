/** What /readyz reports for the daemon: the database, its migrations, the job files, and whether it is shutting down. */
import { sql } from 'drizzle-orm';
import { coerceError, errorSummary } from '../errors.js';
import { within } from '../timeout.js';
import { queryRows, type Database } from '../store/database.js';
import { pendingMigrations } from '../store/migrate.js';
import { CHECK_TIMEOUT_MS, type Check } from '../http/server.js';

/** Where the daemon is, as readiness sees it; the daemon updates it as it goes. */
export interface DaemonStatus {
  /** Open once the database answered. */
  database: Database | undefined;
  /** The clocks are running. */
  scheduling: boolean;
  shuttingDown: boolean;
  /** The first job file that did not load, and how many more; undefined when all loaded. */
  broken: string | undefined;
  reconcilers: number;
}

/** One check, bounded in time; its error (or timeout) is its detail. */
async function probe(what: string, check: () => Promise<string>): Promise<Check> {
  try {
    return { ok: true, detail: await within(check(), CHECK_TIMEOUT_MS, what) };
  } catch (error) {
    return { ok: false, detail: errorSummary(coerceError(error), 200) };
  }
}

export function readinessOf(status: DaemonStatus): () => Promise<Record<string, Check>> {
  return async () => {
    const { database: db, scheduling, shuttingDown, broken, reconcilers } = status;
    return {
      database: db ? await probe('database', async () => (await queryRows(db.control, sql`SELECT 1`), `reachable: ${db.target}`)) : { ok: false, detail: 'waiting for the database (STARTUP_TIMEOUT)' },
      migrations: db
        ? await probe('migrations', async () => {
            const pending = await pendingMigrations(db);
            if (pending > 0) throw new Error(`${pending} migration(s) pending`);
            return 'applied';
          })
        : { ok: false, detail: 'waiting for the database' },
      jobs: {
        ok: scheduling && !broken,
        detail: `${broken ? `${broken}; ` : ''}${scheduling ? `${reconcilers} reconciler(s) loaded and scheduled` : 'starting'}`,
      },
      shutdown: { ok: !shuttingDown, detail: shuttingDown ? 'shutting down' : 'running' },
    };
  };
}
