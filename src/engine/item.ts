/**
 * One item of a pass: reconcile it under its timeout and the pass's abort, then record what
 * came of it (forget its failure memory on success, record a failure otherwise), log it and
 * emit its event. The pass folds the report into its counts.
 */
import type { Logger } from 'pino';
import type { Db, Outcome, Partition, ReconcileContext, Reconciler, ReconcileResult } from '../reconciler.js';
import { coerceError, errorSummary, isDatabaseUnavailable, isTerminalError } from '../errors.js';
import { formatDuration } from '../duration.js';
import { forgetFailures, recordFailure, type FailureMemory } from '../store/failures.js';
import { FlightTimeoutError, type Flight, type Flights } from './flights.js';
import { retryDelay } from './backoff.js';
import type { FailureDigest } from './failure-digest.js';
import type { EngineEvents } from './events.js';
import { settleSpan, type EngineTracer } from '../tracing/index.js';

const OUTCOMES: readonly Outcome[] = ['changed', 'unchanged', 'skipped'];

/** What one pass gives each of its items. */
export interface ItemScope {
  reconciler: Reconciler;
  db: Db;
  /** The pass's log. */
  log: Logger;
  events: EngineEvents;
  dryRun: boolean;
  partition: Partition;
  /** The pass's abort (shutdown timeout, lease lost): the pass aborts every flight with it. */
  abort: AbortSignal;
  /** The pass's work in flight, each under the reconciler's timeout (see flights.ts). */
  flights: Flights;
  /** See PassDeps.busyKeys: the key stays here until its reconcile settles, even after a timeout. */
  busyKeys: Set<string>;
  /** The pass's failures by kind: the first of a kind is a warning, the rest are summed up at its end. */
  failures: FailureDigest;
  /**
   * The tracer, while tracing is on and the pass's trace is sampled: its items and records get
   * spans. Undefined otherwise: an unsampled pass's items would only make spans that record
   * nothing (with any standard sampler, an item is sampled as its pass is), so they make none.
   */
  tracer?: EngineTracer;
  random?: () => number;
}

/** What came of one item. */
export interface ItemReport {
  /**
   * The count it adds to: its outcome; `failed`; `dead` when this failure used up its attempts
   * (or was terminal) and was recorded so; or `skipped` when no attempt was spent (aborted in
   * flight, database gone).
   */
  counted: Outcome | 'failed' | 'dead';
  /** Aborted in flight by shutdown or a lost lease: not the item's fault; the pass names it once, at its end. */
  aborted?: true;
  /** The database went away while its outcome was being recorded: the pass takes no more items. */
  unavailable?: Error;
  /** When it is due again: a recorded failure that is not dead. */
  retryAt?: Date;
  /** What failed (`failed`, `dead`): for its span. */
  failure?: Error;
}

/** The pass's time limit error, as an item's failure says it. */
export function timedOutAfter(reconciler: Reconciler): () => Error {
  const message = `timed out after ${formatDuration(reconciler.timeoutMs)}`;
  return () => new FlightTimeoutError(message);
}

/** `reconcile`'s (or one batch outcome's) result as an outcome and note; a TypeError naming anything else. */
export function normalizeResult(result: ReconcileResult, what = 'reconcile() returned'): { outcome: Outcome; note: string | undefined } {
  const outcome = typeof result === 'string' ? result : (result as { outcome?: unknown } | null)?.outcome;
  if (typeof outcome === 'string' && (OUTCOMES as readonly string[]).includes(outcome)) {
    const note = typeof result === 'object' && result !== null && typeof result.note === 'string' ? result.note : undefined;
    return { outcome: outcome as Outcome, note };
  }
  throw new TypeError(`${what} ${JSON.stringify(result) ?? String(result)}; expected 'changed', 'unchanged', 'skipped' or { outcome, note }`);
}

/**
 * The context of one item's reconcile. Its logger (a pino child) and its AbortSignal are made
 * when the reconciler first asks for them: the engine's own cost per item stays a few objects.
 */
class ItemContext implements ReconcileContext {
  #log: Logger | undefined;

  constructor(
    private readonly scope: ItemScope,
    private readonly flight: Flight,
    readonly key: string,
    readonly attempt: number,
  ) {}

  get db(): Db {
    return this.scope.db;
  }
  get dryRun(): boolean {
    return this.scope.dryRun;
  }
  get idempotencyKey(): string {
    return `${this.scope.reconciler.name}:${this.key}`;
  }
  get signal(): AbortSignal {
    return this.flight.signal;
  }
  get log(): Logger {
    return (this.#log ??= this.scope.log.child({ key: this.key }));
  }
}

/** Starts `work` and keeps `keys` busy until it settles, however long after its flight ended; a throw before it returns a promise is a rejection. */
export function busyWhile<T>(busyKeys: Set<string>, keys: readonly string[], work: () => Promise<T>): Promise<T> {
  for (const key of keys) busyKeys.add(key);
  const free = () => {
    for (const key of keys) busyKeys.delete(key);
  };
  let running: Promise<T>;
  try {
    running = Promise.resolve(work()); // the same promise when it is one; a value when the function was not async
  } catch (error) {
    running = Promise.reject(error);
  }
  return running.then(
    (value) => {
      free();
      return value;
    },
    (error: unknown) => {
      free();
      throw error;
    },
  );
}

/** Reconciles one item and records its outcome: under its own span while tracing is on. */
export function reconcileItem(scope: ItemScope, item: unknown, key: string, memory: FailureMemory | undefined): Promise<ItemReport> {
  const { tracer } = scope;
  if (!tracer) return reconcileUntraced(scope, item, key, memory);
  return tracedItem(tracer, scope, key, (memory?.attempts ?? 0) + 1, () => reconcileUntraced(scope, item, key, memory));
}

/** `report` under the item's own span, which ends with what came of the item: its outcome, and its error when it failed. */
export function tracedItem(tracer: EngineTracer, scope: ItemScope, key: string, attempt: number, report: () => Promise<ItemReport>): Promise<ItemReport> {
  const span = tracer.item(`item ${scope.reconciler.name}`, { 'reconciler.name': scope.reconciler.name, 'reconciler.item.key': key, 'reconciler.item.attempt': attempt });
  return settleSpan(span, tracer.within(span, report), (done) => {
    span.set({ 'reconciler.item.outcome': done.aborted ? 'aborted' : done.counted });
    if (done.failure) span.fail(done.failure);
  });
}

/** The engine's own database work, as a span while tracing is on. */
export function recording<T>(tracer: EngineTracer | undefined, operation: string, target: string, work: () => Promise<T>): Promise<T> {
  return tracer ? tracer.database(operation, target, work) : work();
}

async function reconcileUntraced(scope: ItemScope, item: unknown, key: string, memory: FailureMemory | undefined): Promise<ItemReport> {
  const { reconciler, abort, flights } = scope;
  const attempt = (memory?.attempts ?? 0) + 1;
  const flight = flights.start();
  const started = performance.now();
  let failure: Error;
  try {
    const ctx = new ItemContext(scope, flight, key, attempt);
    const result = await flight.race(busyWhile(scope.busyKeys, [key], () => reconciler.reconcile!(item, ctx)));
    const { outcome, note } = normalizeResult(result);
    return await done(scope, key, memory, outcome, note, performance.now() - started, attempt);
  } catch (thrown) {
    failure = coerceError(thrown);
  } finally {
    flights.end(flight);
  }
  if (abort.aborted && !(failure instanceof FlightTimeoutError)) return abortedInFlight(scope, key, attempt);
  return failed(scope, key, attempt, failure);
}

/** An item cut off by the pass's abort: no attempt spent; the pass names it once, at its end. */
export function abortedInFlight(scope: ItemScope, key: string, attempt: number): ItemReport {
  if (scope.log.isLevelEnabled('debug')) scope.log.debug({ key, attempt }, `aborted in flight: ${errorSummary(coerceError(scope.abort.reason), 200)}`);
  return { counted: 'skipped', aborted: true };
}

/**
 * An item whose work is done (`changed`, `unchanged`) or skipped: its failure memory ends (a
 * skip keeps it: the work is still missing), it is logged at debug and emitted as `item:done`.
 * With `forgotten`, the caller forgot its failure memory already (a batch forgets at once).
 */
export async function done(scope: ItemScope, key: string, memory: FailureMemory | undefined, outcome: Outcome, note: string | undefined, durationMs: number, attempt: number, forgotten?: Promise<Error | undefined>): Promise<ItemReport> {
  const { reconciler, dryRun, log } = scope;
  let unavailable: Error | undefined;
  if (memory && outcome !== 'skipped' && !dryRun) unavailable = await (forgotten ?? forget(scope, [key]));
  if (log.isLevelEnabled('debug')) log.debug({ key, outcome, note, durationMs: Math.round(durationMs), attempt }, note ? `${outcome}: ${note}` : outcome);
  if (scope.events.listening('item:done')) scope.events.emit('item:done', { reconciler: reconciler.name, key, outcome, note, durationMs, dryRun });
  return { counted: outcome, ...(unavailable ? { unavailable } : {}) };
}

/** Forgets the failure memory of items now done; the database's error when it is gone (anything else is logged: the next pass clears them). */
export async function forget(scope: ItemScope, keys: readonly string[]): Promise<Error | undefined> {
  try {
    await recording(scope.tracer, 'record', 'reconciler.failures', () => forgetFailures(scope.db, scope.reconciler.name, keys));
    return undefined;
  } catch (forgetError) {
    if (isDatabaseUnavailable(forgetError)) return coerceError(forgetError);
    scope.log.warn({ err: coerceError(forgetError), keys: keys.slice(0, 20) }, 'done, but could not clear its failure record; the next pass will clear it');
    return undefined;
  }
}

/** Records a failed attempt in failure memory (not in a dry run), logs it and emits `item:failed`. */
export async function failed(scope: ItemScope, key: string, attempt: number, failure: Error): Promise<ItemReport> {
  const { reconciler, dryRun } = scope;
  const log = scope.log.child({ key });
  const terminal = isTerminalError(failure);
  const { delayMs, askedMs } = retryDelay(failure, attempt, reconciler.retry, scope.random);
  const message = errorSummary(failure);
  let recorded: { attempts: number; dead: boolean } | undefined;
  if (!dryRun) {
    try {
      recorded = await recording(scope.tracer, 'record', 'reconciler.failures', () =>
        recordFailure(scope.db, { reconciler: reconciler.name, partition: scope.partition.index, key, error: message, delayMs, terminal, maxAttempts: reconciler.retry.maxAttempts }),
      );
    } catch (recordError) {
      if (isDatabaseUnavailable(recordError)) {
        log.debug({ err: failure }, 'failed while the database is unavailable; not recorded');
        return { counted: 'skipped', unavailable: coerceError(recordError) }; // no attempt spent: the next pass finds it again
      }
      log.error({ err: coerceError(recordError) }, 'could not record the failure; the item will be found again by the next pass');
    }
  }
  // Nothing recorded (a dry run, or the record failed): what the record would have said.
  const { attempts, dead } = recorded ?? { attempts: attempt, dead: terminal || attempt >= reconciler.retry.maxAttempts };
  const retryAt = !dead && !dryRun ? new Date(Date.now() + delayMs) : undefined;
  // The first failure of a kind is a warning; the same again in this pass is summed up at its end.
  const level = dead ? 'error' : scope.failures.note(key, message) ? 'warn' : 'debug';
  // What a person does next depends on the error (a retry cannot fix a decline): the item's page, or `failures <name> <key>`, lists the choices.
  const waits = `waits for a person: \`reconciler failures ${reconciler.name} ${key}\` shows the error and the actions (retry, clear, manual)`;
  const next = dead
    ? terminal
      ? `dead (TerminalError): ${waits}`
      : `dead after ${attempts} attempt${attempts === 1 ? '' : 's'}: ${waits}`
    : `retry in ${formatDuration(delayMs)}${askedMs === undefined ? '' : askedMs > delayMs ? ` (its error asked for ${formatDuration(askedMs)}; retry.backoff.max caps the wait)` : ' (as its error asked)'}`;
  log[level]({ attempt: attempts, dead, error: message }, `failed: ${errorSummary(failure, 300)}; ${dryRun ? 'dry run, not recorded' : next}`);
  scope.events.emit('item:failed', { reconciler: reconciler.name, key, error: failure, attempt: attempts, dead, dryRun });
  // Died now (recorded dead): counted as dead, as every later pass counts it, and as a failure of this pass.
  return { counted: dead && recorded ? 'dead' : 'failed', failure, ...(retryAt ? { retryAt } : {}) };
}
