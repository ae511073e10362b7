/**
 * Keeps a pass's lease while the pass runs: renews it every third of its length, one renewal
 * at a time, on the lease pool. A local watchdog aborts the pass when the lease may have
 * lapsed: `leaseMs` after the *sending* of the last renewal that succeeded (minus a margin),
 * whether or not a renewal is still hanging. Another process may take over from then on.
 */
import type { Logger } from 'pino';
import type { Db } from '../reconciler.js';
import { coerceError, errorSummary } from '../errors.js';
import { formatDuration } from '../duration.js';
import { renewLease } from '../store/lease.js';

export interface KeptLease {
  /** The lease pool: renewals never queue behind items. */
  leasePool: Db;
  log: Logger;
  leaseMs: number;
  reconciler: string;
  partition: number;
  passId: number;
  holderId: string;
  /** Aborted (with the reason) when the lease is lost or may have lapsed. */
  abort: AbortController;
}

/** Starts keeping the lease; `stop()` when the pass is over. */
export function keepLease(lease: KeptLease): { stop(): void } {
  const { log, leaseMs, abort, reconciler, passId } = lease;
  const margin = Math.min(1_000, leaseMs / 5);
  const every = Math.max(100, Math.floor(leaseMs / 3));
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
      if (await renewLease(lease.leasePool, reconciler, lease.partition, lease.holderId, leaseMs)) {
        // A near miss is worth a line; a lease that lapses is told once, by the pass summary (the watchdog's abort).
        if (failedRenewals > 0) {
          log.warn({ reconciler, passId, failedRenewals, err: lastError }, `the lease renewal failed ${failedRenewals} time(s) (${errorSummary(lastError!, 200)}) before it went through; the pass went on`);
        }
        failedRenewals = 0;
        lastError = undefined;
        armWatchdog(sentAt);
      } else {
        abort.abort(new Error('lease lost: another process took this reconciler over (this one was paused or cut off for longer than LEASE_TTL)'));
        return;
      }
    } catch (error) {
      lastError = coerceError(error);
      failedRenewals++;
      log.debug({ reconciler, passId, err: lastError }, 'could not renew the pass lease; will try again');
    }
    if (!stopped) renewTimer = setTimeout(() => void renew(), every);
  };
  armWatchdog(performance.now());
  renewTimer = setTimeout(() => void renew(), every);
  return {
    stop() {
      stopped = true;
      clearTimeout(renewTimer);
      clearTimeout(watchdog);
    },
  };
}
