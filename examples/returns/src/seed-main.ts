/** `npm run seed -- --returns N [--seed S] [--currencies USD,JPY,KWD]`: adds returns to DATABASE_URL or the embedded database (DATA_DIR). */
import { Command, InvalidArgumentError } from 'commander';
import pino from 'pino';
import { coerceError, errorSummary, openDatabase, type Db } from 'reconciler';
import type { Logger } from 'pino';
import { migrateReturns } from './migrate.js';
import { describeSeed, seedReturns } from './seed.js';
import { minorUnitExponent } from './money.js';
import { paymentProviderFromEnv, type PaymentProvider } from './provider.js';
import { stopDemoSimulator } from './demo-provider.js';

/**
 * Where prepaid Fixes are charged at checkout: the configured provider, or on the embedded
 * database the demo's simulator (its ledger in that database, where the daemon's finds it).
 * Without a provider, they are not: their refunds will be parked, and this says so.
 */
async function checkoutProvider(db: Db, log: Logger): Promise<PaymentProvider | undefined> {
  try {
    return await paymentProviderFromEnv({ db, log });
  } catch (error) {
    process.stderr.write(`seed: prepaid Fixes are not charged at checkout (${errorSummary(coerceError(error), 300)}), so their refunds will be parked\n`);
    return undefined;
  }
}

function currencies(value: string): string[] {
  const codes = value.split(',').map((code) => code.trim().toUpperCase());
  try {
    for (const code of codes) minorUnitExponent(code);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
  return codes;
}

async function main(argv: string[]): Promise<number> {
  const count = (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1 || n > 10_000_000) throw new InvalidArgumentError('expected a whole number from 1 to 10,000,000');
    return n;
  };
  const program = new Command('seed')
    .description('Adds realistic returns needing a charge, a refund or nothing, to DATABASE_URL or the embedded database.')
    .requiredOption('--returns <n>', 'how many returns to add', count)
    .option('--seed <n>', 'seed of the generator, for repeatable data', (v) => Number(v), 1)
    .option('--currencies <list>', 'comma-separated ISO 4217 codes the Fixes are priced in, e.g. USD,JPY,KWD', currencies, ['USD'])
    .exitOverride()
    .configureOutput({ outputError: (message, write) => write(`seed: ${message.replace(/^error: /, '').trim()}\n`) });
  let options: { returns: number; seed: number; currencies: string[] };
  try {
    options = program.parse(argv, { from: 'user' }).opts();
  } catch (error) {
    return (error as { exitCode?: number }).exitCode === 0 ? 0 : 2;
  }
  try {
    const log = pino({ level: 'warn' }, pino.destination({ fd: 2, sync: true }));
    const database = await openDatabase({ databaseUrl: process.env.DATABASE_URL || undefined, dataDir: process.env.DATA_DIR || '.data', log });
    try {
      await migrateReturns(database);
      const started = performance.now();
      const counts = await seedReturns(database.db, options.returns, options.seed, { currencies: options.currencies, checkout: await checkoutProvider(database.db, log) });
      process.stdout.write(`${describeSeed(counts)} to ${database.target} in ${((performance.now() - started) / 1000).toFixed(1)}s\n`);
    } finally {
      await stopDemoSimulator();
      await database.close();
    }
    return 0;
  } catch (error) {
    process.stderr.write(`seed: ${errorSummary(coerceError(error), 500)}\n`);
    return 2;
  }
}

process.exitCode = await main(process.argv.slice(2));
