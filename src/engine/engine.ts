/**
 * The engine: the loaded reconcilers, their passes, and the leases that keep two passes of
 * one reconciler from overlapping anywhere in the cluster. Every way to start a pass (the
 * schedule, catch-up at start-up, `reconciler run`) comes through `runPass`.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Db, Partition, Reconciler } from '../reconciler.js';
import { UserError, coerceError, errorSummary } from '../errors.js';
import { formatDuration } from '../duration.js';
import { didYouMean } from '../suggest.js';
import { acquireLease, countSkippedTick, finishAndRelease, renewLease, type LeaseHolder } from '../store/state.js';
import type { Trigger } from '../store/runs.js';
import { EngineEvents } from './events.js';
import { runPass, type PassResult } from './pass.js';

export interface EngineOptions {
  db: Db;
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
}

/** A pass that did not run, and why. */
export type NotRun =
  | { ran: false; reason: 'held'; holder: LeaseHolder }
  | { ran: false; reason: 'running-here' }
  | { ran: false; reason: 'already-served' }
  | { ran: false; reason: 'stopping' };

export type RunOutcome = { ran: true; result: PassResult } | NotRun;

interface ActivePass {
  stop: AbortController;
  abort: AbortController;
  done: Promise<unknown>;
}

const WHOLE: Partition = { index: 0, count: 1 };

/** "web-1 pid 4242 since 12:00:01Z (run 17)" */
export function describeHolder(holder: LeaseHolder): string {
  return `${holder.host} pid ${holder.pid} since ${holder.since.toISOString()}${holder.runId === null ? '' : ` (run ${holder.runId})`}`;
}

export function summarize(result: PassResult): string {
  const c = result.counts;
  const what = result.dryRun ? 'dry run' : `pass ${result.runId}`;
  return (
    `${result.reconciler}: ${what} ${result.status} in ${formatDuration(result.durationMs)}: ` +
    `${c.found} found, ${c.changed} changed, ${c.unchanged} unchanged, ${c.skipped} skipped, ${c.failed} failed, ${c.deferred} deferred, ${c.dead} dead` +
    `${result.complete ? '' : ' (stopped early; the rest waits for the next pass)'}${result.error ? `: ${result.error}` : ''}`
  );
}

export class Engine {
  readonly events: EngineEvents;
  readonly reconcilers: ReadonlyMap<string, Reconciler>;
  readonly host: string;
  readonly pid: number;
  readonly db: Db;
  readonly #options: EngineOptions;
  readonly #active = new Map<string, ActivePass>();
  #stopping = false;

  constructor(options: EngineOptions) {
    this.#options = options;
    this.events = options.events ?? new EngineEvents();
    this.reconcilers = new Map(options.reconcilers.map((r) => [r.name, r]));
    this.host = options.host ?? hostname();
    this.pid = options.pid ?? process.pid;
    this.db = options.db;
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

  isRunning(name: string): boolean {
    return this.#active.has(name);
  }

  /**
   * Runs one pass of `name` unless another pass of it is running anywhere. Scheduled and
   * catch-up passes also skip when another replica already served their tick. Never throws
   * for a broken pass (that is a result with status `error`); throws only for an unknown name.
   */
  async runPass(name: string, request: RunRequest): Promise<RunOutcome> {
    const reconciler = this.get(name);
    if (this.#stopping) return { ran: false, reason: 'stopping' };
    if (request.dryRun) return { ran: true, result: await this.#dryRun(reconciler, request) };
    if (this.#active.has(name)) {
      if (request.tick) await this.#tickSkipped(reconciler, request.tick, 'running', undefined);
      return { ran: false, reason: 'running-here' };
    }
    const stop = new AbortController();
    const abort = new AbortController();
    let release!: () => void;
    const done = new Promise<void>((resolve) => (release = resolve));
    this.#active.set(name, { stop, abort, done });
    try {
      return await this.#leasedPass(reconciler, request, stop, abort);
    } finally {
      this.#active.delete(name);
      release();
    }
  }

  async #leasedPass(reconciler: Reconciler, request: RunRequest, stop: AbortController, abort: AbortController): Promise<RunOutcome> {
    const { db, log, leaseMs } = this.#options;
    const holder = { id: randomUUID(), host: this.host, pid: this.pid };
    const lease = await acquireLease(db, { reconciler: reconciler.name, partition: WHOLE, holder, trigger: request.trigger, leaseMs, ...(request.tick ? { tick: request.tick } : {}) });
    if (!lease.acquired) {
      if (lease.reason === 'held' && request.tick) await this.#tickSkipped(reconciler, request.tick, 'held', lease.holder);
      if (lease.reason === 'already-served') log.debug({ reconciler: reconciler.name, tick: request.tick }, 'tick already served by another process');
      return lease.reason === 'held' ? { ran: false, reason: 'held', holder: lease.holder } : { ran: false, reason: 'already-served' };
    }
    const heartbeat = this.#keepLease(reconciler.name, holder.id, abort);
    this.events.emit('pass:start', { reconciler: reconciler.name, runId: lease.runId, trigger: request.trigger, dryRun: false });
    log.debug({ reconciler: reconciler.name, passId: lease.runId, trigger: request.trigger }, 'pass started');
    let result: PassResult;
    try {
      result = await runPass(
        reconciler,
        { trigger: request.trigger, dryRun: false, partition: WHOLE, ...(request.onlyKey !== undefined ? { onlyKey: request.onlyKey } : {}) },
        { db, log, events: this.events, runId: lease.runId, startedAt: lease.startedAt, ...(this.#options.random ? { random: this.#options.random } : {}) },
        { stop: stop.signal, abort: abort.signal },
      );
    } finally {
      clearInterval(heartbeat);
    }
    try {
      await finishAndRelease(db, {
        reconciler: reconciler.name, partition: WHOLE.index, holderId: holder.id, runId: lease.runId,
        status: result.status, counts: result.counts, complete: result.complete, durationMs: result.durationMs, error: result.error,
      });
    } catch (error) {
      log.error({ err: coerceError(error), reconciler: reconciler.name, passId: lease.runId }, 'could not record the pass; its lease will expire by itself');
    }
    this.#logResult(result);
    this.events.emit('pass:finish', result);
    return { ran: true, result };
  }

  async #dryRun(reconciler: Reconciler, request: RunRequest): Promise<PassResult> {
    const { db, log } = this.#options;
    this.events.emit('pass:start', { reconciler: reconciler.name, runId: null, trigger: request.trigger, dryRun: true });
    const never = new AbortController();
    const result = await runPass(
      reconciler,
      { trigger: request.trigger, dryRun: true, partition: WHOLE, ...(request.onlyKey !== undefined ? { onlyKey: request.onlyKey } : {}) },
      { db, log, events: this.events, runId: null, startedAt: undefined },
      { stop: never.signal, abort: never.signal },
    );
    this.#logResult(result);
    this.events.emit('pass:finish', result);
    return result;
  }

  /** Renews the lease every third of its length; aborts the pass when the lease is lost. */
  #keepLease(name: string, holderId: string, abort: AbortController): NodeJS.Timeout {
    const { db, log, leaseMs } = this.#options;
    let lastRenewed = performance.now();
    const timer = setInterval(() => {
      renewLease(db, name, WHOLE.index, holderId, leaseMs).then(
        (kept) => {
          if (kept) lastRenewed = performance.now();
          else abort.abort(new Error('lease lost: another process took this reconciler over (this one was paused or cut off longer than LOCK_TTL)'));
        },
        (error: unknown) => {
          if (performance.now() - lastRenewed >= leaseMs) {
            abort.abort(new Error(`lease expired: could not renew it for ${formatDuration(leaseMs)} (${errorSummary(coerceError(error), 200)})`));
          } else {
            log.warn({ reconciler: name, err: coerceError(error) }, 'could not renew the pass lease; will try again');
          }
        },
      );
    }, Math.max(100, Math.floor(leaseMs / 3)));
    timer.unref();
    return timer;
  }

  async #tickSkipped(reconciler: Reconciler, tick: Date, reason: 'running' | 'held', holder: LeaseHolder | undefined): Promise<void> {
    const { db, log } = this.#options;
    let counted = false;
    try {
      counted = await countSkippedTick(db, reconciler.name, WHOLE.index, tick);
    } catch (error) {
      log.warn({ err: coerceError(error), reconciler: reconciler.name }, 'could not count a skipped tick');
    }
    if (!counted) return; // another replica saw the same tick and counted it
    log.info(
      { reconciler: reconciler.name, tick: tick.toISOString(), reason },
      `tick ${tick.toISOString()} skipped: the previous pass is still running${holder ? ` on ${describeHolder(holder)}` : ' in this process'}`,
    );
    this.events.emit('tick:skipped', { reconciler: reconciler.name, tick, reason, holder });
  }

  #logResult(result: PassResult): void {
    const { log } = this.#options;
    const fields = { reconciler: result.reconciler, passId: result.runId, trigger: result.trigger, status: result.status, ...result.counts, complete: result.complete, durationMs: Math.round(result.durationMs) };
    // One summary line per pass, at info; a pass that broke off is an error.
    if (result.status === 'error') log.error(fields, summarize(result));
    else log.info(fields, summarize(result));
  }

  /**
   * Stops taking new passes and items, lets in-flight items finish for up to `timeoutMs`,
   * then aborts them through their AbortSignal. Resolves when every pass has recorded its end.
   * Safe to call more than once.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.#stopping = true;
    const passes = [...this.#active.values()];
    for (const pass of passes) pass.stop.abort(new Error('shutting down'));
    const all = Promise.all(passes.map((p) => p.done));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      all.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      for (const pass of passes) pass.abort.abort(new Error(`shutting down: items still running after ${formatDuration(timeoutMs)} were aborted`));
      await all;
    }
  }
}
