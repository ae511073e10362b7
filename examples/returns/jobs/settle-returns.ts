/**
 * settle-returns: charges or refunds customers for their returned Fixes.
 *
 * State it repairs: returns whose money work is missing (`settled_at IS NULL`), found in
 * keyset pages through the partial index `returns_unsettled_by_partition`, so a pass costs
 * O(unsettled returns), not O(all returns).
 * Partitions: 4, so up to 4 replicas settle returns side by side, each on its own quarter
 * (a return's partition is a hash of its key). The index is on that same expression with
 * the same count: to change the count, read "Changing the partition count" in docs/operations.md.
 * When it runs: within about a second of a return being recorded (a trigger notifies the
 * `returns` channel, see `notifyTrigger`), and every minute whatever happens.
 * Why doing it twice is harmless: the service writes a payment intent with a key derived
 * from the return before it calls the provider, and completes that same intent on every
 * later attempt; the provider applies one effect per key. See ../src/service.ts.
 *
 * Manual actions: `settled-by-hand` records a return whose money a person settled outside the
 * provider (a declined refund paid by phone), with no provider call; see ../src/by-hand.ts.
 * `adopt-effect` records a charge or refund a person found at the provider (--note names its
 * id), for an outcome the provider's lookups could not resolve; see ../src/adopt.ts.
 *
 * Importing this file needs no configuration: the provider is configured (PAYMENT_PROVIDER_URL,
 * PAYMENT_PROVIDER_KEY) when an item first needs it.
 */
import { defineReconciler } from 'reconciler';
import { paymentProviderFromEnv } from '../src/provider.js';
import { settledByHand } from '../src/by-hand.js';
import { adoptEffect } from '../src/adopt.js';
import { findReturnsToSettle, settleReturn, type ReturnToSettle } from '../src/service.js';

export default defineReconciler<ReturnToSettle>({
  schedule: '* * * * *', // the safety net: a new return wakes a pass at once (wakeOn)
  wakeOn: ['returns'], // notified by the trigger of the example's migration 0001_returns_notify
  description: 'charges or refunds customers for returned Fixes (index: returns_unsettled_by_partition; wakes on: returns)',
  partitions: 4,
  concurrency: 10,
  timeout: '30s',
  retry: { maxAttempts: 12, backoff: { initial: '10s', max: '30m' } },
  scan: ({ db, after, limit, partition }) => findReturnsToSettle(db, after?.id ?? 0, limit, partition),
  key: (ret) => `return:${ret.id}`,
  since: (ret) => ret.receivedAt,
  reconcile: (ret, ctx) => settleReturn(ret.id, ctx, paymentProviderFromEnv),
  actions: { 'settled-by-hand': settledByHand, 'adopt-effect': adoptEffect },
});
