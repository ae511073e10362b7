/**
 * The scheduler: node-cron is only the clock. Each tick asks the engine for a pass that
 * serves that tick; the lease statement decides, cluster-wide, whether it runs. On start,
 * a reconciler gets one catch-up pass when a tick passed since its last pass, when its
 * last pass did not end well (aborted by a deploy, broke off), or when a pass was left
 * behind by a process that died. Missed ticks are folded into that pass, not replayed.
 *
 * A partitioned reconciler is scheduled partition by partition (a "lane" each, with its own
 * lease). Each replica claims its own share first (every count-th partition from its rank,
 * see `ownPartitions`), and a second later sweeps the rest: it runs a partition nobody is
 * running (a replica that does not have the reconciler, or is gone) and watches one held by
 * another replica, to take it over if that replica dies. A pass of a partition claimed as its
 * own gives it up when the replicas change and another one owns it now (see handover.ts).
 */
import nodeCron, { type ScheduledTask } from 'node-cron';
import type { Logger } from 'pino';
import { laneOf, type Engine, type RunRequest } from '../engine/engine.js';
import { describeHolder, partitionFields, passLabel, type PassResult, type Trigger } from '../engine/result.js';
import { formatDuration } from '../duration.js';
import type { Reconciler } from '../reconciler.js';
import { coerceError, errorSummary, isDatabaseUnavailable } from '../errors.js';
import { holderOfRow, readStates, type LeaseHolder, type StateRow } from '../store/state.js';
import { ALONE, type Membership } from '../store/database.js';
import { nextTick, previousTick } from './cron.js';
import { readRun } from '../store/runs.js';
import { announceHandOver, type HandOver } from './handover.js';

/** Passes this scheduler adds between ticks: a tick that meets one here runs after it rather than being skipped. */
const EXTRA_TRIGGERS: ReadonlySet<Trigger> = new Set<Trigger>(['retry', 'wake', 'handover', 'handback']);

/** The soonest a retry pass follows the pass before it, so that a short backoff cannot make passes back to back. */
const MIN_RETRY_GAP_MS = 1_000;
/** setTimeout's limit; a later retry is the tick's to serve. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface SchedulerOptions {
  engine: Engine;
  log: Logger;
  /** The clock for catch-up decisions; tests pass a fixed one. */
  now?: () => Date;
  /** Where this daemon stands among the replicas that run a reconciler (see presence.ts); alone by default. */
  membership?: (reconciler: string) => Promise<Membership>;
  /** How long after claiming its own partitions a replica sweeps the others. Default 1 s. */
  sweepDelayMs?: number;
  /** How long after giving a partition up a replica runs it again itself if nobody took it. Default 3 s. */
  handOverGraceMs?: number;
  /** How often a pass that may have to give its partition up looks at the membership again. Default 2 s. */
  handOverLookMs?: number;
}

/** A tick rounded down to the second, as every replica computes it. */
const toTick = (date: Date) => new Date(Math.floor(date.getTime() / 1_000) * 1_000);

export interface CatchUp {
  name: string;
  partition: number;
  tick: Date;
  /** The last finished run when we looked; the catch-up runs only if it is still the last. */
  expectLastRunId: number;
  reason: string;
}

export type StateSummary = Pick<StateRow, 'lastTickAt' | 'lastStartedAt' | 'lastStatus' | 'lastRunId' | 'holderId'>;

/**
 * Which reconciler partitions need a catch-up pass at start, the tick each serves, and why.
 * `states` is keyed by lane (`laneOf(name, partition)`).
 */
export function dueForCatchUp(reconcilers: Iterable<Reconciler>, states: ReadonlyMap<string, StateSummary>, now: Date): CatchUp[] {
  const due: CatchUp[] = [];
  for (const reconciler of reconcilers) {
    const latestTick = previousTick(reconciler.schedule, reconciler.timezone, now);
    const tick = latestTick ?? toTick(now);
    for (let partition = 0; partition < reconciler.partitions; partition++) {
      const state = states.get(laneOf(reconciler.name, partition));
      const expectLastRunId = state?.lastRunId ?? 0;
      const add = (reason: string) => due.push({ name: reconciler.name, partition, tick, expectLastRunId, reason });
      if (!state || (!state.lastStartedAt && !state.lastTickAt)) add('it never ran');
      else if (state.holderId) add('a pass was left unfinished by a process that stopped');
      else if (state.lastStatus === 'aborted' || state.lastStatus === 'error') add(`its last pass ${state.lastStatus === 'aborted' ? 'was aborted' : 'broke off'}`);
      else if (latestTick && Math.max(state.lastTickAt?.getTime() ?? 0, state.lastStartedAt?.getTime() ?? 0) < latestTick.getTime()) {
        add(`its last pass is older than its latest scheduled tick, ${latestTick.toISOString()}`);
      }
    }
  }
  return due;
}

/**
 * The partitions a replica claims at once: every `count`-th from its `rank`, so that replicas
 * that wake together split the partitions evenly without racing (rank 0 of 2 takes 0 and 2 of
 * 4, rank 1 takes 1 and 3). A lone replica takes them all.
 */
export function ownPartitions(partitions: number, membership: Membership): number[] {
  const all = Array.from({ length: partitions }, (_, p) => p);
  return all.filter((p) => p % membership.count === membership.rank);
}

/** A budget (maxItemsPerPass, maxPassDuration) caps the work per scheduled period: no extra pass may start in it. */
const budgeted = (reconciler: Reconciler) => reconciler.maxItemsPerPass !== undefined || reconciler.maxPassDurationMs !== undefined;

/** What a sweep does with the partitions it finds free: a wake only watches; a tick or catch-up also runs them. */
type SweepRequest = (partition: number) => RunRequest | undefined;

/**
 * How long a retry pass waits after the pass before it, at least: the share of that pass's
 * duration spent passing over items it could not work (in backoff, dead), and at least 1 s. A
 * pass that worked what it found (a backlog, whose failures fall due while it runs) is followed
 * as soon as they are due, not a pass's length later or at the next tick; a pass that mostly found
 * items still in backoff keeps most of its length as a brake, so that retry passes which find
 * little to do take at most about half the time, however many items fall due one after another.
 */
export function retryGap(result: Pick<PassResult, 'durationMs' | 'counts'>): number {
  const { found, deferred, dead } = result.counts;
  const passedOver = found === 0 ? 1 : (deferred + dead) / found;
  return Math.max(MIN_RETRY_GAP_MS, result.durationMs * passedOver);
}

export class Scheduler {
  readonly #options: SchedulerOptions;
  readonly #tasks: ScheduledTask[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  /** Lanes with a pass launched by this scheduler that has not returned yet, and its trigger. */
  readonly #launched = new Map<string, Trigger>();
  /** The membership last seen for each reconciler, and when (performance.now()): what passes ask whether to hand their partition over. */
  readonly #membership = new Map<string, { value: Membership; at: number; asking: boolean }>();
  /** A tick that came while this process ran a retry or wake pass of the lane: served as soon as that pass ends. */
  readonly #tickAfterRetry = new Map<string, Date>();
  /** Lanes woken while a pass of theirs ran here: one more pass follows it (it may have scanned past the change). */
  readonly #wakeAfter = new Set<string>();
  /** Lanes handed over to this replica while a pass of theirs ran here, and the given-up run: a hand-over pass follows. */
  readonly #handOverAfter = new Map<string, number>();
  readonly #retries = new Set<NodeJS.Timeout>();
  /** Lanes with a takeover check scheduled (one at a time). */
  readonly #pendingTakeover = new Set<string>();
  /** Lanes with a retry pass scheduled, and when. */
  readonly #pendingRetry = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  /** Partitioned reconcilers with a sweep scheduled, and what it runs (a tick's sweep overrides a wake's). */
  readonly #pendingSweep = new Map<string, { request: SweepRequest; runs: boolean }>();
  /** Reconcilers with a tick that nothing answered yet (no pass started or refused here, no sweep looked), and since when (performance.now()). */
  readonly #unanswered = new Map<string, number>();
  #unsubscribe: (() => void) | undefined;
  #state: 'new' | 'started' | 'stopped' = 'new';

  constructor(options: SchedulerOptions) {
    this.#options = options;
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
      const own = new Set(await this.#ownPartitions(reconciler));
      for (const c of mine.filter((c) => own.has(c.partition))) {
        const partition = { index: c.partition, count: reconciler.partitions };
        log.info({ reconciler: c.name, ...partitionFields(partition), tick: c.tick.toISOString() }, `${passLabel(c.name, partition)}: catch-up pass, because ${c.reason}`);
        this.#launch(c.name, catchUp(c), true);
      }
      const others = new Map(mine.filter((c) => !own.has(c.partition)).map((c) => [c.partition, catchUp(c)]));
      if (others.size > 0) this.#sweepLater(reconciler.name, (p) => others.get(p), true);
    }
    for (const reconciler of engine.reconcilers.values()) {
      const task = nodeCron.createTask(reconciler.schedule, (context) => this.#tick(reconciler.name, toTick(context.date)), {
        timezone: reconciler.timezone,
        name: reconciler.name,
      });
      // node-cron noticed it could not fire on time (an event-loop stall): fold all of them into one pass.
      task.on('execution:missed', (context) => {
        if (!this.#launchedAny(reconciler.name)) this.#tick(reconciler.name, toTick(context.date));
      });
      this.#tasks.push(task);
      await task.start();
    }
  }

  /** A tick: this replica's own partitions now (all of them when unpartitioned), a sweep of the others a moment later. */
  #tick(name: string, tick: Date): void {
    if (!this.#unanswered.has(name)) this.#unanswered.set(name, performance.now());
    this.#claim(name, (partition) => ({ trigger: 'schedule', tick, partition }), true, (lane, partition) => {
      // Retry, wake and hand-over passes are this scheduler's own extras: a tick that meets one runs right after it, not skipped.
      const running = this.#launched.get(lane);
      if (running !== undefined && EXTRA_TRIGGERS.has(running)) {
        this.#tickAfterRetry.set(lane, tick);
        this.#unanswered.delete(name); // a pass of it is running here: that is progress
      } else this.#launch(name, { trigger: 'schedule', tick, partition }, true);
    });
  }

  /**
   * Wake-on-change: an early pass of each named reconciler now, or, if this process is
   * running one, a single pass right after it, however many wakes came meanwhile. Like a
   * retry pass it takes the lease, so it never overlaps another replica's pass.
   */
  wake(names: readonly string[]): void {
    if (this.#state !== 'started') return;
    for (const name of names) {
      this.#claim(name, () => undefined, false, (lane, partition) => {
        if (this.#launched.has(lane)) this.#wakeAfter.add(lane);
        else this.#launch(name, { trigger: 'wake', partition }, true);
      });
    }
  }

  /**
   * Another replica gave up a partition (see handover.ts): run it now if it is this replica's by
   * the membership, or right after the pass of it this process is running. The pass expects the
   * given-up run to be the partition's last, so a late or repeated notice, or one the giver's own
   * fallback beat, starts nothing.
   */
  async handOver({ reconciler: name, partition, partitions, runId }: HandOver): Promise<void> {
    if (this.#state !== 'started') return;
    const reconciler = this.#options.engine.reconcilers.get(name);
    if (!reconciler || reconciler.partitions !== partitions || partition >= partitions) return;
    const own = await this.#ownPartitions(reconciler);
    if (this.#state !== 'started' || !own.includes(partition)) return;
    const lane = laneOf(name, partition);
    if (this.#launched.has(lane)) this.#handOverAfter.set(lane, runId);
    else this.#launch(name, { trigger: 'handover', partition, expectLastRunId: runId }, true);
  }

  #claim(name: string, request: SweepRequest, runsFree: boolean, start: (lane: string, partition: number) => void): void {
    if (this.#state !== 'started') return;
    const reconciler = this.#options.engine.get(name);
    void this.#ownPartitions(reconciler).then((own) => {
      if (this.#state !== 'started') return;
      for (const partition of own) start(laneOf(name, partition), partition);
      if (own.length < reconciler.partitions) this.#sweepLater(name, request, runsFree);
    });
  }

  async #ownPartitions(reconciler: Reconciler): Promise<number[]> {
    if (reconciler.partitions === 1) return [0];
    // Asked afresh at each claim (one cheap query): a replica that just started or left counts at once.
    const membership = this.#options.membership ? await this.#options.membership(reconciler.name).catch(() => ALONE) : ALONE;
    this.#membership.set(reconciler.name, { asking: false, ...this.#membership.get(reconciler.name), value: membership, at: performance.now() });
    return ownPartitions(reconciler.partitions, membership);
  }

  /**
   * For a pass of a partition this replica claimed as its own: a reason to give it up when the
   * membership (looked at every `handOverLookMs`, in the background) says another replica owns it.
   */
  #handOverCheck(reconciler: Reconciler, partition: number): (() => string | undefined) | undefined {
    const membership = this.#options.membership;
    if (reconciler.partitions === 1 || !membership) return undefined;
    // A budget caps the work per period; a hand-over starts another pass in it, which would go past the cap.
    if (budgeted(reconciler)) return undefined;
    const name = reconciler.name;
    return () => {
      const seen = this.#membership.get(name) ?? { value: ALONE, at: -Infinity, asking: false };
      if (!seen.asking && performance.now() - seen.at >= (this.#options.handOverLookMs ?? 2_000)) {
        this.#membership.set(name, { ...seen, asking: true });
        void membership(name)
          .catch(() => ALONE)
          .then((value) => this.#membership.set(name, { value, at: performance.now(), asking: false }));
      }
      const { rank, count } = seen.value;
      if (count <= 1 || ownPartitions(reconciler.partitions, seen.value).includes(partition)) return undefined;
      return `${count} replicas share the partitions now, and partition ${partition} is the one ranked ${partition % count}'s (this one is ranked ${rank})`;
    };
  }

  #launchedAny(name: string): boolean {
    for (const lane of this.#launched.keys()) if (lane.startsWith(`${name}#`)) return true;
    return false;
  }

  /** One sweep per reconciler at a time; a later tick's (which runs free partitions) replaces what is pending, a wake's (which only watches) joins it. */
  #sweepLater(name: string, request: SweepRequest, runsFree: boolean): void {
    const pending = this.#pendingSweep.get(name);
    if (pending) {
      if (runsFree) this.#pendingSweep.set(name, { request, runs: true });
      return;
    }
    this.#pendingSweep.set(name, { request, runs: runsFree });
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      const sweep = this.#pendingSweep.get(name);
      this.#pendingSweep.delete(name);
      if (sweep && this.#state === 'started') void this.#sweep(name, sweep);
    }, this.#options.sweepDelayMs ?? 1_000);
    this.#retries.add(timer);
  }

  /** Looks at the partitions not running here: watches those another replica holds; runs free ones when asked to. */
  async #sweep(name: string, sweep: { request: SweepRequest; runs: boolean }): Promise<void> {
    const { engine, log } = this.#options;
    const reconciler = engine.get(name);
    let rows: StateRow[];
    try {
      rows = (await readStates(engine.db, name)).filter((row) => row.partition < reconciler.partitions);
    } catch (error) {
      log.warn({ reconciler: name, err: coerceError(error) }, `${name}: could not look at its partitions (${errorSummary(coerceError(error), 200)}); the next tick looks again`);
      return;
    }
    this.#unanswered.delete(name);
    const byPartition = new Map(rows.map((row) => [row.partition, row]));
    for (let partition = 0; partition < reconciler.partitions; partition++) {
      const lane = laneOf(name, partition);
      if (this.#launched.has(lane) || this.#state !== 'started') continue;
      const row = byPartition.get(partition);
      if (row?.leaseLive) this.#watchHolder(lane, name, partition, holderOfRow(row), sweep.runs ? 'schedule' : 'wake');
      else if (sweep.runs) {
        const request = sweep.request(partition);
        if (request) this.#launch(name, request);
      }
    }
  }

  /**
   * Another process is running this lane (this tick, or an older one). If it dies, nobody would
   * pick the work up before the next tick, which may be hours away: look again once its lease
   * could have lapsed, and run only if it never finished (its last run is still the last).
   *
   * `own`: the partition is this replica's by the membership, and another holds it (one that is
   * giving it up, or swept it up while this one was away). Then look every `handOverLookMs`, and
   * when it lets go having left work undone, run the rest here at once: a hand-over arrives even
   * where its notice cannot (a pooler that passes no notifications).
   */
  #watchHolder(lane: string, name: string, partition: number, holder: LeaseHolder, trigger: Trigger, own = false): void {
    if (this.#pendingTakeover.has(lane)) return;
    own &&= !budgeted(this.#options.engine.get(name)); // a budget's period is the tick's: no second pass in it
    const leaseWait = Math.max(100, holder.expiresAt.getTime() - Date.now() + 250);
    const wait = own ? Math.min(leaseWait, this.#options.handOverLookMs ?? 2_000) : leaseWait;
    const at = { index: partition, count: this.#options.engine.get(name).partitions };
    this.#options.log.debug(
      { reconciler: name, ...partitionFields(at), holderPid: holder.pid, lookInMs: Math.round(wait) },
      `${passLabel(name, at)}: held by ${describeHolder(holder)}; looking again in ${formatDuration(wait)}${own ? '' : ', when its lease could have lapsed'}`,
    );
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      this.#pendingTakeover.delete(lane);
      if (own) void this.#lookAgain(lane, name, partition, holder, trigger);
      else this.#launch(name, { trigger, expectLastRunId: holder.lastRunId, partition });
    }, wait);
    this.#retries.add(timer);
    this.#pendingTakeover.add(lane);
  }

  /** An own partition another replica held: still held, watch on; let go unfinished or with work left, run it here. */
  async #lookAgain(lane: string, name: string, partition: number, holder: LeaseHolder, trigger: Trigger): Promise<void> {
    const { engine, log } = this.#options;
    try {
      const row = (await readStates(engine.db, name)).find((r) => r.partition === partition);
      if (this.#state !== 'started' || this.#launched.has(lane)) return;
      if (row?.leaseLive) return this.#watchHolder(lane, name, partition, holderOfRow(row), trigger, true);
      const last = row?.lastRunId ?? 0;
      // Its pass never finished (the holder died): take over, as any watcher would.
      if (last === holder.lastRunId) return this.#launch(name, { trigger, expectLastRunId: last, partition }, true);
      // It finished, but stopped early (it gave the partition up, or stopped): the rest is this replica's.
      if ((await readRun(engine.db, last))?.complete === false && this.#state === 'started' && !this.#launched.has(lane)) {
        this.#launch(name, { trigger: 'handover', expectLastRunId: last, partition }, true);
      }
    } catch (error) {
      log.debug({ reconciler: name, partition, err: coerceError(error) }, `${name}: could not look at partition ${partition} again (${errorSummary(coerceError(error), 200)}); the next tick does`);
    }
  }

  /**
   * Starts a pass. `own`: the partition was claimed as this replica's (not swept up or taken over),
   * so the pass gives it up if another replica comes to own it.
   */
  #launch(name: string, request: RunRequest, own = false, onRan?: (result: PassResult) => void): void {
    const { engine, log } = this.#options;
    if (this.#state !== 'started') return;
    const partition = request.partition ?? 0;
    const lane = laneOf(name, partition);
    const mine = !this.#launched.has(lane); // else the engine answers "running here", and the running launch owns the entry
    if (mine) this.#launched.set(lane, request.trigger);
    const handOver = own ? this.#handOverCheck(engine.get(name), partition) : undefined;
    let gaveUp = false;
    let ran = false;
    const pass = engine
      .requestPass(name, handOver ? { ...request, handOver } : request)
      .then((outcome) => {
        this.#unanswered.delete(name); // the database answered: the pass ran, or the lease said why not
        const holder = !outcome.ran && (outcome.reason === 'held' || outcome.reason === 'already-served') ? outcome.holder : undefined;
        if (holder) this.#watchHolder(lane, name, partition, holder, request.trigger, own);
        ran = outcome.ran;
        gaveUp = outcome.ran && outcome.result.handedOver !== undefined;
        if (outcome.ran) onRan?.(outcome.result);
        if (outcome.ran && gaveUp) this.#handedOver(outcome.result);
        else if (outcome.ran) this.#retryWhenDue(outcome.result);
      })
      .catch((error: unknown) => {
        const why = isDatabaseUnavailable(error) ? `the database is unavailable (${errorSummary(coerceError(error), 200)})` : errorSummary(coerceError(error), 300);
        log.error({ reconciler: name, err: coerceError(error) }, `${name}: could not start a ${request.trigger} pass: ${why}; the next tick tries again`);
      })
      .finally(() => {
        this.#inFlight.delete(pass);
        if (!mine) return;
        this.#launched.delete(lane);
        const tick = this.#tickAfterRetry.get(lane);
        this.#tickAfterRetry.delete(lane);
        const woken = this.#wakeAfter.delete(lane);
        const handedOverRun = this.#handOverAfter.get(lane);
        this.#handOverAfter.delete(lane);
        if (gaveUp) return; // what came meanwhile is the new owner's to serve (or this one's, after the grace)
        // Ticks and wakes are recorded only for partitions claimed as this replica's own: their passes are own too.
        // A hand-over is moot once this launch ran the partition: the run it names is no longer the last.
        const handOverRun = ran ? undefined : handedOverRun;
        if (tick) {
          // A full pass serves the wake too, but if another replica served that tick already it does not run: wake after it.
          if (woken) this.#wakeAfter.add(lane);
          if (handOverRun !== undefined) this.#handOverAfter.set(lane, handOverRun);
          this.#launch(name, { trigger: 'schedule', tick, partition }, true);
        } else if (woken) {
          if (handOverRun !== undefined) this.#handOverAfter.set(lane, handOverRun);
          this.#launch(name, { trigger: 'wake', partition }, true);
        } else if (handOverRun !== undefined) this.#launch(name, { trigger: 'handover', partition, expectLastRunId: handOverRun }, true);
      });
    this.#inFlight.add(pass);
  }

  /**
   * This replica gave a partition up: tell the owner, and if nobody has taken it when the grace
   * is over (the owner does not have this reconciler, or went away), run it here after all,
   * without giving it up again.
   */
  #handedOver(result: PassResult): void {
    const { engine, log } = this.#options;
    const name = result.reconciler;
    const { index: partition, count: partitions } = result.partition;
    if (result.runId === null) return;
    const runId = result.runId;
    // A retry of the partition due later is the owner's now: run here, it would take the partition back for a whole pass.
    this.#cancelRetry(laneOf(name, partition));
    const announced = announceHandOver(engine.db, { reconciler: name, partition, partitions, runId })
      .catch((error: unknown) => {
        const then = this.#state === 'started' ? 'running it here again shortly' : 'its owner finds it at its next tick';
        log.warn({ reconciler: name, partition, err: coerceError(error) }, `${passLabel(name, result.partition)}: could not announce the hand-over (${errorSummary(coerceError(error), 200)}); ${then}`);
      })
      .finally(() => this.#inFlight.delete(announced));
    this.#inFlight.add(announced); // drain() waits for it: the pool must not close under it
    if (this.#state !== 'started') return; // stopping: the owner is told, and this replica runs nothing more
    // Expecting the given-up run to be the last: if the owner took the partition, this starts nothing
    // (or watches the owner's pass, to take over if it dies).
    const graceMs = this.#options.handOverGraceMs ?? 3_000;
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      this.#launch(name, { trigger: 'handback', partition, expectLastRunId: runId }, false, (ran) => {
        log.info(
          { reconciler: name, partition, passId: ran.runId },
          `${passLabel(name, ran.partition)}: nobody took it over within ${formatDuration(graceMs)} of the hand-over, so this replica ran it again (pass ${ran.runId})`,
        );
      });
    }, graceMs);
    this.#retries.add(timer);
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
    if (budgeted(reconciler)) return;
    const gap = retryGap(result);
    const at = Math.max(result.nextRetryAt.getTime(), Date.now() + gap);
    if (at - Date.now() > MAX_TIMER_MS || at + gap >= nextTick(reconciler.schedule, reconciler.timezone, new Date()).getTime()) return;
    const partition = result.partition.index;
    const lane = laneOf(reconciler.name, partition);
    const pending = this.#pendingRetry.get(lane);
    if (pending && pending.at <= at) return;
    this.#cancelRetry(lane);
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      this.#pendingRetry.delete(lane);
      if (!this.#launched.has(lane)) this.#launch(reconciler.name, { trigger: 'retry', partition });
    }, at - Date.now());
    this.#retries.add(timer);
    this.#pendingRetry.set(lane, { at, timer });
  }

  #cancelRetry(lane: string): void {
    const pending = this.#pendingRetry.get(lane);
    if (!pending) return;
    clearTimeout(pending.timer);
    this.#retries.delete(pending.timer);
    this.#pendingRetry.delete(lane);
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

  /** Stops the clocks and pending catch-up retries. Passes already started are the engine's to stop. Idempotent. */
  async stop(): Promise<void> {
    this.#state = 'stopped';
    this.#unsubscribe?.();
    this.#unanswered.clear();
    for (const timer of this.#retries) clearTimeout(timer);
    this.#retries.clear();
    this.#pendingRetry.clear();
    this.#tickAfterRetry.clear();
    this.#wakeAfter.clear();
    this.#handOverAfter.clear();
    this.#pendingTakeover.clear();
    this.#pendingSweep.clear();
    for (const task of this.#tasks.splice(0)) await task.destroy();
  }

  /** Resolves when every pass this scheduler started has ended. */
  async drain(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all([...this.#inFlight]);
  }
}
