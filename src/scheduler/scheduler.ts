/**
 * The scheduler: node-cron is only the clock. Each tick asks the engine for a pass that
 * serves that tick; the lease statement decides, cluster-wide, whether it runs. On start,
 * a reconciler whose last pass is older than its latest tick gets one catch-up pass
 * (missed ticks are folded into it, not replayed).
 */
import type { Logger } from 'pino';
import type { TaskContext } from 'node-cron';
import type { Engine } from '../engine/engine.js';
import type { Reconciler } from '../reconciler.js';
import { coerceError } from '../errors.js';
import { readStates } from '../store/state.js';
import type { Trigger } from '../store/runs.js';
import { CronSchedule } from './cron.js';

export interface SchedulerOptions {
  engine: Engine;
  log: Logger;
  /** The clock for catch-up decisions; tests pass a fixed one. */
  now?: () => Date;
}

/** A tick rounded down to the second, as every replica computes it. */
const toTick = (date: Date) => new Date(Math.floor(date.getTime() / 1_000) * 1_000);

/** Which reconcilers need a catch-up pass, and the tick each one serves. */
export function dueForCatchUp(
  reconcilers: Iterable<Reconciler>,
  lastStarted: ReadonlyMap<string, Date | null>,
  now: Date,
): { name: string; tick: Date }[] {
  const due: { name: string; tick: Date }[] = [];
  for (const reconciler of reconcilers) {
    const latestTick = new CronSchedule(reconciler.schedule, reconciler.timezone).previous(now);
    const last = lastStarted.get(reconciler.name) ?? null;
    if (last === null) due.push({ name: reconciler.name, tick: latestTick ?? toTick(now) });
    else if (latestTick && last.getTime() < latestTick.getTime()) due.push({ name: reconciler.name, tick: latestTick });
  }
  return due;
}

export class Scheduler {
  readonly #options: SchedulerOptions;
  readonly #schedules = new Map<string, CronSchedule>();
  readonly #inFlight = new Set<Promise<void>>();
  #started = false;

  constructor(options: SchedulerOptions) {
    this.#options = options;
  }

  /** Runs catch-up passes for overdue reconcilers, then starts the cron clocks. Idempotent. */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    const { engine, log } = this.#options;
    const now = this.#options.now?.() ?? new Date();
    const states = await readStates(engine.db);
    const lastStarted = new Map(states.filter((s) => s.partition === 0).map((s) => [s.reconciler, s.lastStartedAt]));
    for (const { name, tick } of dueForCatchUp(engine.reconcilers.values(), lastStarted, now)) {
      log.info({ reconciler: name, tick: tick.toISOString() }, `${name}: catch-up pass (its last pass is older than its latest scheduled tick, ${tick.toISOString()})`);
      this.#launch(name, 'startup', tick);
    }
    for (const reconciler of engine.reconcilers.values()) {
      const schedule = new CronSchedule(reconciler.schedule, reconciler.timezone, (context: TaskContext) => this.#launch(reconciler.name, 'schedule', toTick(context.date)), reconciler.name);
      // node-cron noticed it could not fire a tick on time (event loop stall): fold it into one pass.
      schedule.task.on('execution:missed', (context) => this.#launch(reconciler.name, 'schedule', toTick(context.date)));
      this.#schedules.set(reconciler.name, schedule);
      await schedule.task.start();
    }
  }

  /** When `name` fires next, per its cron and time zone. */
  nextRun(name: string, after = new Date()): Date {
    const reconciler = this.#options.engine.get(name);
    return (this.#schedules.get(name) ?? new CronSchedule(reconciler.schedule, reconciler.timezone)).next(after);
  }

  #launch(name: string, trigger: Trigger, tick: Date): void {
    const { engine, log } = this.#options;
    const pass = engine
      .runPass(name, { trigger, tick })
      .then(() => undefined)
      .catch((error: unknown) => {
        log.error({ reconciler: name, err: coerceError(error) }, `${name}: could not start a ${trigger} pass: ${coerceError(error).message}`);
      })
      .finally(() => this.#inFlight.delete(pass));
    this.#inFlight.add(pass);
  }

  /** Stops the clocks. Passes already started are the engine's to stop. Idempotent. */
  async stop(): Promise<void> {
    for (const schedule of this.#schedules.values()) await schedule.task.destroy();
    this.#schedules.clear();
  }

  /** Resolves when every pass this scheduler started has ended. */
  async drain(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all([...this.#inFlight]);
  }
}
