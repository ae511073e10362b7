import type { Reconciler, RetryAfter } from '../reconciler.js';
import { parseDuration } from '../duration.js';

/**
 * Delay before the next attempt after `attempt` failed: exponential from `initialDelayMs`,
 * capped at `maxDelayMs`, with "equal jitter" (between half and all of it) so that items
 * that failed together do not all come back together.
 */
export function backoffDelay(attempt: number, policy: Reconciler['retry'], random: () => number = Math.random): number {
  const exponential = policy.initialDelayMs * 2 ** Math.max(0, attempt - 1);
  const capped = Math.min(policy.maxDelayMs, exponential);
  return capped / 2 + (capped / 2) * random();
}

/**
 * The wait a failed attempt's error asks for, in milliseconds from `now`: its `retryAfter`
 * (a {@link RetryAfter}), or that of the first error of its `cause` chain that has one, so
 * that an error wrapping a client's error keeps the client's hint. Undefined when none has a
 * valid one (a malformed hint is ignored, not trusted). A time in the past asks for 0.
 */
function requestedDelay(error: unknown, now = Date.now()): number | undefined {
  for (let e: unknown = error, depth = 0; typeof e === 'object' && e !== null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const hint = (e as { retryAfter?: unknown }).retryAfter;
    if (hint === undefined || hint === null) continue;
    if (hint instanceof Date) return Number.isNaN(hint.getTime()) ? undefined : Math.max(0, hint.getTime() - now);
    try {
      return parseDuration(hint);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/**
 * Delay before the next attempt after `attempt` failed with `error`: what the error asks for
 * (see {@link requestedDelay}) in place of the backoff, capped at `maxDelayMs`, so that
 * `retry.backoff.max` stays the longest an item ever waits; else the backoff. `askedMs` is the
 * wait the error asked for, when it asked.
 */
export function retryDelay(error: unknown, attempt: number, policy: Reconciler['retry'], random?: () => number): { delayMs: number; askedMs?: number } {
  const askedMs = requestedDelay(error);
  if (askedMs === undefined) return { delayMs: backoffDelay(attempt, policy, random) };
  return { delayMs: Math.min(askedMs, policy.maxDelayMs), askedMs };
}
