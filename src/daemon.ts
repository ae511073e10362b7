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

const PRUNE_EVERY_MS = 3_600_000;

export async function runDaemon(): Promise<number> {
  const context = await openContext({ jobs: true, logToStdout: true, migrating: true });
  const { config, log, database, reconcilers } = context;
  const applied = await migrateDatabase(database).catch(async (error: unknown) => {
    await context.close();
    throw error;
  });
  if (applied > 0) log.info({ applied }, `applied ${applied} migration(s) to ${database.target}`);

  const engine = new Engine({ db: database.db, reconcilers, log, leaseMs: config.LOCK_TTL });
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

  await prune();
  if (reconcilers.length === 0) log.warn(`no reconcilers in ${config.JOBS_DIR}: the daemon will idle (add a file there, see README "Writing a reconciler")`);
  await scheduler.start();
  log.info(
    { reconcilers: reconcilers.map((r) => r.name), database: database.target },
    `daemon started on ${database.target} with ${reconcilers.length} reconciler(s): ${reconcilers.map((r) => `${r.name} (${r.schedule})`).join(', ')}`,
  );

  await stopSignal;
  clearInterval(pruneTimer);
  await scheduler.stop();
  await engine.stop(config.SHUTDOWN_TIMEOUT);
  await scheduler.drain();
  await context.close();
  log.info('daemon stopped');
  return ExitCode.ok;
}
