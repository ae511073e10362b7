/**
 * The long-running process: migrate, load, catch up, schedule, prune history, and shut
 * down gracefully on SIGTERM/SIGINT (a second signal exits at once).
 */
import { ExitCode, coerceError } from './errors.js';
import { formatDuration } from './duration.js';
import { Engine } from './engine/engine.js';
import { Scheduler } from './scheduler/scheduler.js';
import { migrateDatabase } from './store/migrate.js';
import { pruneRuns } from './store/runs.js';
import { openContext } from './cli/context.js';
import { isZeroConfig } from './config.js';
import { seedDemoIfEmpty, startDemoProvider } from './returns/demo.js';

const PRUNE_EVERY_MS = 3_600_000;
/** After the passes have stopped, how long closing the database may take. */
const CLOSE_GRACE_MS = 5_000;

export async function runDaemon(): Promise<number> {
  const context = await openContext({ jobs: true, logToStdout: true, migrating: true });
  const { config, log, database, reconcilers } = context;
  const applied = await migrateDatabase(database).catch(async (error: unknown) => {
    await context.close();
    throw error;
  });
  if (applied > 0) log.info({ applied }, `applied ${applied} migration(s) to ${database.target}`);
  const demo = isZeroConfig(config) ? await startDemoProvider(database, log) : undefined;
  if (demo) await seedDemoIfEmpty(database, log);

  const engine = new Engine({ db: database.db, control: database.control, reconcilers, log, leaseMs: config.LOCK_TTL });
  const scheduler = new Scheduler({ engine, log });

  const prune = async () => {
    try {
      let removed = 0;
      for (let batch = await pruneRuns(database.db, config.HISTORY_RETENTION); batch > 0; batch = await pruneRuns(database.db, config.HISTORY_RETENTION)) removed += batch;
      if (removed > 0) log.info({ removed }, `pruned ${removed} pass(es) older than ${formatDuration(config.HISTORY_RETENTION)} from history`);
    } catch (error) {
      log.warn({ err: coerceError(error) }, 'could not prune pass history; will try again in an hour');
    }
  };
  const pruneTimer = setInterval(() => void prune(), PRUNE_EVERY_MS);

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
  // Started through `npm start`, the daemon is npm's child, and npm does not pass SIGTERM on:
  // when our parent goes away, shut down as if signalled instead of running on as an orphan.
  const parent = process.ppid;
  const orphanCheck = setInterval(() => {
    if (process.ppid !== parent && signals === 0) {
      log.warn({ parent }, `the parent process (pid ${parent}) exited; shutting down`);
      onSignal('SIGTERM');
    }
  }, 1_000);
  orphanCheck.unref();

  await prune();
  if (reconcilers.length === 0) log.warn(`no reconcilers in ${config.JOBS_DIR}: the daemon will idle (add a file there, see README "Writing a reconciler")`);
  await scheduler.start();
  log.info(
    { reconcilers: reconcilers.map((r) => r.name), database: database.target },
    `daemon started on ${database.target} with ${reconcilers.length} reconciler(s)${reconcilers.length ? `: ${reconcilers.map((r) => `${r.name} (${r.schedule})`).join(', ')}` : ''}`,
  );

  await stopSignal;
  clearInterval(pruneTimer);
  clearInterval(orphanCheck);
  await scheduler.stop();
  await engine.stop(config.SHUTDOWN_TIMEOUT);
  // An item that ignores its AbortSignal may hold a connection forever: do not wait on it.
  const closed = await Promise.race([
    scheduler.drain().then(() => demo?.close()).then(() => context.close()).then(() => true),
    new Promise<false>((resolve) => setTimeout(() => resolve(false), CLOSE_GRACE_MS).unref()),
  ]);
  if (!closed) log.warn(`some items ignored their AbortSignal and still hold database connections; exiting without waiting for them`);
  log.info('daemon stopped');
  return ExitCode.ok;
}
