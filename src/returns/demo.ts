/**
 * The zero-configuration demo: with neither DATABASE_URL nor PAYMENT_PROVIDER_URL set, the
 * daemon (and `reconciler run`) start the payment provider simulator in-process, on a free
 * port, storing its ledger in the embedded database's `payment_provider` schema; the daemon
 * also seeds a few returns when there are none yet, and says so.
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
