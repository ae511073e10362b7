/**
 * The zero-configuration demo: with neither DATABASE_URL nor PAYMENT_PROVIDER_URL set, the
 * daemon (and `reconciler run`) start the payment provider simulator in-process, on a free
 * port, storing its ledger in the embedded database's `payment_provider` schema; the daemon
 * also seeds a few returns when there are none yet, and records a new one now and then (the
 * warehouse), and says so.
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Database } from '../store/database.js';
import { queryRows } from '../store/database.js';
import { registerSecret } from '../secrets.js';
import { startSimulator, type RunningSimulator } from './simulator/server.js';
import { describeSeed, seedReturns } from './seed.js';

export const DEMO_RETURNS = 12;
/** How often the demo's warehouse records a new return, so that wake-on-change can be watched. */
export const DEMO_WAREHOUSE_EVERY_MS = 20_000;

/** Starts the simulator and points PAYMENT_PROVIDER_URL/KEY at it (for this process only). */
export async function startDemoProvider(database: Database, log: Logger): Promise<RunningSimulator> {
  const apiKey = `sk_demo_${randomBytes(12).toString('hex')}`;
  registerSecret(apiKey);
  const simulator = await startSimulator({ db: database.db, apiKey, faults: { latencyMs: [20, 80] } });
  process.env.PAYMENT_PROVIDER_URL = simulator.url;
  process.env.PAYMENT_PROVIDER_KEY = apiKey;
  log.info({ url: simulator.url }, `demo: no DATABASE_URL and no PAYMENT_PROVIDER_URL, so a payment provider simulator runs in-process on ${simulator.url}`);
  return simulator;
}

/** Seeds demo returns when the database has none yet. */
export async function seedDemoIfEmpty(database: Database, log: Logger): Promise<void> {
  const [row] = await queryRows<{ any: boolean }>(database.db, sql`SELECT EXISTS (SELECT 1 FROM returns) AS any`);
  if (row?.any) return;
  const counts = await seedReturns(database.db, DEMO_RETURNS, Date.now() % 1_000_000);
  log.info({ ...counts }, `demo: the database had no returns: ${describeSeed(counts)}`);
}

/**
 * The demo's warehouse: records one new return every DEMO_WAREHOUSE_EVERY_MS and says so,
 * so that the log shows settle-returns, woken by the insert's notification, settling it
 * within a second (instead of at the next minute). Stops with the returned function.
 */
export function startDemoWarehouse(database: Database, log: Logger, everyMs = DEMO_WAREHOUSE_EVERY_MS): () => void {
  let seed = Date.now() % 1_000_000;
  const timer = setInterval(() => {
    void seedReturns(database.db, 1, ++seed)
      .then(async () => {
        const [row] = await queryRows<{ id: number }>(database.db, sql`SELECT max(id)::int AS id FROM returns`);
        log.info({ returnId: row?.id }, `demo: the warehouse recorded return ${row?.id}; settle-returns wakes on it (it does not wait for the minute)`);
      })
      .catch((error: unknown) => log.warn({ err: error }, 'demo: the warehouse could not record a return'));
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
