/**
 * The long-running process: migrate, load, catch up, schedule, prune history, and shut
 * down gracefully on SIGTERM/SIGINT (a second signal exits at once). A job file that does
 * not load is logged, counted in /metrics and fails /readyz; the other reconcilers run.
 */
import type { Logger } from 'pino';
import { ExitCode, UserError, coerceError, oneLine } from './errors.js';
import { exitCodeOf, onStopSignals, stopWithParent } from './signals.js';
import { formatDuration } from './duration.js';
import { migrateDatabase, searchPathWarning } from './store/migrate.js';
import type { Database } from './store/database.js';
import { startOpsServer, type OpsServer } from './http/server.js';
import { prepare, waitForDatabase, type Setup } from './context.js';
import { formatLoadError, describeLoadError } from './engine/load.js';
import { readinessOf, type DaemonStatus } from './daemon/readiness.js';
import { Services } from './daemon/services.js';
import { settlesWithin } from './timeout.js';
import { createConsoleHandler } from './console/server.js';
import type { OperatorContext } from './operator/views.js';

/** Shutdown ends within SHUTDOWN_TIMEOUT and this: recording the passes, closing the pools and the endpoint. */
const SHUTDOWN_MARGIN_MS = 1_800;

/** What `setup` gets: the open, migrated database and the daemon's logger. */
export interface DaemonContext {
  database: Database;
  log: Logger;
}

/** How an application that embeds the daemon runs it (`runDaemon` in the public API). */
export interface DaemonOptions {
  /** Load the job files from here instead of JOBS_DIR. */
  jobsDir?: string;
  /**
   * Shut down, as on SIGTERM, when the parent process goes away. Default: only when an npm
   * script started this process (npm does not pass SIGTERM on to its child), so that a daemon
   * started directly (`nohup reconciler daemon &`, a container, systemd) outlives its shell.
   */
  exitWithParent?: boolean;
  /**
   * Runs once the database is open and the engine's migrations are applied, before the first
   * pass (the demo applies its own migrations and seeds data here). A function it returns runs
   * at shutdown, before the database closes.
   */
  setup?(context: DaemonContext): Promise<(() => Promise<void> | void) | void>;
}

/** Started by npm (`npm start`, another script, `npx`): npm sets npm_lifecycle_event for its child. */
const startedByNpm = () => process.env.npm_lifecycle_event !== undefined;

export async function runDaemon(options: DaemonOptions = {}): Promise<number> {
  const setup = await prepare({ jobs: true, logToStdout: true, tracing: true, ...(options.jobsDir ? { jobsDir: options.jobsDir } : {}) });
  const { config, log, reconcilers, loadErrors } = setup;
  for (const error of loadErrors) log.error({ file: error.file, ...(error.excerpt ? { excerpt: error.excerpt } : {}) }, describeLoadError(error));
  const signals = onStopSignals({
    first: (signal) => log.info({ event: 'signal:shutdown', signal }, `${signal}: shutting down; in-flight items get ${formatDuration(config.SHUTDOWN_TIMEOUT)} to finish (send it again to exit at once)`),
    again: (signal) => log.warn({ event: 'signal:exit-now', signal }, `${signal} again: exiting now without waiting for in-flight items`),
  });
  // Everything the daemon set up on the process is taken down again, however it ends: an application
  // that embeds it (runDaemon) keeps its own signal handling afterwards.
  // Started through `npm start`, the daemon is npm's child, and npm does not pass SIGTERM on: when our
  // parent goes away, shut down as if signalled. Started any other way, it outlives the shell that started it.
  const unwatchParent = (options.exitWithParent ?? startedByNpm())
    ? stopWithParent(signals, (parent) => log.warn({ event: 'daemon:orphaned', parent }, `the parent process (pid ${parent}) exited; shutting down`))
    : () => undefined;
  try {
    const status: DaemonStatus = { database: undefined, scheduling: false, shuttingDown: false, broken: brokenFiles(loadErrors), reconcilers: reconcilers.length };
    let services: Services | undefined;
    let consoleContext: OperatorContext | undefined; // the console's pages answer 503 until the database is open and migrated
    // The operations endpoint comes first: while the database is awaited, /healthz answers and /readyz says why it is not ready.
    const ops = await startOperations(setup, status, () => services, () => consoleContext);
    const closeEarly = async () => {
      unwatchParent();
      await ops.close();
    };
    const open = await waitForDatabase(setup, signals.first).catch(async (error: unknown) => {
      await closeEarly();
      throw error;
    });
    if (!open) {
      await closeEarly();
      log.info({ event: 'daemon:stopped-early' }, 'daemon stopped before its database answered');
      return ExitCode.ok;
    }
    status.database = open;
    const teardown = await prepareDatabase(open, setup, options).catch(async (error: unknown) => {
      await open.close();
      await closeEarly();
      throw error;
    });
    consoleContext = { db: open.db, reconcilers, loadErrors, log, passSoon: (name) => services?.passSoon(name) };
    services = new Services(open, setup);
    await services.startPruning();
    if (config.STARTUP_JITTER > 0 && signals.received === 0) {
      const wait = Math.round(Math.random() * config.STARTUP_JITTER);
      log.info({ event: 'daemon:jitter', waitMs: wait }, `waiting ${formatDuration(wait)} (STARTUP_JITTER) before scheduling, to spread replicas that start together`);
      await settlesWithin(signals.first, wait, { unref: true });
    }
    if (reconcilers.length === 0) log.warn({ event: 'daemon:no-reconcilers' }, noReconcilers(options.jobsDir ?? config.JOBS_DIR, status.broken !== undefined));
    if (signals.received === 0) {
      await services.start().catch(async (error: unknown) => {
        await Promise.resolve(teardown?.()).catch(() => undefined);
        await open.close();
        await ops.close();
        throw error;
      });
      status.scheduling = true;
    }
    log.info(
      { event: 'daemon:started', reconcilers: reconcilers.map((r) => r.name), invalidJobFiles: loadErrors.map((e) => e.file), database: open.target },
      `daemon started on ${open.target} with ${reconcilers.length} reconciler(s)${reconcilers.length ? `: ${reconcilers.map((r) => `${r.name} (${r.schedule})`).join(', ')}` : ''}` +
        (status.broken ? `; ${loadErrors.length} job file(s) did not load and are not scheduled (errors above; /readyz fails until they are fixed)` : ''),
    );
    const signal = await signals.first;
    status.shuttingDown = true; // readiness fails from now on
    consoleContext = undefined; // the database closes soon: the console says so instead of failing
    unwatchParent();
    await shutDown(services, setup, signal, () => teardown?.());
    await ops.close();
    log.info({ event: 'daemon:stopped' }, 'daemon stopped');
    return ExitCode.ok;
  } finally {
    signals.dispose();
    unwatchParent();
    await setup.tracing?.shutdown(); // the last spans go to the collector before the process exits
  }
}

/** For /readyz: the first job file that did not load, and how many more. */
function brokenFiles(loadErrors: Setup['loadErrors']): string | undefined {
  if (loadErrors.length === 0) return undefined;
  return `${oneLine(formatLoadError(loadErrors[0]!), 300)}${loadErrors.length > 1 ? ` (and ${loadErrors.length - 1} more job file(s) that did not load: see the log)` : ''}`;
}

function noReconcilers(jobsDir: string, broken: boolean): string {
  return broken
    ? `no job file in ${jobsDir} could be loaded (see the errors above): the daemon will idle until they are fixed and it is restarted`
    : `no reconcilers in ${jobsDir}: the daemon will idle (add a file there, see docs/writing-reconcilers.md)`;
}

/** /healthz, /readyz and /metrics, served from the start (metrics and liveness once the services run); the console at every other path. */
async function startOperations(
  { config, log }: Setup,
  status: DaemonStatus,
  services: () => Services | undefined,
  consoleContext: () => OperatorContext | undefined,
): Promise<OpsServer> {
  const ops = await startOpsServer({
    host: config.HTTP_HOST,
    port: config.HTTP_PORT,
    log,
    maxEventLoopLagMs: config.HEALTH_MAX_EVENT_LOOP_LAG,
    liveness: () => services()?.liveness?.status() ?? { ok: true },
    metrics: async () => {
      const metrics = services()?.metrics;
      return metrics ? { contentType: metrics.registry.contentType, body: await metrics.registry.metrics() } : { contentType: 'text/plain; version=0.0.4', body: '# the daemon is waiting for its database\n' };
    },
    readiness: readinessOf(status),
    ...(config.CONSOLE === 'on' ? { console: createConsoleHandler({ log, tokens: config.CONSOLE_TOKENS, context: consoleContext, listenHost: config.HTTP_HOST, hosts: config.CONSOLE_HOSTS }) } : {}),
  }).catch((error: unknown) => {
    const reason = (error as NodeJS.ErrnoException).code ?? coerceError(error).message;
    throw new UserError(`cannot serve the operations endpoint on ${config.HTTP_HOST}:${config.HTTP_PORT} (${reason}): set HTTP_PORT to a free port, or 0 for any`);
  });
  const consoleNote = config.CONSOLE === 'off' ? 'the console is off (CONSOLE=off)' : `the console at ${ops.url}/ (${config.CONSOLE_TOKENS.length ? 'actions need sign-in' : 'read-only: set CONSOLE_TOKENS to allow actions'})`;
  log.info({ event: 'http:listening', url: ops.url, console: config.CONSOLE === 'on' }, `operations endpoint on ${ops.url}: /healthz /readyz /metrics; ${consoleNote}`);
  return ops;
}

/** The engine's migrations, the search_path check, then the application's own setup: its clean-up, if it returned one. */
async function prepareDatabase(open: Database, { config, log }: Setup, options: DaemonOptions): Promise<(() => Promise<void> | void) | void> {
  const applied = await migrateDatabase(open);
  if (applied > 0) log.info({ applied }, `applied ${applied} migration(s) of the engine schema "${config.RECONCILER_SCHEMA}" to ${open.target}`);
  const warning = await searchPathWarning(open);
  if (warning) log.warn(warning);
  return options.setup?.({ database: open, log });
}

/**
 * The bound on shutdown, whatever hangs (a query on a stalled socket, an item that ignores its
 * AbortSignal): SHUTDOWN_TIMEOUT for the items, then a little for the records and the close.
 */
async function shutDown(services: Services, { config, log }: Setup, signal: NodeJS.Signals, teardown: () => Promise<void> | void): Promise<void> {
  const deadline = Date.now() + config.SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_MS;
  const overrun = setTimeout(() => {
    log.error(`shutdown did not finish within ${formatDuration(config.SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_MS)} (SHUTDOWN_TIMEOUT and a margin): exiting now`);
    process.exit(exitCodeOf(signal));
  }, config.SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_MS);
  overrun.unref();
  const closed = await services.stop(config, deadline, teardown);
  clearTimeout(overrun);
  if (!closed) log.warn(`some items ignored their AbortSignal and still hold database connections; exiting without waiting for them`);
}
