/**
 * What the daemon and every CLI command start from: validated configuration (parsed once per
 * process, here), a logger (on stderr for commands, whose stdout is their output; on stdout for
 * the daemon), the database, and the loaded reconcilers. A job file that
 * cannot be loaded never stops a command here: it comes back in `loadErrors`, and each
 * command says what it means for it (docs/cli.md, "When a job file is wrong").
 */
import type { Logger } from 'pino';
import { deprecationWarnings, loadConfig, type Config } from './config.js';
import { UserError, coerceError, errorSummary, isDatabaseUnavailable } from './errors.js';
import { formatDuration } from './duration.js';
import { createLogger } from './log.js';
import { openDatabase, type Database } from './store/database.js';
import { migrateDatabase, pendingMigrations } from './store/migrate.js';
import { useEngineSchema } from './store/schema.js';
import { loadReconcilers, type LoadError } from './engine/load.js';
import { backoffDelay } from './engine/backoff.js';
import type { Reconciler } from './reconciler.js';
import { settlesWithin } from './timeout.js';
import { startTracing, tracingConfigured, type DatabaseTarget, type Tracing } from './tracing/index.js';

/** Configuration, logger and job files: everything but the database. */
export interface Setup {
  config: Config;
  log: Logger;
  reconcilers: Reconciler[];
  loadErrors: LoadError[];
  /** The OpenTelemetry SDK, when the command traces (`tracing`) and the OTEL_* environment configures an exporter: shut it down (it flushes) before exiting. */
  tracing?: Tracing;
}

export interface CommandContext extends Setup {
  database: Database;
  close(): Promise<void>;
}

export interface ContextOptions {
  /** Load the job files. */
  jobs: boolean;
  /** Load them from here instead of JOBS_DIR. */
  jobsDir?: string;
  /** CLI commands log at warn unless LOG_LEVEL says otherwise; the daemon at info. */
  defaultLogLevel?: string;
  /** Log to stdout (the daemon) instead of stderr. */
  logToStdout?: boolean;
  /** Skip the pending-migration check (`migrate` itself, and the daemon that migrates). */
  migrating?: boolean;
  /** Wait up to STARTUP_TIMEOUT for a database that cannot be reached yet (the daemon, `migrate`). */
  waitForDatabase?: boolean;
  /** Trace passes when the OTEL_* environment configures an exporter (the daemon, `run`). */
  tracing?: boolean;
}

/** Reads the configuration, points the store at the engine schema, and loads the job files. */
export async function prepare(options: ContextOptions): Promise<Setup> {
  const config = loadConfig(process.env.LOG_LEVEL === undefined && options.defaultLogLevel ? { ...process.env, LOG_LEVEL: options.defaultLogLevel } : process.env);
  const traced = options.tracing === true && tracingConfigured();
  const log = createLogger({ level: config.LOG_LEVEL, fd: options.logToStdout ? 1 : 2, traced });
  for (const warning of deprecationWarnings()) log.warn(warning);
  useEngineSchema(config.RECONCILER_SCHEMA);
  const tracing = traced ? await startTracing(log, databaseTarget(config.DATABASE_URL)) : undefined;
  let reconcilers: Reconciler[] = [];
  let loadErrors: LoadError[] = [];
  if (options.jobs) ({ reconcilers, errors: loadErrors } = await loadReconcilers(options.jobsDir ?? config.JOBS_DIR));
  return { config, log, reconcilers, loadErrors, ...(tracing ? { tracing } : {}) };
}

/** The database's name, host and port for database spans; never its user or password. */
function databaseTarget(databaseUrl: string | undefined): DatabaseTarget {
  if (!databaseUrl) return { name: 'postgres' }; // the embedded database
  try {
    const url = new URL(databaseUrl);
    const name = decodeURIComponent(url.pathname.replace(/^\//, ''));
    return { ...(name ? { name } : {}), ...(url.hostname ? { host: url.hostname.replace(/^\[(.*)\]$/, '$1') } : {}), port: url.port ? Number(url.port) : 5432 };
  } catch {
    return {}; // a key=value connection string: pg reads it, the span goes without
  }
}

/** Opens the configured database. */
export function connect({ config, log }: Pick<Setup, 'config' | 'log'>): Promise<Database> {
  return openDatabase({ databaseUrl: config.DATABASE_URL, listenUrl: config.LISTEN_DATABASE_URL, dataDir: config.DATA_DIR, log, poolSize: config.DATABASE_POOL_SIZE, queryTimeoutMs: config.DATABASE_QUERY_TIMEOUT, schema: config.RECONCILER_SCHEMA });
}

/** Waiting for the database at start: the one backoff policy (engine/backoff.ts), from about half a second up to 5 s. */
const STARTUP_RETRY = { initialDelayMs: 1_000, maxDelayMs: 5_000, maxAttempts: Infinity };

/**
 * Opens the database, waiting while it cannot be reached (it often starts after the daemon in a
 * cluster): retried with backoff for up to STARTUP_TIMEOUT, said once in the log. Any other
 * problem (a wrong password, a missing database) fails at once: waiting would not fix it.
 * Resolves undefined if `stopping` settled first (a signal).
 */
export async function waitForDatabase(setup: Pick<Setup, 'config' | 'log'>, stopping: Promise<unknown> = new Promise(() => undefined)): Promise<Database | undefined> {
  const { config, log } = setup;
  const deadline = Date.now() + config.STARTUP_TIMEOUT;
  let attempt = 0;
  let warned = false;
  let stopped = false;
  void stopping.then(() => (stopped = true));
  for (;;) {
    try {
      // A signal does not wait for a connection attempt (up to its own 5 s timeout): one that succeeds late is closed.
      const connecting = connect(setup);
      const database = await Promise.race([connecting, stopping.then(() => undefined)]);
      if (!database || stopped) {
        void connecting.then((late) => late.close(), () => undefined);
        return undefined;
      }
      if (warned) log.info({ event: 'database:answers' }, `the database answers now: ${database.target}`);
      return database;
    } catch (error) {
      if (stopped) return undefined;
      if (!isDatabaseUnavailable(error) || config.STARTUP_TIMEOUT === 0) throw error;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new UserError(`gave up waiting for the database after ${formatDuration(config.STARTUP_TIMEOUT)} (STARTUP_TIMEOUT): ${errorSummary(coerceError(error), 300)}`);
      }
      if (!warned) {
        // The reason in one line (no stack: an unreachable database is not a bug of ours).
        log.warn({ event: 'database:waiting', reason: errorSummary(coerceError(error), 300) }, `${errorSummary(coerceError(error), 300)}; retrying for up to ${formatDuration(config.STARTUP_TIMEOUT)} (STARTUP_TIMEOUT)`);
        warned = true;
      }
      const wait = Math.min(backoffDelay(++attempt, STARTUP_RETRY), left);
      await settlesWithin(stopping, wait);
      if (stopped) return undefined;
    }
  }
}

export async function openContext(options: ContextOptions): Promise<CommandContext> {
  const setup = await prepare(options);
  const database = options.waitForDatabase ? (await waitForDatabase(setup))! : await connect(setup);
  try {
    if (!options.migrating) {
      const pending = await pendingMigrations(database);
      if (pending > 0 && database.kind === 'embedded') await migrateDatabase(database);
      else if (pending > 0) {
        throw new UserError(`the engine schema "${setup.config.RECONCILER_SCHEMA}" of the database at ${database.target} has ${pending} pending migration(s): run \`reconciler migrate\` (the daemon also applies them at start)`);
      }
    }
  } catch (error) {
    await database.close();
    throw error;
  }
  return { ...setup, database, close: () => database.close() };
}

/** Runs `fn` with a context and always closes the database afterwards. */
export async function withContext<T>(options: ContextOptions, fn: (context: CommandContext) => Promise<T>): Promise<T> {
  const context = await openContext(options);
  try {
    return await fn(context);
  } finally {
    try {
      await context.close();
    } finally {
      await context.tracing?.shutdown(); // the pass's spans are sent even when closing the database failed
    }
  }
}
