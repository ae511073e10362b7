/**
 * The engine: the loaded reconcilers, their passes, and the leases that keep two passes of
 * one reconciler from overlapping anywhere in the cluster. Every way to start a pass (the
 * schedule, catch-up at start-up, `reconciler run`) comes through `runPass`, which runs it with executePass (pass.ts).
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Db, Partition, Reconciler } from '../reconciler.js';
import { UserError, coerceError, errorSummary } from '../errors.js';
import { formatDuration } from '../duration.js';
import { settlesWithin } from '../timeout.js';
import { didYouMean } from '../suggest.js';
import { acquireLease, countSkippedTick, finishAndRelease, renewLease, type LeaseHolder } from '../store/state.js';
import { EngineEvents } from './events.js';
import { executePass } from './pass.js';
import { describeHolder, partitionFields, passLabel, summarize, type PassResult, type Trigger } from './result.js';
import { Slots } from './slots.js';

export interface EngineOptions {
  db: Db;
  /** Where leases are taken and renewed: a separate small pool, so lease traffic never queues behind items. Defaults to `db`. */
  control?: Db;
  reconcilers: readonly Reconciler[];
  log: Logger;
  /** Lease length. A holder that dies is taken over at most this long after its last renewal. */
  leaseMs: number;
  events?: EngineEvents;
  host?: string;
  pid?: number;
  /** Source of randomness for backoff jitter (tests pin it). */
  random?: () => number;
}

export interface RunRequest {
  trigger: Trigger;
  dryRun?: boolean;
  onlyKey?: string;
  /** The scheduled tick this pass serves (schedule and startup triggers). */
  tick?: Date;
  /** Catch-up: run only if the last finished run is still this one (see acquireLease). */
  expectLastRunId?: number;
  /** Which partition of a partitioned reconciler (0 when it has none). */
  partition?: number;
  /** Asked before each item: a reason to give the partition up to another replica (see PassSignals.handOver). */
  handOver?: () => string | undefined;
}

/** A pass that did not run, and why. */
export type NotRun =
  | { ran: false; reason: 'held'; holder: LeaseHolder }
  | { ran: false; reason: 'running-here' }
  | { ran: false; reason: 'already-served'; holder?: LeaseHolder }
  | { ran: false; reason: 'stopping' };

export type RunOutcome = { ran: true; result: PassResult } | NotRun;

interface ActivePass {
  stop: AbortController;
  abort: AbortController;
  done: Promise<unknown>;
}

/** After aborting in-flight items at shutdown, how long to wait for passes to record their end. */
const RECORD_GRACE_MS = 5_000;

/** The key of one reconciler partition's passes in this process: one leased pass per lane at a time. */
export const laneOf = (name: string, partition: number) => `${name}#${partition}`;

export class Engine {
  readonly events: EngineEvents;
  readonly reconcilers: ReadonlyMap<string, Reconciler>;
  readonly host: string;
  readonly pid: number;
  readonly db: Db;
  readonly #options: EngineOptions;
  readonly #control: Db;
  /** Leased passes running in this process, by lane (see laneOf). */
  readonly #active = new Map<string, ActivePass>();
  /** Per reconciler, the items it may have in flight in this process, shared by its partitions' passes. */
  readonly #slots = new Map<string, Slots>();
  /** Dry runs take no lease, but shutdown and Ctrl-C still stop them. */
  readonly #dryRuns = new Set<ActivePass>();
  /** Per reconciler, keys whose reconcile has not settled yet (see PassDeps.busyKeys). */
  readonly #busyKeys = new Map<string, Set<string>>();
  #stopping = false;

  constructor(options: EngineOptions) {
    this.#options = options;
    this.events = options.events ?? new EngineEvents((error, event) => options.log.error({ err: error, event }, `a listener of ${event} threw: ${error.message}`));
    this.reconcilers = new Map(options.reconcilers.map((r) => [r.name, r]));
    this.host = options.host ?? hostname();
    this.pid = options.pid ?? process.pid;
    this.db = options.db;
    this.#control = options.control ?? options.db;
  }

  /** The reconciler called `name`, or a UserError with a "did you mean" hint. */
  get(name: string): Reconciler {
    const reconciler = this.reconcilers.get(name);
    if (reconciler) return reconciler;
    const known = [...this.reconcilers.keys()];
    throw new UserError(
      `unknown reconciler \`${name}\`${didYouMean(name, known) || (known.length ? ` (known: ${known.join(', ')})` : ' (no reconcilers are loaded)')}`,
    );
  }

  /**
   * Runs one pass of `name` unless another pass of it is running anywhere. Scheduled and
   * catch-up passes also skip when another replica already served their tick. Never throws
   * for a broken pass (that is a result with status `error`); throws for an unknown name,
   * and when the database cannot be reached to take the lease.
   */
  async runPass(name: string, request: RunRequest): Promise<RunOutcome> {
    const reconciler = this.get(name);
    const partition = this.partition(reconciler, request.partition);
    if (this.#stopping) return { ran: false, reason: 'stopping' };
    if (request.dryRun) return { ran: true, result: await this.#dryRun(reconciler, request, partition) };
    const lane = laneOf(name, partition.index);
    if (this.#active.has(lane)) {
      if (request.tick) await this.#tickSkipped(reconciler, partition, request.tick, 'running', undefined);
      return { ran: false, reason: 'running-here' };
    }
    const pass = this.#newActivePass();
    this.#active.set(lane, pass.active);
    try {
      return await this.#leasedPass(reconciler, request, partition, pass.active);
    } finally {
      this.#active.delete(lane);
      pass.finished();
    }
  }

  /** The partition a request names, checked against the reconciler's count; a UserError for one it does not have. */
  partition(reconciler: Reconciler, index: number | undefined): Partition {
    const count = reconciler.partitions;
    if (index === undefined) {
      if (count === 1) return { index: 0, count };
      throw new UserError(`${reconciler.name} has ${count} partitions: name one (0 to ${count - 1}), or run them all`);
    }
    if (!Number.isInteger(index) || index < 0 || index >= count) {
      throw new UserError(
        count === 1 ? `${reconciler.name} is not partitioned: there is no partition ${index}` : `${reconciler.name} has partitions 0 to ${count - 1}; there is no partition ${index}`,
      );
    }
    return { index, count };
  }

  #slotsOf(reconciler: Reconciler): Slots {
    let slots = this.#slots.get(reconciler.name);
    if (!slots) this.#slots.set(reconciler.name, (slots = new Slots(reconciler.concurrency)));
    return slots;
  }

  #newActivePass(): { active: ActivePass; finished: () => void } {
    let finished!: () => void;
    const done = new Promise<void>((resolve) => (finished = resolve));
    return { active: { stop: new AbortController(), abort: new AbortController(), done }, finished };
  }

  #busyKeysOf(name: string): Set<string> {
    let keys = this.#busyKeys.get(name);
    if (!keys) this.#busyKeys.set(name, (keys = new Set()));
    return keys;
  }

  async #leasedPass(reconciler: Reconciler, request: RunRequest, partition: Partition, active: ActivePass): Promise<RunOutcome> {
    const { db, log, leaseMs } = this.#options;
    const holder = { id: randomUUID(), host: this.host, pid: this.pid };
    const partial = request.onlyKey !== undefined;
    const ask = () =>
      acquireLease(this.#control, {
        reconciler: reconciler.name, partition, holder, trigger: request.trigger, leaseMs, partial,
        ...(request.tick ? { tick: request.tick } : {}),
        ...(request.expectLastRunId !== undefined ? { expectLastRunId: request.expectLastRunId } : {}),
      });
    let lease = await ask();
    // The holder released between the statement that was refused and the one that asked why (or, for a manual
    // pass, which nothing can have "already served", it looked served then): ask again, once.
    const manual = !request.tick && request.expectLastRunId === undefined;
    if (!lease.acquired && (lease.reason === 'released' || (lease.reason === 'already-served' && manual))) lease = await ask();
    if (!lease.acquired) {
      if (lease.reason === 'held' && request.tick) await this.#tickSkipped(reconciler, partition, request.tick, 'held', lease.holder);
      if (lease.reason === 'held') return { ran: false, reason: 'held', holder: lease.holder };
      log.debug({ reconciler: reconciler.name, tick: request.tick }, 'already served by another process');
      return { ran: false, reason: 'already-served', ...(lease.reason === 'already-served' && lease.holder ? { holder: lease.holder } : {}) };
    }
    const keeper = this.#keepLease(reconciler.name, partition.index, lease.runId, holder.id, active.abort);
    let result: PassResult;
    try {
      this.events.emit('pass:start', { reconciler: reconciler.name, runId: lease.runId, trigger: request.trigger, dryRun: false });
      log.debug({ reconciler: reconciler.name, passId: lease.runId, trigger: request.trigger, ...partitionFields(partition) }, 'pass started');
      result = await executePass(
        reconciler,
        { trigger: request.trigger, dryRun: false, partition, ...(partial ? { onlyKey: request.onlyKey } : {}) },
        {
          db, log, events: this.events, passId: lease.runId, busyKeys: this.#busyKeysOf(reconciler.name), slots: this.#slotsOf(reconciler),
          ...(this.#options.random ? { random: this.#options.random } : {}),
        },
        { stop: active.stop.signal, abort: active.abort.signal, ...(request.handOver ? { handOver: request.handOver } : {}) },
      );
    } finally {
      keeper.stop();
    }
    let unrecorded: string | undefined;
    try {
      const forgotten = await finishAndRelease(this.#control, {
        reconciler: reconciler.name, partition, holderId: holder.id, runId: lease.runId, partial,
        status: result.status, counts: result.counts, complete: result.complete, durationMs: result.durationMs, error: result.error,
        forgetUnseen: result.complete && result.error === null && !partial,
      });
      if (forgotten > 0) log.info({ reconciler: reconciler.name, passId: lease.runId, forgotten }, `forgot ${forgotten} failed item(s) that the scan no longer finds (their work was done elsewhere)`);
    } catch (error) {
      unrecorded = `could not record the end of the pass (${errorSummary(coerceError(error), 200)}); its lease expires by itself within ${formatDuration(leaseMs)}`;
    }
    this.#logResult(result, unrecorded);
    this.events.emit('pass:finish', result);
    return { ran: true, result };
  }

  async #dryRun(reconciler: Reconciler, request: RunRequest, partition: Partition): Promise<PassResult> {
    const { db, log } = this.#options;
    const pass = this.#newActivePass();
    this.#dryRuns.add(pass.active);
    try {
      this.events.emit('pass:start', { reconciler: reconciler.name, runId: null, trigger: request.trigger, dryRun: true });
      const result = await executePass(
        reconciler,
        { trigger: request.trigger, dryRun: true, partition, ...(request.onlyKey !== undefined ? { onlyKey: request.onlyKey } : {}) },
        { db, log, events: this.events, passId: null, busyKeys: this.#busyKeysOf(reconciler.name), slots: this.#slotsOf(reconciler) },
        { stop: pass.active.stop.signal, abort: pass.active.abort.signal },
      );
      this.#logResult(result);
      this.events.emit('pass:finish', result);
      return result;
    } finally {
      this.#dryRuns.delete(pass.active);
      pass.finished();
    }
  }

  /**
   * Renews the lease every third of its length, one renewal at a time, on the control
   * pool. A local watchdog aborts the pass when the lease may have lapsed: `leaseMs` after
   * the *sending* of the last renewal that succeeded (minus a margin), whether or not a
   * renewal is still hanging. Another process may take over from then on.
   */
  #keepLease(name: string, partition: number, runId: number, holderId: string, abort: AbortController): { stop(): void } {
    const { log, leaseMs } = this.#options;
    const margin = Math.min(1_000, leaseMs / 5);
    let stopped = false;
    let renewTimer: NodeJS.Timeout | undefined;
    let watchdog: NodeJS.Timeout | undefined;
    let lastError: Error | undefined;
    let failedRenewals = 0;
    const armWatchdog = (sentAt: number) => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        const why = lastError ? `: ${errorSummary(lastError, 200)}` : '';
        abort.abort(new Error(`lease expired: could not renew it within ${formatDuration(leaseMs)}${why}; another process may take over`));
      }, Math.max(0, sentAt + leaseMs - margin - performance.now()));
    };
    const renew = async () => {
      if (stopped || abort.signal.aborted) return;
      const sentAt = performance.now();
      try {
        if (await renewLease(this.#control, name, partition, holderId, leaseMs)) {
          // A near miss is worth a line; a lease that lapses is told once, by the pass summary (the watchdog's abort).
          if (failedRenewals > 0) {
            log.warn({ reconciler: name, passId: runId, failedRenewals, err: lastError }, `the lease renewal failed ${failedRenewals} time(s) (${errorSummary(lastError!, 200)}) before it went through; the pass went on`);
          }
          failedRenewals = 0;
          lastError = undefined;
          armWatchdog(sentAt);
        } else {
          abort.abort(new Error('lease lost: another process took this reconciler over (this one was paused or cut off for longer than LOCK_TTL)'));
          return;
        }
      } catch (error) {
        lastError = coerceError(error);
        failedRenewals++;
        log.debug({ reconciler: name, passId: runId, err: lastError }, 'could not renew the pass lease; will try again');
      }
      if (!stopped) renewTimer = setTimeout(() => void renew(), Math.max(100, Math.floor(leaseMs / 3)));
    };
    armWatchdog(performance.now());
    renewTimer = setTimeout(() => void renew(), Math.max(100, Math.floor(leaseMs / 3)));
    return {
      stop() {
        stopped = true;
        clearTimeout(renewTimer);
        clearTimeout(watchdog);
      },
    };
  }

  async #tickSkipped(reconciler: Reconciler, partition: Partition, tick: Date, reason: 'running' | 'held', holder: LeaseHolder | undefined): Promise<void> {
    const { log } = this.#options;
    let counted = false;
    try {
      counted = await countSkippedTick(this.#control, reconciler.name, partition.index, tick);
    } catch (error) {
      log.warn({ err: coerceError(error), reconciler: reconciler.name }, 'could not count a skipped tick');
    }
    if (!counted) return; // another replica saw the same tick and counted it
    log.info(
      { reconciler: reconciler.name, ...partitionFields(partition), tick: tick.toISOString(), reason },
      `${passLabel(reconciler.name, partition)}: tick ${tick.toISOString()} skipped: the previous pass is still running${holder ? ` on ${describeHolder(holder)}` : ' in this process'}`,
    );
    this.events.emit('tick:skipped', { reconciler: reconciler.name, tick, reason, holder });
  }

  /** One summary line per pass, at info; a pass that broke off, or whose end went unrecorded, is an error. */
  #logResult(result: PassResult, unrecorded?: string): void {
    const { log } = this.#options;
    const fields = { reconciler: result.reconciler, ...partitionFields(result.partition), passId: result.runId, trigger: result.trigger, status: result.status, ...result.counts, complete: result.complete, durationMs: Math.round(result.durationMs), ...(result.handedOver !== undefined ? { handedOver: result.handedOver } : {}), ...(unrecorded ? { recorded: false } : {}) };
    const message = `${summarize(result)}${unrecorded ? `; ${unrecorded}` : ''}`;
    if (result.status === 'error' || unrecorded) log.error(fields, message);
    else log.info(fields, message);
  }

  /**
   * Stops taking new passes and items, lets in-flight items finish for up to `timeoutMs`,
   * then aborts them through their AbortSignal and gives the passes a few seconds to record
   * their end. Items whose reconcile ignores the signal are not waited for. Safe to call
   * more than once.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.#stopping = true;
    const passes = [...this.#active.values(), ...this.#dryRuns];
    for (const pass of passes) pass.stop.abort(new Error('shutting down'));
    const all = Promise.all(passes.map((p) => p.done)).then(() => true);
    if (await settlesWithin(all, timeoutMs)) return;
    for (const pass of passes) pass.abort.abort(new Error(`shutting down: items still running after ${formatDuration(timeoutMs)} were aborted`));
    if (!(await settlesWithin(all, RECORD_GRACE_MS))) {
      this.#options.log.warn(`some passes did not record their end within ${formatDuration(RECORD_GRACE_MS)} of the abort; their leases will expire by themselves`);
    }
  }
}

