/**
 * One item of a pass: reconcile it under its timeout and the pass's abort, then record what
 * came of it (forget its failure memory on success, record a failure otherwise), log it and
 * emit its event. The pass folds the report into its counts.
 */
import type { Logger } from 'pino';
import type { Db, Outcome, Partition, Reconciler, ReconcileResult } from '../reconciler.js';
import { coerceError, errorSummary, isDatabaseUnavailable, isTerminalError } from '../errors.js';
import { formatDuration } from '../duration.js';
import { abortable } from '../timeout.js';
import { forgetFailure, recordFailure, type FailureMemory } from '../store/failures.js';
import { retryDelay } from './backoff.js';
import type { FailureDigest } from './failure-digest.js';
import type { EngineEvents } from './events.js';

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
  /** The pass's abort: aborts the item too (shutdown timeout, lease lost). */
  abort: AbortSignal;
  /** See PassDeps.busyKeys: the key stays here until its reconcile settles, even after a timeout. */
  busyKeys: Set<string>;
  /** The pass's failures by kind: the first of a kind is a warning, the rest are summed up at its end. */
  failures: FailureDigest;
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
}

class ItemTimeoutError extends Error {
  override name = 'TimeoutError';
}

function normalizeResult(result: ReconcileResult): { outcome: Outcome; note: string | undefined } {
  const outcome = typeof result === 'string' ? result : (result as { outcome?: unknown } | null)?.outcome;
  if (typeof outcome === 'string' && (OUTCOMES as readonly string[]).includes(outcome)) {
    const note = typeof result === 'object' && result !== null && typeof result.note === 'string' ? result.note : undefined;
    return { outcome: outcome as Outcome, note };
  }
  throw new TypeError(`reconcile() returned ${JSON.stringify(result) ?? String(result)}; expected 'changed', 'unchanged', 'skipped' or { outcome, note }`);
}

/** Reconciles one item and records its outcome. */
export async function reconcileItem(scope: ItemScope, item: unknown, key: string, memory: FailureMemory | undefined): Promise<ItemReport> {
  const { reconciler, db, dryRun, abort, busyKeys } = scope;
  const attempt = (memory?.attempts ?? 0) + 1;
  const controller = new AbortController();
  const abortItem = () => controller.abort(abort.reason);
  abort.addEventListener('abort', abortItem, { once: true });
  const timer = setTimeout(() => controller.abort(new ItemTimeoutError(`timed out after ${formatDuration(reconciler.timeoutMs)}`)), reconciler.timeoutMs);
  const log = scope.log.child({ key });
  const started = performance.now();
  try {
    busyKeys.add(key);
    const work = Promise.resolve().then(() =>
      reconciler.reconcile(item, { db, log, signal: controller.signal, attempt, dryRun, idempotencyKey: `${reconciler.name}:${key}`, key }),
    );
    void work.then(
      () => busyKeys.delete(key),
      () => busyKeys.delete(key),
    );
    const { outcome, note } = normalizeResult(await abortable(work, controller.signal));
    let unavailable: Error | undefined;
    // Done ('changed' or 'unchanged') ends the item's failure memory; a skip is not done: the work is still missing.
    if (memory && outcome !== 'skipped' && !dryRun) {
      try {
        await forgetFailure(db, reconciler.name, key);
      } catch (forgetError) {
        if (isDatabaseUnavailable(forgetError)) unavailable = coerceError(forgetError);
        else log.warn({ err: coerceError(forgetError) }, 'done, but could not clear its failure record; the next pass will clear it');
      }
    }
    const durationMs = performance.now() - started;
    log.debug({ outcome, note, durationMs: Math.round(durationMs), attempt }, note ? `${outcome}: ${note}` : outcome);
    scope.events.emit('item:done', { reconciler: reconciler.name, key, outcome, note, durationMs, dryRun });
    return { counted: outcome, ...(unavailable ? { unavailable } : {}) };
  } catch (thrown) {
    const failure = coerceError(thrown);
    if (abort.aborted && !(failure instanceof ItemTimeoutError)) {
      log.debug({ attempt }, `aborted in flight: ${errorSummary(coerceError(abort.reason), 200)}`);
      return { counted: 'skipped', aborted: true };
    }
    return await failed(scope, key, attempt, failure, log);
  } finally {
    clearTimeout(timer);
    abort.removeEventListener('abort', abortItem);
  }
}

/** Records a failed attempt in failure memory (not in a dry run), logs it and emits `item:failed`. */
async function failed(scope: ItemScope, key: string, attempt: number, failure: Error, log: Logger): Promise<ItemReport> {
  const { reconciler, dryRun } = scope;
  const terminal = isTerminalError(failure);
  const { delayMs, askedMs } = retryDelay(failure, attempt, reconciler.retry, scope.random);
  const message = errorSummary(failure);
  let recorded: { attempts: number; dead: boolean } | undefined;
  if (!dryRun) {
    try {
      recorded = await recordFailure(scope.db, { reconciler: reconciler.name, partition: scope.partition.index, key, error: message, delayMs, terminal, maxAttempts: reconciler.retry.maxAttempts });
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
  return { counted: dead && recorded ? 'dead' : 'failed', ...(retryAt ? { retryAt } : {}) };
}
