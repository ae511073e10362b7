/**
 * `npm run provider -- [options]`: the payment provider simulator as its own process.
 * Its storage survives the daemon's crashes: the `payment_provider` schema of
 * --database-url, or its own embedded database under --data-dir.
 */
import { Command, InvalidArgumentError } from 'commander';
import pino from 'pino';
import { coerceError, errorSummary, openDatabase } from 'reconciler';
import { startSimulator, type SimulatorFaults } from './server.js';

function rate(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError('expected a share between 0 and 1, e.g. 0.2');
  return n;
}

function latency(value: string): [number, number] {
  const match = /^(\d+)(?:-(\d+))?$/.exec(value.trim());
  if (!match) throw new InvalidArgumentError('expected milliseconds or a range, e.g. 20-50');
  const low = Number(match[1]);
  const high = Number(match[2] ?? match[1]);
  if (high < low) throw new InvalidArgumentError('the range must go from low to high, e.g. 20-50');
  return [low, high];
}

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65_535) throw new InvalidArgumentError('expected a port number (0 picks a free one)');
  return n;
}

function milliseconds(value: string): number {
  if (!/^\d+$/.test(value.trim())) throw new InvalidArgumentError('expected a whole number of milliseconds, e.g. 60000');
  return Number(value);
}

function hours(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected a positive number of hours, e.g. 24');
  return n;
}

function seed(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError('expected a whole number');
  return n;
}

const env = process.env;

export async function main(argv: string[]): Promise<number> {
  /** A default from the environment, checked as its flag is: a bad one is one line naming the variable. */
  const fromEnv = <T>(name: string, parse: (value: string) => T, fallback: T): T => {
    const value = env[name];
    if (value === undefined || value === '') return fallback;
    try {
      return parse(value);
    } catch (error) {
      throw new InvalidArgumentError(`invalid ${name} (${JSON.stringify(value)}): ${(error as Error).message}`);
    }
  };
  let program: Command;
  try {
    program = new Command('provider')
      .description(
        'A payment provider simulator that speaks Stripe\'s wire format to the stripe SDK: POST /v1/charges, POST /v1/refunds (Idempotency-Key), ' +
          'GET /v1/charges/:id, /v1/refunds/:id, /v1/charges/search, /v1/refunds; and its own GET /v1/ledger and /v1/_simulator/… routes.',
      )
      .option('--host <host>', 'address to listen on', env.PROVIDER_HOST ?? '127.0.0.1')
      .option('--port <port>', 'port to listen on (0: a free one)', port, fromEnv('PROVIDER_PORT', port, 4010))
      .option('--api-key <key>', 'the API key clients must send (default: PAYMENT_PROVIDER_KEY, else sk_test_simulator)')
      .option('--database-url <url>', 'store in this PostgreSQL (schema payment_provider); default: PROVIDER_DATABASE_URL, else an embedded database')
      .option('--data-dir <dir>', 'where the embedded database lives', env.PROVIDER_DATA_DIR ?? '.data/provider')
      .option('--latency <ms>', 'latency of each charge or refund, e.g. 20-50', latency, fromEnv('PROVIDER_LATENCY', latency, [0, 0]))
      .option('--error-rate <share>', 'share answered 500 before applying (nothing saved)', rate, fromEnv('PROVIDER_ERROR_RATE', rate, 0))
      .option('--timeout-rate <share>', 'share applied, then left unanswered (connection dropped)', rate, fromEnv('PROVIDER_TIMEOUT_RATE', rate, 0))
      .option('--decline-rate <share>', 'share declined (402)', rate, fromEnv('PROVIDER_DECLINE_RATE', rate, 0))
      .option('--rate-limit-rate <share>', 'share answered 429 before applying', rate, fromEnv('PROVIDER_RATE_LIMIT_RATE', rate, 0))
      .option('--unavailable-rate <share>', 'share answered 503 before applying', rate, fromEnv('PROVIDER_UNAVAILABLE_RATE', rate, 0))
      .option('--retry-after <value>', 'Retry-After header of the 429 and 503 answers: seconds, or an HTTP-date (default: none)', env.PROVIDER_RETRY_AFTER ?? '')
      .option('--saved-error-rate <share>', 'share answered 500 with that answer saved under the key (replayed until the key expires)', rate, fromEnv('PROVIDER_SAVED_ERROR_RATE', rate, 0))
      .option('--saved-error-applied-share <share>', 'of those saved 500s, the share that applied the effect first', rate, fromEnv('PROVIDER_SAVED_ERROR_APPLIED_SHARE', rate, 0.5))
      .option('--search-lag <ms>', 'an effect shows in search results only this long after it was created', milliseconds, fromEnv('PROVIDER_SEARCH_LAG', milliseconds, 0))
      .option('--key-lifetime-hours <hours>', 'a key first used longer ago is forgotten: a request with it runs as new', hours, fromEnv('PROVIDER_KEY_LIFETIME_HOURS', hours, 24))
      .option('--seed <n>', 'seed of the fault dice, to replay a run', seed, fromEnv('PROVIDER_SEED', seed, Date.now() % 1_000_000))
      .exitOverride()
      .configureOutput({ outputError: (message, write) => write(`provider: ${message.replace(/^error: /, '').trim()}\n`) });
  } catch (error) {
    process.stderr.write(`provider: ${(error as Error).message}\n`);
    return 2;
  }
  let options: ReturnType<typeof program.opts>;
  try {
    options = program.parse(argv, { from: 'user' }).opts();
  } catch (error) {
    return (error as { exitCode?: number }).exitCode === 0 ? 0 : 2;
  }
  const log = pino({ level: 'info' }, pino.destination({ fd: 1, sync: true }));
  const faults: SimulatorFaults = {
    latencyMs: options.latency,
    errorRate: options.errorRate,
    timeoutRate: options.timeoutRate,
    declineRate: options.declineRate,
    rateLimitRate: options.rateLimitRate,
    unavailableRate: options.unavailableRate,
    retryAfter: options.retryAfter,
    savedErrorRate: options.savedErrorRate,
    savedErrorAppliedShare: options.savedErrorAppliedShare,
    searchLagMs: options.searchLag,
    keyLifetimeHours: options.keyLifetimeHours,
  };
  try {
    const database = await openDatabase({ databaseUrl: options.databaseUrl ?? env.PROVIDER_DATABASE_URL, dataDir: options.dataDir, log });
    const simulator = await startSimulator({ db: database.db, apiKey: options.apiKey ?? env.PAYMENT_PROVIDER_KEY ?? 'sk_test_simulator', host: options.host, port: options.port, faults, seed: options.seed });
    log.info({ url: simulator.url, storage: database.target, faults, seed: options.seed }, `payment provider simulator listening on ${simulator.url} (storage: ${database.target}, seed ${options.seed})`);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    log.info({ stats: simulator.stats() }, 'payment provider simulator stopping');
    await simulator.close();
    await database.close();
    return 0;
  } catch (error) {
    process.stderr.write(`provider: ${errorSummary(coerceError(error), 500)}\n`);
    return 2;
  }
}

process.exitCode = await main(process.argv.slice(2));
