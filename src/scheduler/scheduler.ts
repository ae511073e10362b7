/**
 * The scheduler: node-cron is only the clock. Each tick asks the engine for a pass that
 * serves that tick; the lease statement decides, cluster-wide, whether it runs. On start,
 * a reconciler gets one catch-up pass when a tick passed since its last pass, when its
 * last pass did not end well (aborted by a deploy, broke off), or when a pass was left
 * behind by a process that died. Missed ticks are folded into that pass, not replayed.
 *
 * A partitioned reconciler is scheduled partition by partition (a lane each, with its own
 * lease). Each replica claims its own share first (every count-th partition from its rank,
 * see membership.ts), and a second later sweeps the rest (sweep.ts): it watches a partition held
 * by another replica, to take it over if that replica dies (takeover.ts), and runs one nobody
 * runs if its owner has not started it a few seconds later. A pass of a partition claimed as its own gives it up when the replicas change
 * and another one owns it now (handover.ts).
 *
 * This class only coordinates: what runs next in a partition is its lane's to decide (lane.ts),
 * and every timer it arms is in one timer set (timers.ts), cleared at stop.
 */
import type { Logger } from 'pino';
import { laneOf, type Engine, type RunRequest } from '../engine/engine.js';
import { partitionFields, passLabel, type PassResult } from '../engine/result.js';
import { coerceError, errorSummary, isDatabaseUnavailable } from '../errors.js';
import { readStates } from '../store/state.js';
import { Clock, dueForCatchUp, type CatchUp } from './clock.js';
import { HandOvers, type HandOver } from './handover.js';
import { Lane, type LaneContext, type PassEnd, type PassOptions } from './lane.js';
import { MembershipCache, type MembershipSource } from './membership.js';
import { retryAt } from './retry.js';
import { Sweeps, type SweepRequest } from './sweep.js';
import { Takeovers } from './takeover.js';
import { TimerSet } from './timers.js';

export { dueForCatchUp, type CatchUp, type StateSummary } from './clock.js';
export { ownPartitions } from './membership.js';
export { retryGap } from './retry.js';

export interface SchedulerOptions {
  engine: Engine;
  log: Logger;
  /** The clock for catch-up decisions; tests pass a fixed one. */
  now?: () => Date;
  /** Where this daemon stands among the replicas that run a reconciler (see presence.ts); alone by default. */
  membership?: MembershipSource;
  /** How long after claiming its own partitions a replica sweeps the others. Default 1 s. */
  sweepDelayMs?: number;
  /** How long after its sweep a replica gives the owner of a free partition to start its pass before it runs it itself. Default 5 s. */
  sweepGraceMs?: number;
  /** How long after giving a partition up a replica runs it again itself if nobody took it. Default 3 s. */
  handOverGraceMs?: number;
  /** How often a pass that may have to give its partition up looks at the membership again. Default 2 s. */
  handOverLookMs?: number;
}

const NOT_RAN: PassEnd = { ran: false, gaveUp: false };

export class Scheduler {
  readonly #options: SchedulerOptions;
  readonly #clock = new Clock();
  readonly #timers = new TimerSet();
  readonly #lanes = new Map<string, Lane>();
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #membership: MembershipCache;
  readonly #takeovers: Takeovers;
  readonly #sweeps: Sweeps;
  readonly #handOvers: HandOvers;
  /** Reconcilers with a tick that nothing answered yet (no pass started or refused here, no sweep looked), and since when (performance.now()). */
  readonly #unanswered = new Map<string, number>();
  #unsubscribe: (() => void) | undefined;
  #state: 'new' | 'started' | 'stopped' = 'new';

  constructor(options: SchedulerOptions) {
    this.#options = options;
    const context: LaneContext = {
      engine: options.engine,
      log: options.log,
      timers: this.#timers,
      started: () => this.#state === 'started',
      lane: (name, partition) => this.#lane(name, partition),
    };
    this.#membership = new MembershipCache(options.membership, options.handOverLookMs ?? 2_000);
    this.#takeovers = new Takeovers(context, { lookMs: options.handOverLookMs ?? 2_000, graceMs: options.handOverGraceMs ?? 3_000 });
    const answered = (name: string) => void this.#unanswered.delete(name);
    this.#sweeps = new Sweeps(context, { delayMs: options.sweepDelayMs ?? 1_000, graceMs: options.sweepGraceMs ?? 5_000, takeovers: this.#takeovers, answered });
    this.#handOvers = new HandOvers(context, { membership: this.#membership, takeovers: this.#takeovers, track: (work) => this.#track(work) });
  }

  /** Runs catch-up passes for overdue reconcilers, then starts the cron clocks. Idempotent. */
  async start(): Promise<void> {
    if (this.#state !== 'new') return;
    this.#state = 'started';
    const { engine, log } = this.#options;
    this.#unsubscribe = engine.events.on('pass:start', ({ reconciler }) => void this.#unanswered.delete(reconciler));
    const now = this.#options.now?.() ?? new Date();
    const states = new Map((await readStates(engine.db)).map((s) => [laneOf(s.reconciler, s.partition), s]));
    const due = dueForCatchUp(engine.reconcilers.values(), states, now);
    for (const reconciler of engine.reconcilers.values()) {
      const mine = due.filter((c) => c.name === reconciler.name);
      if (mine.length === 0) continue;
      const catchUp = (c: CatchUp): RunRequest => ({ trigger: 'startup', tick: c.tick, expectLastRunId: c.expectLastRunId, partition: c.partition });
      const own = new Set(await this.#membership.own(reconciler));
      for (const c of mine.filter((c) => own.has(c.partition))) {
        const partition = { index: c.partition, count: reconciler.partitions };
        log.info({ event: 'pass:catch-up', reconciler: c.name, ...partitionFields(partition), tick: c.tick.toISOString() }, `${passLabel(c.name, partition)}: catch-up pass, because ${c.reason}`);
        this.#lane(c.name, c.partition).request({ kind: 'now', run: catchUp(c), own: true });
      }
      const others = new Map(mine.filter((c) => !own.has(c.partition)).map((c) => [c.partition, catchUp(c)]));
      if (others.size > 0) this.#sweeps.later(reconciler.name, (p) => others.get(p), { runsFree: true });
    }
    await this.#clock.start(engine.reconcilers.values(), {
      tick: (name, tick) => this.#tick(name, tick),
      // node-cron could not fire on time (an event-loop stall): fold all of them into one pass.
      missed: (name, tick) => {
        if (!this.#busyAny(name)) this.#tick(name, tick);
      },
    });
  }

  /** A tick: this replica's own partitions now (all of them when unpartitioned), a sweep of the others a moment later. */
  #tick(name: string, tick: Date): void {
    if (!this.#unanswered.has(name)) this.#unanswered.set(name, performance.now());
    this.#claim(name, (partition) => ({ trigger: 'schedule', tick, partition }), { runsFree: true }, (lane) => {
      // A tick that waits for one of this scheduler's extra passes: a pass of it is running here, that is progress.
      if (lane.request({ kind: 'tick', tick }) === 'waiting') this.#unanswered.delete(name);
    });
  }

  /**
   * Wake-on-change: an early pass of each named reconciler now, or, if this process is
   * running one, a single pass right after it, however many wakes came meanwhile. Like a
   * retry pass it takes the lease, so it never overlaps another replica's pass.
   */
  wake(names: readonly string[]): void {
    if (this.#state !== 'started') return;
    for (const name of names) this.#claim(name, () => undefined, { runsFree: false }, (lane) => void lane.request({ kind: 'wake' }));
  }

  /** Another replica gave up a partition (see handover.ts): run it if it is this replica's. */
  async handOver(handOver: HandOver): Promise<void> {
    await this.#handOvers.receive(handOver);
  }

  /** Asks each own lane of `name` now, and sweeps the others later. */
  #claim(name: string, request: SweepRequest, sweep: { runsFree: boolean }, ask: (lane: Lane) => void): void {
    if (this.#state !== 'started') return;
    const reconciler = this.#options.engine.get(name);
    void this.#membership.own(reconciler).then((own) => {
      if (this.#state !== 'started') return;
      for (const partition of own) ask(this.#lane(name, partition));
      if (own.length < reconciler.partitions) this.#sweeps.later(name, request, sweep);
    });
  }

  #lane(name: string, partition: number): Lane {
    const key = laneOf(name, partition);
    let lane = this.#lanes.get(key);
    if (!lane) {
      lane = new Lane(name, partition, { started: () => this.#state === 'started', run: (n, request, options) => this.#run(n, request, options), timers: this.#timers });
      this.#lanes.set(key, lane);
    }
    return lane;
  }

  #busyAny(name: string): boolean {
    for (const lane of this.#lanes.values()) if (lane.name === name && lane.busy) return true;
    return false;
  }

  /** Runs one pass (for its lane) and acts on its outcome: a holder to watch, a hand-over to announce, a retry to arm. Never rejects. */
  #run(name: string, request: RunRequest, { own, onRan }: PassOptions): Promise<PassEnd> {
    const { engine, log } = this.#options;
    const lane = this.#lane(name, request.partition ?? 0);
    const handOver = own ? this.#membership.handOverCheck(engine.get(name), lane.partition) : undefined;
    const pass = engine
      .requestPass(name, handOver ? { ...request, handOver } : request)
      .then((outcome): PassEnd => {
        this.#unanswered.delete(name); // the database answered: the pass ran, or the lease said why not
        const holder = !outcome.ran && (outcome.reason === 'held' || outcome.reason === 'already-served') ? outcome.holder : undefined;
        if (holder) this.#takeovers.watch(lane, holder, request.trigger, { own });
        else if (own && !outcome.ran && outcome.reason === 'already-served') this.#takeovers.lookAtServed(lane, request.trigger);
        if (!outcome.ran) return NOT_RAN;
        onRan?.(outcome.result);
        const gaveUp = outcome.result.handedOver !== undefined;
        if (gaveUp) this.#handOvers.gaveUp(outcome.result);
        else this.#retryWhenDue(outcome.result);
        return { ran: true, gaveUp };
      })
      .catch((error: unknown): PassEnd => {
        const why = isDatabaseUnavailable(error) ? `the database is unavailable (${errorSummary(coerceError(error), 200)})` : errorSummary(coerceError(error), 300);
        log.error({ reconciler: name, err: coerceError(error) }, `${name}: could not start a ${request.trigger} pass: ${why}; the next tick tries again`);
        return NOT_RAN;
      });
    return this.#track(pass);
  }

  /** Keeps `work` for drain() until it settles. */
  #track<T>(work: Promise<T>): Promise<T> {
    const tracked = work.finally(() => this.#inFlight.delete(tracked));
    this.#inFlight.add(tracked);
    return tracked;
  }

  /** A pass left failed items that fall due before the next tick: a retry pass of its lane then (see retry.ts). */
  #retryWhenDue(result: PassResult): void {
    if (this.#state !== 'started') return;
    const at = retryAt(result, this.#options.engine.get(result.reconciler));
    if (at !== undefined) this.#lane(result.reconciler, result.partition.index).retryAt(at);
  }

  /**
   * The reconciler whose tick has waited longest for any answer (a pass started, the lease
   * refused, a sweep that looked), and since when (performance.now()): for liveness. Errors
   * are no answer: a replica whose every attempt fails is not progressing.
   */
  overdue(): { reconciler: string; since: number } | undefined {
    let oldest: { reconciler: string; since: number } | undefined;
    for (const [reconciler, since] of this.#unanswered) if (!oldest || since < oldest.since) oldest = { reconciler, since };
    return oldest;
  }

  /** Stops the clocks and every pending pass (retries, sweeps, takeovers, hand-backs). Passes already started are the engine's to stop. Idempotent. */
  async stop(): Promise<void> {
    this.#state = 'stopped';
    this.#unsubscribe?.();
    this.#unanswered.clear();
    this.#timers.clear();
    for (const lane of this.#lanes.values()) lane.forget();
    this.#sweeps.clear();
    await this.#clock.stop();
  }

  /** Resolves when every pass this scheduler started has ended. */
  async drain(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all([...this.#inFlight]);
  }
}
