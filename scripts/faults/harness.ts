/**
 * What the fault scenarios run on: a database per scenario, the payment provider simulator
 * as its own process (behind a proxy that can cut it off), daemons and CLI runs as real
 * processes, and the exactly-once audit. No mocks.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { queryRows, type Database } from '../../src/store/database.js';
import { auditSettlement, type SettlementAudit } from '../../examples/returns/src/audit.js';
import { chargeAtCheckout, seedReturns, type SeedCounts } from '../../examples/returns/src/seed.js';
import { ProviderError, StripePaymentProvider, type EffectKind, type EffectRequest, type EffectResult, type LookupRequest, type PaymentProvider } from '../../examples/returns/src/provider.js';
import type { SimulatorFaults, SimulatorStats } from '../../examples/returns/src/simulator/server.js';
import type { App } from './app.js';
import { OwnedPostgres } from './postgres.js';
import { REPO_ROOT } from '../../testkit/jobs.js';
import { runCli, startProcess, until as poll, type CliResult, type RunningProcess } from '../../testkit/processes.js';
import { FaultyProxy } from '../../testkit/proxy.js';
import { DEFAULT_ADMIN_URL, adminQuery, createEmptyDatabase, createTestDatabase, databaseUrl, dropDatabase } from '../../testkit/database.js';
import { SimulatorClient, startSimulator } from '../../testkit/returns.js';
import { settleReturnsJobFile, type SettleReturnsOptions } from '../../testkit/settle-returns.js';
import shippedSettleReturns from '../../examples/returns/jobs/settle-returns.js';

export const ADMIN_URL = DEFAULT_ADMIN_URL;
export const PROVIDER_KEY = 'sk_test_faults';
/** How many attempts settle-returns gives an item as it ships, before the item is left for a person. */
export const SHIPPED_MAX_ATTEMPTS = shippedSettleReturns.retry!.maxAttempts!;
/** The currencies of the fault runs' Fixes, drawn in turn: mostly USD, and a currency without decimals and one with three. */
export const FAULT_CURRENCIES: readonly string[] = ['USD', 'USD', 'USD', 'JPY', 'KWD'];

export function urlOf(database: string, adminUrl = ADMIN_URL): string {
  return databaseUrl(adminUrl, database);
}

export function admin(query: string, adminUrl = ADMIN_URL): Promise<void> {
  return adminQuery(adminUrl, query);
}

/** Everything a scenario started, torn down in reverse order whatever happens. */
export class Stage {
  readonly #cleanups: (() => Promise<void> | void)[] = [];
  readonly #shops: Shop[] = [];
  readonly #providers: ProviderHandle[] = [];

  /** `app`: the build that every daemon, CLI run and the simulator run from. */
  constructor(readonly app: App) {}

  defer(cleanup: () => Promise<void> | void): void {
    this.#cleanups.push(cleanup);
  }

  async teardown(): Promise<void> {
    for (const cleanup of this.#cleanups.reverse()) await Promise.resolve(cleanup()).catch(() => undefined);
  }

  /**
   * A fresh migrated database with `returns` returns seeded (deterministically from `seed`, in FAULT_CURRENCIES), on
   * `adminUrl`'s server. What its customers prepaid is charged at checkout at the stage's provider, so that its refunds
   * have their charge: at once if the stage has a provider (the latest one made), else by the next `provider()`, before
   * that one's faults are on. `shop.seed(n, seed)` adds returns the same way.
   */
  async shop(returns: number, seed: number, adminUrl = ADMIN_URL): Promise<Shop> {
    const created = await createTestDatabase(adminUrl, { returns: true, prefix: 'reconciler_faults' });
    this.defer(() => created.drop());
    const shop = new Shop(created.url, created.database, this.#providers.at(-1));
    this.#shops.push(shop);
    await shop.seed(returns, seed);
    return shop;
  }

  /**
   * The simulator as its own process with its own database, reached through a proxy that can cut it off. The stage's
   * shops that have no provider yet are charged at checkout here, through the simulator's direct URL, before `faults`
   * are set: those charges are the shop's history, not part of the scenario.
   */
  async provider(seed: number, faults: Partial<SimulatorFaults>, apiKey = PROVIDER_KEY): Promise<ProviderHandle> {
    const name = await createEmptyDatabase(ADMIN_URL, 'reconciler_faults_provider');
    this.defer(() => dropDatabase(ADMIN_URL, name));
    const simulator = await startSimulator({ storageUrl: urlOf(name), apiKey, seed, register: this.app.register, main: this.app.module('examples/returns/src/simulator/main.js') });
    this.defer(() => simulator.process.kill('SIGKILL'));
    const proxy = await FaultyProxy.start({ host: '127.0.0.1', port: Number(new URL(simulator.url).port) });
    this.defer(() => proxy.close());
    const handle = new ProviderHandle(simulator.url, `http://127.0.0.1:${proxy.port}`, proxy, apiKey, urlOf(name));
    this.#providers.push(handle);
    for (const shop of this.#shops.filter((s) => !s.provider)) await shop.chargeAt(handle);
    await handle.setFaults(faults);
    return handle;
  }

  /** A PostgreSQL server of the scenario's own, which it may stop and start. */
  async ownedPostgres(): Promise<OwnedPostgres> {
    const server = await OwnedPostgres.create();
    this.defer(() => server.destroy());
    return server;
  }

  /** An empty job folder, removed at teardown. */
  jobFolder(): string {
    const dir = join(REPO_ROOT, 'test', '.tmp', `faults-jobs-${randomBytes(4).toString('hex')}`);
    mkdirSync(dir, { recursive: true });
    this.defer(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }

  /**
   * A job folder with settle-returns on a fast schedule and short backoff: the shipped definition of the build,
   * tuned for fault runs (unpartitioned and unwoken unless `partitions` and `wakeOn` shape it as it ships; an item
   * dies after `maxAttempts`, 1000 unless the scenario counts what dies, as shipped: SHIPPED_MAX_ATTEMPTS).
   */
  jobs(
    schedule: string,
    { concurrency = 10, partitions = 1, wakeOn = false, maxAttempts = 1000 }: { concurrency?: number; partitions?: number; wakeOn?: boolean; maxAttempts?: number } = {},
  ): string {
    const dir = this.jobFolder();
    const options: SettleReturnsOptions = { schedule, concurrency, partitions, wakeOn: wakeOn ? ['returns'] : [], timeout: '10s', retry: { maxAttempts, backoff: { initial: '500ms', max: '4s' } } };
    const from = { api: this.app.module('src/index.js'), jobFile: this.app.module('examples/returns/jobs/settle-returns.js') };
    writeFileSync(join(dir, 'settle-returns.js'), settleReturnsJobFile(options, from));
    return dir;
  }

  env(shopUrl: string, provider: ProviderHandle, jobsDir: string, extra: Record<string, string> = {}): Record<string, string> {
    return { DATABASE_URL: shopUrl, JOBS_DIR: jobsDir, PAYMENT_PROVIDER_URL: provider.url, PAYMENT_PROVIDER_KEY: provider.apiKey, PAYMENT_PROVIDER_TIMEOUT: '2s', LEASE_TTL: '3s', LOG_LEVEL: 'info', ...extra };
  }

  daemon(env: Record<string, string>): RunningProcess {
    return this.start(['daemon'], env);
  }

  /** A FaultyProxy in front of the PostgreSQL server of `url`, closed at teardown; and `url` through it. */
  async databaseProxy(url: string): Promise<{ proxy: FaultyProxy; url: string }> {
    const proxied = new URL(url);
    const proxy = await FaultyProxy.start({ host: proxied.hostname, port: Number(proxied.port || 5432) });
    this.defer(() => proxy.close());
    proxied.host = `127.0.0.1:${proxy.port}`;
    return { proxy, url: proxied.toString() };
  }

  /** `reconciler …args` of the build in the background, killed at teardown if still running. */
  start(args: string[], env: Record<string, string>): RunningProcess {
    const child = startProcess(args, env, { bin: this.app.bin });
    this.defer(() => child.kill('SIGKILL'));
    return child;
  }

  run(args: string[], env: Record<string, string>): Promise<CliResult> {
    return runCli(args, env, { timeoutMs: 120_000, bin: this.app.bin });
  }
}

/** The simulator of a scenario: `url` goes through the proxy (what daemons use), `direct` does not (what the checks use). */
export class ProviderHandle extends SimulatorClient {
  /** The client that charges at checkout: the stripe SDK on the direct URL (never cut by the proxy), counting what it sent. */
  readonly checkout: CheckoutClient;

  constructor(
    direct: string,
    readonly url: string,
    readonly proxy: FaultyProxy,
    apiKey: string,
    /** The simulator's own database (its ledger and idempotency records). */
    readonly storageUrl: string,
  ) {
    super(direct, apiKey);
    this.checkout = new CheckoutClient(new StripePaymentProvider({ baseUrl: direct, apiKey, timeoutMs: 10_000, searchLagMs: 0 }));
  }

  /**
   * The simulator's counters less the checkout charges the stage made (`posts`, `applied`, `replayed`): what the
   * scenario's daemons and CLI runs did, which is what the scenarios' figures and criteria count.
   */
  override async stats(): Promise<SimulatorStats> {
    const stats = await super.stats();
    const own = this.checkout.sent;
    return { ...stats, posts: stats.posts - own.posts, applied: stats.applied - own.applied, replayed: stats.replayed - own.replayed };
  }
}

/**
 * What charges a shop's prepaid Fixes at checkout: a provider client whose charges are retried with their key (a few
 * times, on an answer that leaves the outcome unknown: a shop seeded more returns while the scenario's faults are on),
 * and counted, so that the scenarios' figures leave them out.
 */
export class CheckoutClient implements PaymentProvider {
  readonly sent = { posts: 0, applied: 0, replayed: 0 };

  constructor(readonly client: PaymentProvider) {}

  get searchLagMs(): number {
    return this.client.searchLagMs;
  }

  async charge(request: EffectRequest, signal: AbortSignal): Promise<EffectResult> {
    for (let attempt = 1; ; attempt++) {
      this.sent.posts++;
      try {
        const result = await this.client.charge(request, signal);
        if (result.replayed) this.sent.replayed++;
        else this.sent.applied++;
        return result;
      } catch (error) {
        if (!(error instanceof ProviderError) || error.failure !== 'retryable' || attempt >= 8 || signal.aborted) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
      }
    }
  }

  refund(): Promise<EffectResult> {
    return Promise.reject(new Error('the checkout client only charges'));
  }

  find(request: LookupRequest, signal: AbortSignal) {
    return this.client.find(request, signal);
  }

  retrieve(kind: EffectKind, id: string, signal: AbortSignal) {
    return this.client.retrieve(kind, id, signal);
  }
}

/** A scenario's shop: its database, and more returns seeded as `Stage.shop` seeds them (charged at checkout at its provider). */
export class Shop {
  constructor(
    readonly url: string,
    readonly database: Database,
    /** Where its Fixes are charged at checkout; none until the stage has a provider. */
    public provider: ProviderHandle | undefined,
  ) {}

  /**
   * Adds `count` returns, drawn from `seed`, in FAULT_CURRENCIES; their prepaid Fixes are charged at checkout at the
   * shop's provider, if it has one yet (the seed charges them before their returns appear, as a real checkout comes first).
   */
  seed(count: number, seed: number): Promise<SeedCounts> {
    const checkout = this.provider ? { checkout: this.provider.checkout } : {};
    return seedReturns(this.database.db, count, seed, { currencies: FAULT_CURRENCIES, ...checkout });
  }

  /** From now on its Fixes are charged at `provider`, starting with those seeded before it had one. */
  async chargeAt(provider: ProviderHandle): Promise<number> {
    this.provider = provider;
    const fixes = await queryRows<{ id: number }>(this.database.db, sql`SELECT id FROM fixes WHERE prepaid_minor > 0 AND checkout_charge_ref IS NULL ORDER BY id`);
    return chargeAtCheckout(this.database.db, provider.checkout, fixes.map((f) => Number(f.id)));
  }
}

/** What a scenario (or one case of it) measured: the criteria it missed, in words, and its figures. */
export interface Outcome {
  failures: string[];
  figures: Record<string, number | string>;
}

/** The checks every scenario ends with: no duplicate, nothing missing, ledger and database agree, one key per item. */
export function exactlyOnce(a: SettlementAudit): string[] {
  const failures: string[] = [];
  if (a.duplicates > 0) failures.push(`${a.duplicates} return(s) with more than one effect`);
  if (a.missing > 0) failures.push(`${a.missing} return(s) missing their effect`);
  if (a.disagreements > 0) failures.push(`${a.disagreements} disagreement(s) between the ledger and the database`);
  if (a.maxKeysPerReturn > 1) failures.push(`a return with ${a.maxKeysPerReturn} idempotency keys`);
  if (a.unsettled > 0) failures.push(`${a.unsettled} return(s) never settled`);
  return failures;
}

export function auditFigures(a: SettlementAudit): Record<string, number> {
  return { returns: a.returns, needing: a.needingEffect, effects: a.effects, duplicates: a.duplicates, missing: a.missing, declined: a.declined };
}

/** After convergence, one more pass must make no provider call. */
export async function quietAfter(stage: Stage, env: Record<string, string>, providerStats: () => Promise<{ posts: number }>): Promise<string[]> {
  const before = (await providerStats()).posts;
  await stage.run(['run', 'settle-returns', '--wait'], env);
  const calls = (await providerStats()).posts - before;
  return calls === 0 ? [] : [`a pass after convergence made ${calls} provider call(s)`];
}

/** Resolves when `daemon` says it started: listening and scheduling. */
export async function daemonStarted(daemon: RunningProcess): Promise<void> {
  await daemon.waitForEvent('daemon:started', {}, 30_000);
}

/** Polls `probe` every 200 ms (or `everyMs`) until it returns a value, or fails after `timeoutMs`. */
export function until<T>(probe: () => Promise<T | undefined | false>, what: string, timeoutMs: number, everyMs = 200): Promise<T> {
  return poll(probe, what, timeoutMs, everyMs);
}

/** Returns not settled yet: the backlog. */
export async function unsettledReturns(database: Database): Promise<number> {
  return Number((await queryRows<{ n: number }>(database.db, sql`SELECT count(*)::int AS n FROM returns WHERE settled_at IS NULL`))[0]?.n ?? 0);
}

/** The audit, once the ledger and the database agree that nothing is left to do. */
export async function audit(database: Database, provider: ProviderHandle): Promise<SettlementAudit> {
  return auditSettlement(database.db, await provider.ledger());
}

/** Returns neither settled nor declined: the audit's `unsettled`, counted through the partial index of unsettled returns. */
async function undone(database: Database): Promise<number> {
  const [row] = await queryRows<{ n: number }>(
    database.db,
    sql`SELECT count(*)::int AS n FROM returns r WHERE r.settled_at IS NULL AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.return_id = r.id AND p.state = 'declined')`,
  );
  return Number(row?.n ?? 0);
}

/**
 * Waits until every return is settled or declined; returns the audit and how long it took.
 * It polls a count, and audits once at the end: the audit (every return with its items, the
 * provider's whole ledger) polled every 200 ms took a good part of a core from the daemons and
 * the simulator it was measuring (10,000 returns, 2 cores).
 */
export async function converge(database: Database, provider: ProviderHandle, timeoutMs: number): Promise<{ audit: SettlementAudit; ms: number }> {
  const started = Date.now();
  await until(async () => (await undone(database)) === 0, 'convergence', timeoutMs);
  const ms = Date.now() - started;
  return { audit: await audit(database, provider), ms };
}
