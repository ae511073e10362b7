/**
 * The returns domain for tests and fault runs: the payment provider simulator as its own
 * process with its own database, a client of its test API, and the passes of settle-returns
 * run as a user runs them.
 */
import { sql } from 'drizzle-orm';
import { NO_FAULTS, type SimulatorFaults, type SimulatorStats, type LedgerEntry } from '../examples/returns/src/simulator/server.js';
import { createEmptyDatabase, databaseUrl, dropDatabase, type TestDatabase } from './database.js';
import { REPO_ROOT } from './jobs.js';
import { runCli, startProcess, type CliResult, type RunningProcess } from './processes.js';

export const PROVIDER_KEY = 'sk_test_reconciler_suite';

/** The simulator's API as a test drives it: its ledger, its counters, the faults it injects. */
export class SimulatorClient {
  constructor(
    /** Where the simulator itself listens. */
    readonly direct: string,
    readonly apiKey: string,
  ) {}

  async #call<T>(path: string, init: RequestInit = {}): Promise<T> {
    const response = await fetch(`${this.direct}${path}`, { ...init, headers: { authorization: `Bearer ${this.apiKey}`, 'content-type': 'application/json' } });
    if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
    return (await response.json()) as T;
  }

  async ledger(): Promise<LedgerEntry[]> {
    return (await this.#call<{ effects: LedgerEntry[] }>('/v1/ledger')).effects;
  }

  stats(): Promise<SimulatorStats> {
    return this.#call('/v1/_simulator/stats');
  }

  async setFaults(faults: Partial<SimulatorFaults>): Promise<void> {
    await this.#call('/v1/_simulator/faults', { method: 'POST', body: JSON.stringify(faults) });
  }

  /** Moves the simulator's clock forward (cumulative: `created`, search lag and key expiry read it); resolves to its offset from real time, in seconds. */
  async advanceClock(seconds: number): Promise<number> {
    return (await this.#call<{ offsetSeconds: number }>('/v1/_simulator/clock', { method: 'POST', body: JSON.stringify({ advanceSeconds: seconds }) })).offsetSeconds;
  }
}

export interface SimulatorOptions {
  /** The simulator's own database. */
  storageUrl: string;
  apiKey: string;
  seed: number;
  args?: string[];
  /** The module to `--import` and the simulator's entry point: this checkout's sources unless a build's are given. */
  register?: string;
  main?: string;
}

/** Starts `npm run provider`'s entry point as its own process; resolves once it listens. */
export async function startSimulator(options: SimulatorOptions): Promise<{ process: RunningProcess; url: string }> {
  const { register = './bin/register.js', main = 'examples/returns/src/simulator/main.ts' } = options;
  const argv = ['--import', register, main, '--port', '0', '--api-key', options.apiKey, '--seed', String(options.seed), ...(options.args ?? [])];
  const child = startProcess(argv, { PROVIDER_DATABASE_URL: options.storageUrl }, { command: process.execPath });
  try {
    const line = await child.waitFor((l) => typeof l.url === 'string', 'the simulator to listen', 30_000);
    return { process: child, url: String(line.url) };
  } catch (error) {
    await child.kill('SIGKILL');
    throw error;
  }
}

export interface Provider {
  url: string;
  process: RunningProcess;
  ledger(): Promise<LedgerEntry[]>;
  stats(): Promise<SimulatorStats>;
  setFaults(faults: Partial<SimulatorFaults>): Promise<void>;
  /** See SimulatorClient.advanceClock. */
  advanceClock(seconds: number): Promise<number>;
  stop(): Promise<void>;
}

/** The simulator (this checkout's sources), storing in its own new database on the server of `adminUrl`. */
export async function startProvider(adminUrl: string, args: string[] = [], apiKey = PROVIDER_KEY): Promise<Provider> {
  const storage = await createEmptyDatabase(adminUrl);
  const { process: child, url } = await startSimulator({ storageUrl: databaseUrl(adminUrl, storage), apiKey, seed: 42, args });
  const client = new SimulatorClient(url, apiKey);
  return {
    url,
    process: child,
    ledger: () => client.ledger(),
    stats: () => client.stats(),
    setFaults: (faults) => client.setFaults(faults),
    advanceClock: (seconds) => client.advanceClock(seconds),
    async stop() {
      await child.kill('SIGTERM');
      await dropDatabase(adminUrl, storage);
    },
  };
}

/** The environment of a `reconciler` process that settles returns of `t` through `provider`. */
export function settleEnv(t: TestDatabase, provider: Provider, extra: Record<string, string> = {}): Record<string, string> {
  return { DATABASE_URL: t.url, JOBS_DIR: `${REPO_ROOT}/jobs`, PAYMENT_PROVIDER_URL: provider.url, PAYMENT_PROVIDER_KEY: PROVIDER_KEY, PAYMENT_PROVIDER_TIMEOUT: '3s', LEASE_TTL: '1s', ...extra };
}

export function settlePass(t: TestDatabase, provider: Provider, extra: Record<string, string> = {}, args: string[] = []): Promise<CliResult> {
  return runCli(['run', 'settle-returns', '--wait', ...args], settleEnv(t, provider, extra));
}

/** Time passes: every item in backoff is due now. */
export async function makeDue(t: TestDatabase): Promise<void> {
  await t.rows(sql`UPDATE reconciler.failures SET next_attempt_at = now() - interval '1 second' WHERE dead_at IS NULL`);
}

/** Runs passes, making backoff due before each, until one succeeds with nothing left in backoff (dead items stay), at most `max` times. */
export async function settleUntilQuiet(t: TestDatabase, provider: Provider, max = 15): Promise<void> {
  for (let i = 0; i < max; i++) {
    await makeDue(t);
    const result = await settlePass(t, provider);
    const [waiting] = await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.failures WHERE dead_at IS NULL`);
    if (result.code === 0 && waiting!.n === 0) return;
  }
  throw new Error(`not converged after ${max} passes`);
}

/** The provider's effects for the returns now in `t` (the simulator outlives the tests of a file; return ids never repeat). */
export async function ledgerOf(t: TestDatabase, provider: Provider): Promise<LedgerEntry[]> {
  const ids = new Set((await t.rows<{ id: number }>(sql`SELECT id FROM returns`)).map((r) => String(r.id)));
  return (await provider.ledger()).filter((entry) => ids.has(entry.returnId));
}

/** Resolves once a daemon has logged the end of a pass of each of settle-returns' partitions (it ships with 4). */
export async function everySettlePartitionPassed(daemon: RunningProcess, timeoutMs = 60_000): Promise<void> {
  const ended = () => new Set(daemon.events('pass:finish', { reconciler: 'settle-returns' }).map((line) => line.partition));
  await daemon.waitFor(() => ended().size === 4, 'a pass of every settle-returns partition', timeoutMs);
}

/**
 * A clean slate between tests of the returns domain: the engine's memory and the example's
 * tables emptied (ids go on, so idempotency keys never repeat at a simulator that outlives the
 * test), and the simulator's faults off.
 */
export async function resetReturns(t: TestDatabase, provider: Provider): Promise<void> {
  await t.rows(sql`TRUNCATE reconciler.runs, reconciler.failures, reconciler.state, reconciler.audit, payments, return_items, returns, fix_items, fixes, customers CASCADE`);
  await provider.setFaults(NO_FAULTS);
}
