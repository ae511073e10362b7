/** `npm run seed -- --returns N [--seed S]`: adds returns to DATABASE_URL or the embedded database (DATA_DIR). */
import { Command, InvalidArgumentError } from 'commander';
import pino from 'pino';
import { coerceError, errorSummary, openDatabase } from 'reconciler';
import { migrateReturns } from './migrate.js';
import { describeSeed, seedReturns } from './seed.js';

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
    .exitOverride()
    .configureOutput({ outputError: (message, write) => write(`seed: ${message.replace(/^error: /, '').trim()}\n`) });
  let options: { returns: number; seed: number };
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
      const counts = await seedReturns(database.db, options.returns, options.seed);
      process.stdout.write(`${describeSeed(counts)} to ${database.target} in ${((performance.now() - started) / 1000).toFixed(1)}s\n`);
    } finally {
      await database.close();
    }
    return 0;
  } catch (error) {
    process.stderr.write(`seed: ${errorSummary(coerceError(error), 500)}\n`);
    return 2;
  }
}

process.exitCode = await main(process.argv.slice(2));
