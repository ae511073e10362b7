/**
 * Retry passes: failed items fall due after their backoff, which is often much shorter than the
 * schedule (10 s against a minute). Rather than leave them to the next tick, a `retry` pass starts
 * when the first of them is due, if that is before the next tick. It takes the lease like any
 * pass, so it never overlaps another; the tick stays the safety net if this process dies.
 */
import type { PassResult } from '../engine/result.js';
import type { Reconciler } from '../reconciler.js';
import { nextTick } from './cron.js';

/** The soonest a retry pass follows the pass before it, so that a short backoff cannot make passes back to back. */
const MIN_RETRY_GAP_MS = 1_000;
/** setTimeout's limit; a later retry is the tick's to serve. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * A budget (maxItemsPerPass, maxPassDuration) caps the work per scheduled period: no extra pass
 * (retry, hand-over, hand-back) may start in it; the rest is the tick's.
 */
export const budgeted = (reconciler: Reconciler) => reconciler.maxItemsPerPass !== undefined || reconciler.maxPassDurationMs !== undefined;

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

/** When (ms since the epoch) a retry pass should follow `result`; undefined when there is none to run before the next tick. */
export function retryAt(result: PassResult, reconciler: Reconciler): number | undefined {
  if (result.nextRetryAt === null || result.status === 'aborted' || result.status === 'error') return undefined;
  if (budgeted(reconciler)) return undefined;
  const gap = retryGap(result);
  const at = Math.max(result.nextRetryAt.getTime(), Date.now() + gap);
  if (at - Date.now() > MAX_TIMER_MS || at + gap >= nextTick(reconciler.schedule, reconciler.timezone, new Date()).getTime()) return undefined;
  return at;
}
