/**
 * The demo's payment provider: with nothing configured, on the embedded database, the
 * simulator starts in this process on a free port the first time an item needs it, and keeps
 * its ledger in the embedded database's `payment_provider` schema; the provider client is the
 * same as against Stripe (the `stripe` SDK), pointed at it.
 */
import { randomBytes } from 'node:crypto';
import { registerSecret, type ReconcileContext } from 'reconciler';
import { StripePaymentProvider, type PaymentProvider } from './provider.js';
import { startSimulator, type RunningSimulator } from './simulator/server.js';

let started: Promise<{ simulator: RunningSimulator; provider: PaymentProvider }> | undefined;

export function startDemoSimulator({ db, log }: Pick<ReconcileContext, 'db' | 'log'>): Promise<{ simulator: RunningSimulator; provider: PaymentProvider }> {
  started ??= (async () => {
    const apiKey = `sk_demo_${randomBytes(12).toString('hex')}`;
    registerSecret(apiKey);
    const simulator = await startSimulator({ db, apiKey, faults: { latencyMs: [20, 80] } });
    log.info({ event: 'demo:simulator', url: simulator.url }, `demo: PAYMENT_PROVIDER_URL is not set, so a payment provider simulator runs in-process on ${simulator.url}`);
    // The in-process simulator's search has no lag (searchLagMs 0): a second's margin is plenty.
    return { simulator, provider: new StripePaymentProvider({ baseUrl: simulator.url, apiKey, timeoutMs: 10_000, searchLagMs: 1_000 }) };
  })();
  return started;
}

/** Stops the in-process simulator, if one started. */
export async function stopDemoSimulator(): Promise<void> {
  const running = started;
  started = undefined;
  if (running) await (await running).simulator.close();
}
