/**
 * The scheduler: node-cron is only the clock. Each tick asks the engine for a pass that
 * serves that tick; the lease statement decides, cluster-wide, whether it runs. On start,
 * a reconciler gets one catch-up pass when a tick passed since its last pass, when its
 * last pass did not end well (aborted by a deploy, broke off), or when a pass was left
 * behind by a process that died. Missed ticks are folded into that pass, not replayed.
 */
import nodeCron, { type ScheduledTask } from 'node-cron';
import type { Logger } from 'pino';
import type { Engine, RunRequest } from '../engine/engine.js';
import type { Reconciler } from '../reconciler.js';
import { coerceError, errorSummary, isDatabaseUnavailable } from '../errors.js';
import { readStates, type StateRow } from '../store/state.js';
import { nextTick, previousTick } from './cron.js';
import type { PassResult } from '../engine/pass.js';
import type { Trigger } from '../store/runs.js';

/** The soonest a retry pass follows the pass before it, so that a short backoff cannot make passes back to back. */
const MIN_RETRY_GAP_MS = 1_000;
/** setTimeout's limit; a later retry is the tick's to serve. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface SchedulerOptions {
  engine: Engine;
  log: Logger;
  /** The clock for catch-up decisions; tests pass a fixed one. */
  now?: () => Date;
}

/** A tick rounded down to the second, as every replica computes it. */
const toTick = (date: Date) => new Date(Math.floor(date.getTime() / 1_000) * 1_000);

export interface CatchUp {
  name: string;
  tick: Date;
  /** The last finished run when we looked; the catch-up runs only if it is still the last. */
  expectLastRunId: number;
  reason: string;
}

export type StateSummary = Pick<StateRow, 'lastTickAt' | 'lastStartedAt' | 'lastStatus' | 'lastRunId' | 'holderId'>;

/** Which reconcilers need a catch-up pass at start, the tick each serves, and why. */
export function dueForCatchUp(reconcilers: Iterable<Reconciler>, states: ReadonlyMap<string, StateSummary>, now: Date): CatchUp[] {
  const due: CatchUp[] = [];
  for (const reconciler of reconcilers) {
    const latestTick = previousTick(reconciler.schedule, reconciler.timezone, now);
    const state = states.get(reconciler.name);
    const tick = latestTick ?? toTick(now);
    const expectLastRunId = state?.lastRunId ?? 0;
    const add = (reason: string) => due.push({ name: reconciler.name, tick, expectLastRunId, reason });
    if (!state || (!state.lastStartedAt && !state.lastTickAt)) add('it never ran');
    else if (state.holderId) add('a pass was left unfinished by a process that stopped');
    else if (state.lastStatus === 'aborted' || state.lastStatus === 'error') add(`its last pass ${state.lastStatus === 'aborted' ? 'was aborted' : 'broke off'}`);
    else if (latestTick && Math.max(state.lastTickAt?.getTime() ?? 0, state.lastStartedAt?.getTime() ?? 0) < latestTick.getTime()) {
      add(`its last pass is older than its latest scheduled tick, ${latestTick.toISOString()}`);
    }
  }
  return due;
}

export class Scheduler {
  readonly #options: SchedulerOptions;
  readonly #tasks: ScheduledTask[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  /** Reconcilers with a pass launched by this scheduler that has not returned yet, and its trigger. */
  readonly #launched = new Map<string, Trigger>();
  /** A tick that came while this process ran a retry or wake pass: served as soon as that pass ends. */
  readonly #tickAfterRetry = new Map<string, Date>();
  /** Reconcilers woken while a pass of theirs ran here: one more pass follows it (it may have scanned past the change). */
  readonly #wakeAfter = new Set<string>();
  readonly #retries = new Set<NodeJS.Timeout>();
  /** Reconcilers with a takeover check scheduled (one at a time). */
  readonly #pendingTakeover = new Set<string>();
  /** Reconcilers with a retry pass scheduled, and when. */
  readonly #pendingRetry = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  #state: 'new' | 'started' | 'stopped' = 'new';

  constructor(options: SchedulerOptions) {
    this.#options = options;
  }

  /** Runs catch-up passes for overdue reconcilers, then starts the cron clocks. Idempotent. */
  async start(): Promise<void> {
    if (this.#state !== 'new') return;
    this.#state = 'started';
    const { engine, log } = this.#options;
    const now = this.#options.now?.() ?? new Date();
    const states = new Map((await readStates(engine.db)).filter((s) => s.partition === 0).map((s) => [s.reconciler, s]));
    for (const catchUp of dueForCatchUp(engine.reconcilers.values(), states, now)) {
      log.info({ reconciler: catchUp.name, tick: catchUp.tick.toISOString() }, `${catchUp.name}: catch-up pass, because ${catchUp.reason}`);
      this.#launch(catchUp.name, { trigger: 'startup', tick: catchUp.tick, expectLastRunId: catchUp.expectLastRunId });
    }
    for (const reconciler of engine.reconcilers.values()) {
      const task = nodeCron.createTask(reconciler.schedule, (context) => this.#tick(reconciler.name, toTick(context.date)), {
        timezone: reconciler.timezone,
        name: reconciler.name,
      });
      // node-cron noticed it could not fire on time (an event-loop stall): fold all of them into one pass.
      task.on('execution:missed', (context) => {
        if (!this.#launched.has(reconciler.name)) this.#tick(reconciler.name, toTick(context.date));
      });
      this.#tasks.push(task);
      await task.start();
    }
  }

  /** Retry and wake passes are this scheduler's own extras: a tick that meets one runs right after it, not skipped. */
  #tick(name: string, tick: Date): void {
    const running = this.#launched.get(name);
    if (running === 'retry' || running === 'wake') this.#tickAfterRetry.set(name, tick);
    else this.#launch(name, { trigger: 'schedule', tick });
  }

  /**
   * Wake-on-change: an early pass of each named reconciler now, or, if this process is
   * running one, a single pass right after it, however many wakes came meanwhile. Like a
   * retry pass it takes the lease, so it never overlaps another replica's pass.
   */
  wake(names: readonly string[]): void {
    if (this.#state !== 'started') return;
    for (const name of names) {
      if (this.#launched.has(name)) this.#wakeAfter.add(name);
      else this.#launch(name, { trigger: 'wake' });
    }
  }

  #launch(name: string, request: RunRequest): void {
    const { engine, log } = this.#options;
    if (this.#state !== 'started') return;
    const mine = !this.#launched.has(name); // else the engine answers "running here", and the running launch owns the entry
    if (mine) this.#launched.set(name, request.trigger);
    const pass = engine
      .runPass(name, request)
      .then((outcome) => {
        // Another process is running this reconciler (this tick, or an older one). If it dies, nobody would pick
        // the work up before the next tick, which may be hours away: look again once its lease could have lapsed,
        // and run only if it never finished (its last run is still the last).
        const holder = !outcome.ran && (outcome.reason === 'held' || outcome.reason === 'already-served') ? outcome.holder : undefined;
        if (holder && !this.#pendingTakeover.has(name)) {
          const wait = Math.max(100, holder.expiresAt.getTime() - Date.now() + 250);
          const timer = setTimeout(() => {
            this.#retries.delete(timer);
            this.#pendingTakeover.delete(name);
            this.#launch(name, { trigger: request.trigger, expectLastRunId: holder.lastRunId });
          }, wait);
          this.#retries.add(timer);
          this.#pendingTakeover.add(name);
        }
        if (outcome.ran) this.#retryWhenDue(outcome.result);
      })
      .catch((error: unknown) => {
        const why = isDatabaseUnavailable(error) ? `the database is unavailable (${errorSummary(coerceError(error), 200)})` : errorSummary(coerceError(error), 300);
        log.error({ reconciler: name, err: coerceError(error) }, `${name}: could not start a ${request.trigger} pass: ${why}; the next tick tries again`);
      })
      .finally(() => {
        this.#inFlight.delete(pass);
        if (!mine) return;
        this.#launched.delete(name);
        const tick = this.#tickAfterRetry.get(name);
        this.#tickAfterRetry.delete(name);
        const woken = this.#wakeAfter.delete(name);
        if (tick) {
          // A full pass serves the wake too, but if another replica served that tick already it does not run: wake after it.
          if (woken) this.#wakeAfter.add(name);
          this.#launch(name, { trigger: 'schedule', tick });
        } else if (woken) this.#launch(name, { trigger: 'wake' });
      });
    this.#inFlight.add(pass);
  }

  /**
   * Failed items fall due after their backoff, which is often much shorter than the schedule
   * (10 s against a minute). Rather than leave them to the next tick, start a `retry` pass
   * when the first of them is due, if that is before the next tick. It takes the lease like
   * any pass, so it never overlaps another; the tick stays the safety net if this process dies.
   */
  #retryWhenDue(result: PassResult): void {
    if (result.nextRetryAt === null || result.status === 'aborted' || result.status === 'error' || this.#state !== 'started') return;
    const reconciler = this.#options.engine.get(result.reconciler);
    // A budget (maxItemsPerPass, maxPassDuration) caps the work per period: the rest is the tick's.
    if (reconciler.maxItemsPerPass !== undefined || reconciler.maxPassDurationMs !== undefined) return;
    // At most half the time in retry passes, however many items fall due one after another.
    const gap = Math.max(MIN_RETRY_GAP_MS, result.durationMs);
    const at = Math.max(result.nextRetryAt.getTime(), Date.now() + gap);
    if (at - Date.now() > MAX_TIMER_MS || at + gap >= nextTick(reconciler.schedule, reconciler.timezone, new Date()).getTime()) return;
    const pending = this.#pendingRetry.get(reconciler.name);
    if (pending && pending.at <= at) return;
    if (pending) {
      clearTimeout(pending.timer);
      this.#retries.delete(pending.timer);
    }
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      this.#pendingRetry.delete(reconciler.name);
      if (!this.#launched.has(reconciler.name)) this.#launch(reconciler.name, { trigger: 'retry' });
    }, at - Date.now());
    this.#retries.add(timer);
    this.#pendingRetry.set(reconciler.name, { at, timer });
  }

  /** Stops the clocks and pending catch-up retries. Passes already started are the engine's to stop. Idempotent. */
  async stop(): Promise<void> {
    this.#state = 'stopped';
    for (const timer of this.#retries) clearTimeout(timer);
    this.#retries.clear();
    this.#pendingRetry.clear();
    this.#tickAfterRetry.clear();
    this.#wakeAfter.clear();
    for (const task of this.#tasks.splice(0)) await task.destroy();
  }

  /** Resolves when every pass this scheduler started has ended. */
  async drain(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all([...this.#inFlight]);
  }
}
