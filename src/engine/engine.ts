/**
 * The engine: the loaded reconcilers, their passes, and the leases that keep two passes of
 * one reconciler partition from overlapping anywhere in the cluster. Every way to start a pass
 * (the schedule, catch-up at start-up, `reconciler run`) comes through `requestPass`, which
 * runs it (executePass, pass.ts) unless it must not run now; dry runs take no lease.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Db, Partition, Reconciler } from '../reconciler.js';
import { UserError, coerceError, errorSummary } from '../errors.js';
import { formatDuration } from '../duration.js';
import { didYouMean } from '../suggest.js';
import { settlesWithin } from '../timeout.js';
import { countSkippedTick } from '../store/state.js';
import { acquireLease, finishAndRelease, type AcquireResult, type LeaseHolder } from '../store/lease.js';
import { EngineEvents } from './events.js';
import { keepLease } from './lease-keeper.js';
import { executePass, type PassDeps, type PassOptions, type PassSignals } from './pass.js';
import { describeHolder, partitionFields, passLabel, summarize, type PassResult, type Trigger } from './result.js';
import { Slots } from './slots.js';
import { partitionNamed } from '../store/partition.js';
import { engineTracer } from '../tracing/index.js';
import { recording } from './item.js';
import { tracedPass } from './pass-span.js';

export interface EngineOptions {
  db: Db;
  /** The lease pool: where leases are taken and renewed, a separate small pool, so lease traffic never queues behind items. Defaults to `db`. */
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

/** What came of a request for a pass: it ran (with its result), or why it did not. */
export type PassAttempt = { ran: true; result: PassResult } | NotRun;

/** A pass running in this process, as shutdown reaches it. */
interface ActivePass {
  stop: AbortController;
  abort: AbortController;
  done: Promise<unknown>;
}

/** After aborting in-flight items at shutdown, how long to wait for passes to record their end. */
const RECORD_GRACE_MS = 5_000;

/** The key of one reconciler partition's passes in this process: one leased pass per lane at a time. */
export const laneOf = (name: string, partition: number) => `${name}#${partition}`;

/** Gets the value for `key`, making it first if there is none. */
function getOrMake<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) map.set(key, (value = make()));
  return value;
}

export class Engine {
  readonly events: EngineEvents;
  readonly reconcilers: ReadonlyMap<string, Reconciler>;
  readonly host: string;
  readonly pid: number;
  readonly db: Db;
  readonly #options: EngineOptions;
  /** Where leases are taken and renewed (EngineOptions.control). */
  readonly #leasePool: Db;
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
    this.#leasePool = options.control ?? options.db;
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
  async requestPass(name: string, request: RunRequest): Promise<PassAttempt> {
    const reconciler = this.get(name);
    const partition = this.partition(reconciler, request.partition);
    if (this.#stopping) return { ran: false, reason: 'stopping' };
    if (request.dryRun) return tracedPass(reconciler, request, partition, async () => ({ ran: true, result: await this.#dryRun(reconciler, request, partition) }));
    const lane = laneOf(name, partition.index);
    if (this.#active.has(lane)) {
      if (request.tick) await this.#tickSkipped(reconciler, partition, request.tick, 'running', undefined);
      return { ran: false, reason: 'running-here' };
    }
    const pass = newActivePass();
    this.#active.set(lane, pass.active);
    try {
      return await tracedPass(reconciler, request, partition, () => this.#leasedPass(reconciler, request, partition, pass.active));
    } finally {
      this.#active.delete(lane);
      pass.finished();
    }
  }

  /** The partition a request names, checked against the reconciler's count; a UserError for one it does not have. */
  partition(reconciler: Reconciler, index: number | undefined): Partition {
    return partitionNamed(reconciler.name, reconciler.partitions, index);
  }

  /** What a pass of `reconciler` shares with the engine: the pools, the log, its busy keys and slots. */
  #passDeps(reconciler: Reconciler, passId: number | null): PassDeps {
    const { db, log, random } = this.#options;
    return {
      db, log, events: this.events, passId,
      busyKeys: getOrMake(this.#busyKeys, reconciler.name, () => new Set<string>()),
      slots: getOrMake(this.#slots, reconciler.name, () => new Slots(reconciler.concurrency)),
      ...(random ? { random } : {}),
    };
  }

  /** Takes the lease for the pass a request asks for, or learns why not. */
  async #takeLease(reconciler: Reconciler, request: RunRequest, partition: Partition, holder: { id: string; host: string; pid: number }): Promise<AcquireResult> {
    const ask = () =>
      recording(engineTracer(), 'lease', 'reconciler.leases', () => acquireLease(this.#leasePool, {
        reconciler: reconciler.name, partition, holder, trigger: request.trigger, leaseMs: this.#options.leaseMs, partial: request.onlyKey !== undefined,
        ...(request.tick ? { tick: request.tick } : {}),
        ...(request.expectLastRunId !== undefined ? { expectLastRunId: request.expectLastRunId } : {}),
      }));
    const lease = await ask();
    // The holder released between the statement that was refused and the one that asked why (or, for a manual
    // pass, which nothing can have "already served", it looked served then): ask again, once.
    const manual = !request.tick && request.expectLastRunId === undefined;
    if (!lease.acquired && (lease.reason === 'released' || (lease.reason === 'already-served' && manual))) return ask();
    return lease;
  }

  async #leasedPass(reconciler: Reconciler, request: RunRequest, partition: Partition, active: ActivePass): Promise<PassAttempt> {
    const { log, leaseMs } = this.#options;
    const holder = { id: randomUUID(), host: this.host, pid: this.pid };
    const partial = request.onlyKey !== undefined;
    const lease = await this.#takeLease(reconciler, request, partition, holder);
    if (!lease.acquired) {
      if (lease.reason === 'held' && request.tick) await this.#tickSkipped(reconciler, partition, request.tick, 'held', lease.holder);
      if (lease.reason === 'held') return { ran: false, reason: 'held', holder: lease.holder };
      log.debug({ event: 'pass:already-served', reconciler: reconciler.name, tick: request.tick }, 'already served by another process');
      return { ran: false, reason: 'already-served', ...(lease.reason === 'already-served' && lease.holder ? { holder: lease.holder } : {}) };
    }
    const passId = lease.runId;
    const keeper = keepLease({ leasePool: this.#leasePool, log, leaseMs, reconciler: reconciler.name, partition: partition.index, passId, holderId: holder.id, abort: active.abort });
    let result: PassResult;
    try {
      this.events.emit('pass:start', { reconciler: reconciler.name, passId, trigger: request.trigger, dryRun: false });
      log.debug({ event: 'pass:start', reconciler: reconciler.name, passId, trigger: request.trigger, ...partitionFields(partition) }, 'pass started');
      const signals: PassSignals = { stop: active.stop.signal, abort: active.abort.signal, ...(request.handOver ? { handOver: request.handOver } : {}) };
      result = await executePass(reconciler, passOptions(request, partition, false), this.#passDeps(reconciler, passId), signals);
    } finally {
      keeper.stop();
    }
    let unrecorded: string | undefined;
    try {
      const forgotten = await recording(engineTracer(), 'record', 'reconciler.runs', () =>
        finishAndRelease(this.#leasePool, {
          reconciler: reconciler.name, partition, holderId: holder.id, runId: passId, partial,
          status: result.status, counts: result.counts, complete: result.complete, durationMs: result.durationMs, error: result.error, oldestItemAt: result.oldestItemAt,
          forgetUnseen: result.complete && result.error === null && !partial,
        }),
      );
      if (forgotten > 0) log.info({ reconciler: reconciler.name, passId, forgotten }, `forgot ${forgotten} failed item(s) that the scan no longer finds (their work was done elsewhere)`);
    } catch (error) {
      unrecorded = `could not record the end of the pass (${errorSummary(coerceError(error), 200)}); its lease expires by itself within ${formatDuration(leaseMs)}`;
    }
    this.#logResult(result, unrecorded);
    this.events.emit('pass:finish', result);
    return { ran: true, result };
  }

  async #dryRun(reconciler: Reconciler, request: RunRequest, partition: Partition): Promise<PassResult> {
    const pass = newActivePass();
    this.#dryRuns.add(pass.active);
    try {
      this.events.emit('pass:start', { reconciler: reconciler.name, passId: null, trigger: request.trigger, dryRun: true });
      const signals: PassSignals = { stop: pass.active.stop.signal, abort: pass.active.abort.signal };
      const result = await executePass(reconciler, passOptions(request, partition, true), this.#passDeps(reconciler, null), signals);
      this.#logResult(result);
      this.events.emit('pass:finish', result);
      return result;
    } finally {
      this.#dryRuns.delete(pass.active);
      pass.finished();
    }
  }

  async #tickSkipped(reconciler: Reconciler, partition: Partition, tick: Date, reason: 'running' | 'held', holder: LeaseHolder | undefined): Promise<void> {
    const { log } = this.#options;
    let counted = false;
    try {
      counted = await countSkippedTick(this.#leasePool, reconciler.name, partition.index, tick);
    } catch (error) {
      log.warn({ err: coerceError(error), reconciler: reconciler.name }, 'could not count a skipped tick');
    }
    if (!counted) return; // another replica saw the same tick and counted it
    log.info(
      { event: 'tick:skipped', reconciler: reconciler.name, ...partitionFields(partition), tick: tick.toISOString(), reason },
      `${passLabel(reconciler.name, partition)}: tick ${tick.toISOString()} skipped: the previous pass is still running${holder ? ` on ${describeHolder(holder)}` : ' in this process'}`,
    );
    this.events.emit('tick:skipped', { reconciler: reconciler.name, tick, reason, holder });
  }

  /** One summary line per pass, at info; a pass that broke off, or whose end went unrecorded, is an error. */
  #logResult(result: PassResult, unrecorded?: string): void {
    const { log } = this.#options;
    const fields = { event: 'pass:finish', reconciler: result.reconciler, ...partitionFields(result.partition), passId: result.runId, trigger: result.trigger, status: result.status, ...result.counts, complete: result.complete, durationMs: Math.round(result.durationMs), ...(result.handedOver !== undefined ? { handedOver: result.handedOver } : {}), ...(unrecorded ? { recorded: false } : {}) };
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

function newActivePass(): { active: ActivePass; finished: () => void } {
  let finished!: () => void;
  const done = new Promise<void>((resolve) => (finished = resolve));
  return { active: { stop: new AbortController(), abort: new AbortController(), done }, finished };
}

function passOptions(request: RunRequest, partition: Partition, dryRun: boolean): PassOptions {
  return { trigger: request.trigger, dryRun, partition, ...(request.onlyKey !== undefined ? { onlyKey: request.onlyKey } : {}) };
}
