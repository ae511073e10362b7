/**
 * The long-running process: migrate, load, catch up, schedule, prune history, and shut
 * down gracefully on SIGTERM/SIGINT (a second signal exits at once). A job file that does
 * not load is logged, counted in /metrics and fails /readyz; the other reconcilers run.
 */
import { sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import { ExitCode, UserError, coerceError, errorSummary } from './errors.js';
import { formatDuration } from './duration.js';
import { within } from './timeout.js';
import { Engine } from './engine/engine.js';
import { Scheduler } from './scheduler/scheduler.js';
import { WakeListener } from './scheduler/wake.js';
import { migrateDatabase, pendingMigrations, searchPathWarning } from './store/migrate.js';
import { queryRows, type Database } from './store/database.js';
import { Presence } from './scheduler/presence.js';
import { Liveness } from './liveness.js';
import { Metrics } from './http/metrics.js';
import { CHECK_TIMEOUT_MS, startOpsServer, type Check } from './http/server.js';
import { pruneRuns } from './store/runs.js';
import { prepare, waitForDatabase } from './cli/context.js';
import { oneLine } from './cli/table.js';
import { describeLoadError, formatLoadError } from './engine/load.js';

const PRUNE_EVERY_MS = 3_600_000;
/** After the passes have stopped, how long closing the database may take (within the margin below). */
const CLOSE_GRACE_MS = 5_000;
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
  const setup = await prepare({ jobs: true, logToStdout: true, ...(options.jobsDir ? { jobsDir: options.jobsDir } : {}) });
  const { config, log, reconcilers, loadErrors } = setup;
  for (const error of loadErrors) log.error({ file: error.file, ...(error.excerpt ? { excerpt: error.excerpt } : {}) }, describeLoadError(error));
  /** For /readyz: the first broken file, and how many more. */
  const broken = loadErrors.length === 0 ? undefined
    : `${oneLine(formatLoadError(loadErrors[0]!), 300)}${loadErrors.length > 1 ? ` (and ${loadErrors.length - 1} more job file(s) that did not load: see the log)` : ''}`;

  let signalled: (signal: NodeJS.Signals) => void;
  const stopSignal = new Promise<NodeJS.Signals>((resolve) => (signalled = resolve));
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      log.info({ signal }, `${signal}: shutting down; in-flight items get ${formatDuration(config.SHUTDOWN_TIMEOUT)} to finish (send it again to exit at once)`);
      signalled(signal);
    } else {
      log.warn({ signal }, `${signal} again: exiting now without waiting for in-flight items`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  let orphanCheck: NodeJS.Timeout | undefined;
  // Everything the daemon set up on the process is taken down again, however it ends: an application
  // that embeds it (runDaemon) keeps its own signal handling afterwards.
  try {
    // Started through `npm start`, the daemon is npm's child, and npm does not pass SIGTERM on:
    // when our parent goes away, shut down as if signalled instead of running on as an orphan.
    // Started any other way, it stays up when the shell that started it exits.
    if (options.exitWithParent ?? startedByNpm()) {
      const parent = process.ppid;
      orphanCheck = setInterval(() => {
        if (process.ppid !== parent && signals === 0) {
          log.warn({ parent }, `the parent process (pid ${parent}) exited; shutting down`);
          onSignal('SIGTERM');
        }
      }, 1_000);
      orphanCheck.unref();
    }

    let database: Database | undefined;
    let metrics: Metrics | undefined;
    let liveness: Liveness | undefined;
    let scheduling = false;
    let shuttingDown = false;
    const probe = async (what: string, check: () => Promise<string>): Promise<Check> => {
      try {
        return { ok: true, detail: await within(check(), CHECK_TIMEOUT_MS, what) };
      } catch (error) {
        return { ok: false, detail: errorSummary(coerceError(error), 200) };
      }
    };
    // The operations endpoint comes first: while the database is awaited, /healthz answers and /readyz says why it is not ready.
    const ops = await startOpsServer({
      host: config.HTTP_HOST,
      port: config.HTTP_PORT,
      log,
      maxEventLoopLagMs: config.HEALTH_MAX_EVENT_LOOP_LAG,
      liveness: () => liveness?.status() ?? { ok: true },
      metrics: async () =>
        metrics ? { contentType: metrics.registry.contentType, body: await metrics.registry.metrics() } : { contentType: 'text/plain; version=0.0.4', body: '# the daemon is waiting for its database\n' },
      readiness: async () => {
        const db = database;
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
            detail: `${broken ? `${broken}; ` : ''}${scheduling ? `${reconcilers.length} reconciler(s) loaded and scheduled` : 'starting'}`,
          },
          shutdown: { ok: !shuttingDown, detail: shuttingDown ? 'shutting down' : 'running' },
        };
      },
    }).catch((error: unknown) => {
      const reason = (error as NodeJS.ErrnoException).code ?? coerceError(error).message;
      throw new UserError(`cannot serve the operations endpoint on ${config.HTTP_HOST}:${config.HTTP_PORT} (${reason}): set HTTP_PORT to a free port, or 0 for any`);
    });
    log.info({ url: ops.url }, `operations endpoint on ${ops.url}: /healthz /readyz /metrics`);
    const closeEarly = async () => {
      clearInterval(orphanCheck);
      await ops.close();
    };

    try {
      database = await waitForDatabase(setup, stopSignal);
    } catch (error) {
      await closeEarly();
      throw error;
    }
    if (!database) {
      await closeEarly();
      log.info('daemon stopped before its database answered');
      return ExitCode.ok;
    }
    const open = database;
    let teardown: (() => Promise<void> | void) | void = undefined;
    try {
      const applied = await migrateDatabase(open);
      if (applied > 0) log.info({ applied }, `applied ${applied} migration(s) of the engine schema "${config.RECONCILER_SCHEMA}" to ${open.target}`);
      const warning = await searchPathWarning(open);
      if (warning) log.warn(warning);
      teardown = await options.setup?.({ database: open, log });
    } catch (error) {
      await open.close();
      await closeEarly();
      throw error;
    }

    const engine = new Engine({ db: open.db, control: open.control, reconcilers, log, leaseMs: config.LOCK_TTL });
    // The heartbeat row is written before the scheduler starts, so replicas split partitions from the first pass.
    const presence = new Presence({ db: open.control, reconcilers: reconcilers.map((r) => r.name), leaseMs: config.LOCK_TTL, log });
    const scheduler = new Scheduler({ engine, log, membership: (reconciler) => presence.membership(reconciler) });
    metrics = new Metrics(open.db, reconcilers, log, loadErrors.length); // not the lease pool: scrapes must never delay a renewal
    metrics.attach(engine.events);
    const wakeChannels = [...new Set(reconcilers.flatMap((r) => r.wakeOn))];
    const waker = new WakeListener({
      database: open, reconcilers, target: scheduler, log, debounceMs: config.WAKE_DEBOUNCE,
      ...(wakeChannels.length > 0 ? { counters: metrics.wakeCounters(wakeChannels) } : {}),
    });

    const prune = async () => {
      try {
        let removed = 0;
        for (let batch = await pruneRuns(open.db, config.HISTORY_RETENTION); batch > 0; batch = await pruneRuns(open.db, config.HISTORY_RETENTION)) removed += batch;
        if (removed > 0) log.info({ removed }, `pruned ${removed} pass(es) older than ${formatDuration(config.HISTORY_RETENTION)} from history`);
      } catch (error) {
        log.warn({ err: coerceError(error) }, 'could not prune pass history; will try again in an hour');
      }
    };
    const pruneTimer = setInterval(() => void prune(), PRUNE_EVERY_MS);
    pruneTimer.unref();

    await prune();
    if (config.STARTUP_JITTER > 0 && signals === 0) {
      const wait = Math.round(Math.random() * config.STARTUP_JITTER);
      log.info({ waitMs: wait }, `waiting ${formatDuration(wait)} (STARTUP_JITTER) before scheduling, to spread replicas that start together`);
      await Promise.race([new Promise((resolve) => setTimeout(resolve, wait).unref()), stopSignal]);
    }
    const jobsDir = options.jobsDir ?? config.JOBS_DIR;
    if (reconcilers.length === 0) {
      log.warn(
        broken
          ? `no job file in ${jobsDir} could be loaded (see the errors above): the daemon will idle until they are fixed and it is restarted`
          : `no reconcilers in ${jobsDir}: the daemon will idle (add a file there, see docs/writing-reconcilers.md)`,
      );
    }
    if (signals === 0) {
      try {
        await presence.start();
        await waker.start();
        await scheduler.start();
      } catch (error) {
        clearInterval(pruneTimer);
        await presence.stop();
        await waker.stop().catch(() => undefined);
        await scheduler.stop();
        await Promise.resolve(teardown?.()).catch(() => undefined);
        await open.close();
        await ops.close();
        throw error;
      }
      scheduling = true;
      liveness = new Liveness({ maxStallMs: config.HEALTH_MAX_STALL, log, pools: open.pools, overdue: () => scheduler.overdue(), databaseAnswers: () => open.answersFresh() });
      liveness.start();
    }
    log.info(
      { reconcilers: reconcilers.map((r) => r.name), invalidJobFiles: loadErrors.map((e) => e.file), database: open.target },
      `daemon started on ${open.target} with ${reconcilers.length} reconciler(s)${reconcilers.length ? `: ${reconcilers.map((r) => `${r.name} (${r.schedule})`).join(', ')}` : ''}` +
        (broken ? `; ${loadErrors.length} job file(s) did not load and are not scheduled (errors above; /readyz fails until they are fixed)` : ''),
    );

    const signal = await stopSignal;
    shuttingDown = true; // readiness fails from now on
    liveness?.stop();
    // The bound on shutdown, whatever hangs (a query on a stalled socket, an item that ignores its
    // AbortSignal): SHUTDOWN_TIMEOUT for the items, then a little for the records and the close.
    const deadline = Date.now() + config.SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_MS;
    const overrun = setTimeout(() => {
      log.error(`shutdown did not finish within ${formatDuration(config.SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_MS)} (SHUTDOWN_TIMEOUT and a margin): exiting now`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }, config.SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN_MS);
    overrun.unref();
    clearInterval(pruneTimer);
    clearInterval(orphanCheck);
    await waker.stop();
    await scheduler.stop();
    await presence.stop(); // the others take this one's partitions at their next claim
    await engine.stop(config.SHUTDOWN_TIMEOUT);
    // An item that ignores its AbortSignal may hold a connection forever: do not wait on it.
    const closed = await Promise.race([
      scheduler
        .drain()
        .then(() => teardown?.())
        .catch((error: unknown) => log.warn({ err: coerceError(error) }, `the setup's clean-up failed: ${errorSummary(coerceError(error), 300)}`))
        .then(() => open.close())
        .then(() => true),
      new Promise<false>((resolve) => setTimeout(() => resolve(false), Math.max(0, Math.min(CLOSE_GRACE_MS, deadline - Date.now() - 300))).unref()),
    ]);
    clearTimeout(overrun);
    if (!closed) log.warn(`some items ignored their AbortSignal and still hold database connections; exiting without waiting for them`);
    await ops.close();
    log.info('daemon stopped');
    return ExitCode.ok;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    clearInterval(orphanCheck);
  }
}
