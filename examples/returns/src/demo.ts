/**
 * The zero-configuration demo (`npm start`): on the embedded database, it seeds a few returns
 * when there are none yet, and its warehouse records a new one now and then, and says so. The
 * payment provider simulator starts in-process when an item first needs it (demo-provider.ts).
 */
import { sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import { queryRows, type Database } from 'reconciler';
import { describeSeed, seedReturns, type SeedOptions } from './seed.js';
import { DECLINED_PAYMENT_METHOD } from './simulator/server.js';
import { startDemoSimulator } from './demo-provider.js';

export const DEMO_RETURNS = 12;
/** How often the demo's warehouse records a new return, so that wake-on-change can be watched. */
export const DEMO_WAREHOUSE_EVERY_MS = 20_000;
/** The demo's Fixes: mostly dollars, some yen (no decimals) and dinars (three). */
const DEMO_CURRENCIES = ['USD', 'USD', 'JPY', 'KWD'];

/** What the demo seeds with: its currencies, and checkout charges at the in-process simulator (what refunds are made against). */
async function demoSeedOptions(database: Database, log: Logger): Promise<SeedOptions> {
  return { currencies: DEMO_CURRENCIES, checkout: (await startDemoSimulator({ db: database.db, log })).provider };
}

/** Seeds demo returns when the database has none yet. */
export async function seedDemoIfEmpty(database: Database, log: Logger): Promise<void> {
  const [row] = await queryRows<{ any: boolean }>(database.db, sql`SELECT EXISTS (SELECT 1 FROM returns) AS any`);
  if (row?.any) return;
  const counts = await seedReturns(database.db, DEMO_RETURNS, Date.now() % 1_000_000, await demoSeedOptions(database, log));
  // One return to charge gets a card the provider declines: the demo has one dead item to resolve in the console (settled-by-hand).
  const declined = await queryRows<{ id: number }>(
    database.db,
    sql`UPDATE customers SET payment_method = ${DECLINED_PAYMENT_METHOD}
        WHERE id = (SELECT f.customer_id FROM returns r JOIN fixes f ON f.id = r.fix_id WHERE f.prepaid_minor = 0 ORDER BY r.id LIMIT 1)
        RETURNING id`,
  );
  log.info(
    { event: 'demo:seeded', ...counts, declined: declined.length },
    `demo: the database had no returns: ${describeSeed(counts)}${declined.length ? '; one card will be declined, so that the console has a dead item to resolve' : ''}`,
  );
}

/**
 * The demo's warehouse: records one new return every DEMO_WAREHOUSE_EVERY_MS and says so,
 * so that the log shows settle-returns, woken by the insert's notification, settling it
 * within a second (instead of at the next minute). Stops with the returned function.
 */
export function startDemoWarehouse(database: Database, log: Logger, everyMs = DEMO_WAREHOUSE_EVERY_MS): () => void {
  let seed = Date.now() % 1_000_000;
  const timer = setInterval(() => {
    void demoSeedOptions(database, log)
      .then((options) => seedReturns(database.db, 1, ++seed, options))
      .then(async () => {
        const [row] = await queryRows<{ id: number }>(database.db, sql`SELECT max(id)::int AS id FROM returns`);
        log.info({ returnId: row?.id }, `demo: the warehouse recorded return ${row?.id}; settle-returns wakes on it (it does not wait for the minute)`);
      })
      .catch((error: unknown) => log.warn({ err: error }, 'demo: the warehouse could not record a return'));
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
