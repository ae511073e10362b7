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

const env = process.env;

export async function main(argv: string[]): Promise<number> {
  const program = new Command('provider')
    .description('A Stripe-like payment provider simulator: POST /v1/charges, POST /v1/refunds (Idempotency-Key), GET /v1/ledger.')
    .option('--host <host>', 'address to listen on', env.PROVIDER_HOST ?? '127.0.0.1')
    .option('--port <port>', 'port to listen on (0: a free one)', port, env.PROVIDER_PORT ? port(env.PROVIDER_PORT) : 4010)
    .option('--api-key <key>', 'the API key clients must send (default: PAYMENT_PROVIDER_KEY, else sk_test_simulator)')
    .option('--database-url <url>', 'store in this PostgreSQL (schema payment_provider); default: PROVIDER_DATABASE_URL, else an embedded database')
    .option('--data-dir <dir>', 'where the embedded database lives', env.PROVIDER_DATA_DIR ?? '.data/provider')
    .option('--latency <ms>', 'latency of each charge or refund, e.g. 20-50', latency, latency(env.PROVIDER_LATENCY ?? '0'))
    .option('--error-rate <share>', 'share answered 500 before applying', rate, rate(env.PROVIDER_ERROR_RATE ?? '0'))
    .option('--timeout-rate <share>', 'share applied, then left unanswered (connection dropped)', rate, rate(env.PROVIDER_TIMEOUT_RATE ?? '0'))
    .option('--decline-rate <share>', 'share declined (402)', rate, rate(env.PROVIDER_DECLINE_RATE ?? '0'))
    .option('--rate-limit-rate <share>', 'share answered 429 before applying', rate, rate(env.PROVIDER_RATE_LIMIT_RATE ?? '0'))
    .option('--unavailable-rate <share>', 'share answered 503 before applying', rate, rate(env.PROVIDER_UNAVAILABLE_RATE ?? '0'))
    .option('--retry-after <value>', 'Retry-After header of the 429 and 503 answers: seconds, or an HTTP-date (default: none)', env.PROVIDER_RETRY_AFTER ?? '')
    .option('--seed <n>', 'seed of the fault dice, to replay a run', (v) => Number(v), env.PROVIDER_SEED ? Number(env.PROVIDER_SEED) : Date.now() % 1_000_000)
    .exitOverride()
    .configureOutput({ outputError: (message, write) => write(`provider: ${message.replace(/^error: /, '').trim()}\n`) });
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
