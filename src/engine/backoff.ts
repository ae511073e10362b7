import type { Reconciler } from '../reconciler.js';

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
