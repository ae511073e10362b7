/**
 * The daemon's working parts on an open database, and their order: the engine, the replica
 * heartbeat (presence), the scheduler, the wake listener, metrics, history pruning and liveness.
 * Started in that order; stopped in the reverse, within SHUTDOWN_TIMEOUT and a margin.
 */
import type { Config } from '../config.js';
import type { Setup } from '../context.js';
import { coerceError, errorSummary } from '../errors.js';
import { formatDuration } from '../duration.js';
import { Engine } from '../engine/engine.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { WakeListener } from '../scheduler/wake.js';
import { Presence } from '../scheduler/presence.js';
import { Liveness } from '../liveness.js';
import { Metrics } from '../http/metrics.js';
import { pruneRuns } from '../store/runs.js';
import type { Database } from '../store/database.js';
import { settlesWithin } from '../timeout.js';

const PRUNE_EVERY_MS = 3_600_000;
/** After the passes have stopped, how long closing the database may take (within the margin of the deadline). */
const CLOSE_GRACE_MS = 5_000;

export class Services {
  readonly engine: Engine;
  readonly metrics: Metrics;
  readonly #presence: Presence;
  readonly #scheduler: Scheduler;
  readonly #waker: WakeListener;
  readonly #open: Database;
  readonly #setup: Setup;
  #pruneTimer: NodeJS.Timeout | undefined;
  #liveness: Liveness | undefined;

  constructor(open: Database, setup: Setup) {
    const { config, log, reconcilers, loadErrors } = setup;
    this.#open = open;
    this.#setup = setup;
    this.engine = new Engine({ db: open.db, control: open.control, reconcilers, log, leaseMs: config.LEASE_TTL });
    // The heartbeat row is written before the scheduler starts, so replicas split partitions from the first pass.
    this.#presence = new Presence({ db: open.control, reconcilers: reconcilers.map((r) => r.name), leaseMs: config.LEASE_TTL, log, listening: () => this.#waker.hearing });
    this.#scheduler = new Scheduler({ engine: this.engine, log, membership: (reconciler) => this.#presence.membership(reconciler) });
    this.metrics = new Metrics(open.db, reconcilers, log, loadErrors.length); // not the lease pool: scrapes must never delay a renewal
    this.metrics.attach(this.engine.events);
    const wakeChannels = [...new Set(reconcilers.flatMap((r) => r.wakeOn))];
    this.#waker = new WakeListener({
      database: open, reconcilers, target: this.#scheduler, log, debounceMs: config.WAKE_DEBOUNCE,
      ...(wakeChannels.length > 0 ? { counters: this.metrics.wakeCounters(wakeChannels) } : {}),
    });
  }

  get liveness(): Liveness | undefined {
    return this.#liveness;
  }

  /** An early pass of `reconciler`, as a notification would start one (after a person's action in the console). */
  passSoon(reconciler: string): void {
    this.#scheduler.wake([reconciler]);
  }

  /** Prunes history now and every hour from now on. */
  async startPruning(): Promise<void> {
    this.#pruneTimer = setInterval(() => void this.#prune(), PRUNE_EVERY_MS);
    this.#pruneTimer.unref();
    await this.#prune();
  }

  async #prune(): Promise<void> {
    const { config, log } = this.#setup;
    try {
      let removed = 0;
      for (let batch = await pruneRuns(this.#open.db, config.HISTORY_RETENTION); batch > 0; batch = await pruneRuns(this.#open.db, config.HISTORY_RETENTION)) removed += batch;
      if (removed > 0) log.info({ removed }, `pruned ${removed} pass(es) older than ${formatDuration(config.HISTORY_RETENTION)} from history`);
    } catch (error) {
      log.warn({ err: coerceError(error) }, 'could not prune pass history; will try again in an hour');
    }
  }

  /** Heartbeat, wake listener, clocks (and catch-up passes), then liveness. Undoes what it started when a part fails to start. */
  async start(): Promise<void> {
    const { config, log } = this.#setup;
    try {
      await this.#presence.start();
      await this.#waker.start();
      await this.#scheduler.start();
    } catch (error) {
      clearInterval(this.#pruneTimer);
      await this.#presence.stop();
      await this.#waker.stop().catch(() => undefined);
      await this.#scheduler.stop();
      throw error;
    }
    const scheduler = this.#scheduler;
    const open = this.#open;
    this.#liveness = new Liveness({ maxStallMs: config.HEALTH_MAX_STALL, log, pools: open.pools, overdue: () => scheduler.overdue(), databaseAnswers: () => open.answersFresh() });
    this.#liveness.start();
  }

  /**
   * Stops taking work, lets in-flight items finish for up to SHUTDOWN_TIMEOUT, then runs the
   * setup's clean-up and closes the database, by `deadline` (Date.now() based). Resolves false
   * when items that ignore their AbortSignal still held connections at the deadline.
   */
  async stop(config: Config, deadline: number, teardown: () => Promise<void> | void): Promise<boolean> {
    const { log } = this.#setup;
    this.#liveness?.stop();
    clearInterval(this.#pruneTimer);
    await this.#waker.stop();
    await this.#scheduler.stop();
    await this.#presence.stop(); // the others take this one's partitions at their next claim
    await this.engine.stop(config.SHUTDOWN_TIMEOUT);
    // An item that ignores its AbortSignal may hold a connection forever: do not wait on it.
    const closing = this.#scheduler
      .drain()
      .then(() => teardown())
      .catch((error: unknown) => log.warn({ err: coerceError(error) }, `the setup's clean-up failed: ${errorSummary(coerceError(error), 300)}`))
      .then(() => this.#open.close());
    return settlesWithin(closing, Math.max(0, Math.min(CLOSE_GRACE_MS, deadline - Date.now() - 300)), { unref: true });
  }
}
