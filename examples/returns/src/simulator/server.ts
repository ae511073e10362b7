/**
 * A payment provider simulator that behaves like an external system: its own storage (the
 * `payment_provider` schema, which survives the daemon's crashes), Stripe's idempotency
 * semantics, and fault knobs.
 *
 * Idempotency (as Stripe documents it): the first request with a key is recorded; the same
 * key with the same parameters replays the first answer (`Idempotent-Replayed: true`); the
 * same key with other parameters gets 422; a request whose key is still in flight gets 409.
 * An effect is applied at most once per key (UNIQUE on the effects' key).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { sql } from 'drizzle-orm';
import { queryRows, type Db } from 'reconciler';
import { dice } from '../dice.js';

export interface SimulatorFaults {
  /** Latency range of each charge or refund, in ms. */
  latencyMs: [number, number];
  /** Share of requests answered 500 before anything is applied. */
  errorRate: number;
  /** Share of requests applied, then left without an answer (the connection is dropped). */
  timeoutRate: number;
  /** Share of requests declined (402 card_declined). */
  declineRate: number;
  /** Share of requests answered 429 before anything is applied. */
  rateLimitRate: number;
  /** Share of requests answered 503 before anything is applied. */
  unavailableRate: number;
  /** The `Retry-After` header of those 429 and 503 answers, verbatim (seconds, or an HTTP-date); none when empty. */
  retryAfter: string;
}

/** The payment method whose charges the simulator always declines, as Stripe's test card of that name is. */
export const DECLINED_PAYMENT_METHOD = 'pm_card_chargeDeclined';

export const NO_FAULTS: SimulatorFaults = { latencyMs: [0, 0], errorRate: 0, timeoutRate: 0, declineRate: 0, rateLimitRate: 0, unavailableRate: 0, retryAfter: '' };

export interface SimulatorOptions {
  db: Db;
  apiKey: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  faults?: Partial<SimulatorFaults>;
  /** Seed of the fault dice, so that a run can be replayed. */
  seed?: number;
}

export interface SimulatorStats {
  /** POSTs to /v1/charges and /v1/refunds, whatever their answer. */
  posts: number;
  applied: number;
  replayed: number;
  declined: number;
  conflicts: number;
  faults: { errors: number; timeouts: number; rateLimited: number; unavailable: number };
}

export interface LedgerEntry {
  id: string;
  kind: 'charge' | 'refund';
  amount: number;
  currency: string;
  idempotencyKey: string;
  returnId: string;
  createdAt: string;
}

export interface RunningSimulator {
  url: string;
  stats(): SimulatorStats;
  setFaults(faults: Partial<SimulatorFaults>): SimulatorFaults;
  close(): Promise<void>;
}

/** Creates the simulator's own tables (idempotent). */
export async function prepareSimulatorStorage(db: Db): Promise<void> {
  await queryRows(db, sql`CREATE SCHEMA IF NOT EXISTS payment_provider`);
  await queryRows(
    db,
    sql`CREATE TABLE IF NOT EXISTS payment_provider.requests (
          idempotency_key text PRIMARY KEY, endpoint text NOT NULL, params_hash text NOT NULL, state text NOT NULL,
          status_code int, response jsonb, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())`,
  );
  await queryRows(
    db,
    sql`CREATE TABLE IF NOT EXISTS payment_provider.effects (
          id text PRIMARY KEY, kind text NOT NULL, amount int NOT NULL, currency text NOT NULL,
          idempotency_key text NOT NULL UNIQUE, return_id text, customer text, created_at timestamptz NOT NULL DEFAULT now())`,
  );
}

/** Every effect applied, oldest first. */
export async function readLedger(db: Db): Promise<LedgerEntry[]> {
  const rows = await queryRows<{ id: string; kind: 'charge' | 'refund'; amount: number; currency: string; idempotency_key: string; return_id: string; created_at: string }>(
    db,
    sql`SELECT id, kind, amount, currency, idempotency_key, return_id, created_at::text FROM payment_provider.effects ORDER BY created_at, id`,
  );
  return rows.map((r) => ({ id: r.id, kind: r.kind, amount: Number(r.amount), currency: r.currency, idempotencyKey: r.idempotency_key, returnId: r.return_id, createdAt: r.created_at }));
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

const apiError = (type: string, message: string, code?: string) => ({ error: { type, message, ...(code ? { code } : {}) } });

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > 1_000_000) throw new Error('body too large');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export async function startSimulator(options: SimulatorOptions): Promise<RunningSimulator> {
  const { db, apiKey } = options;
  await prepareSimulatorStorage(db);
  let faults: SimulatorFaults = { ...NO_FAULTS, ...options.faults };
  const roll = dice(options.seed ?? Date.now());
  const stats: SimulatorStats = { posts: 0, applied: 0, replayed: 0, declined: 0, conflicts: 0, faults: { errors: 0, timeouts: 0, rateLimited: 0, unavailable: 0 } };

  const effect = async (kind: 'charge' | 'refund', endpoint: string, req: IncomingMessage, res: ServerResponse) => {
    const key = req.headers['idempotency-key'];
    if (typeof key !== 'string' || key === '') return send(res, 400, apiError('invalid_request_error', 'an Idempotency-Key header is required'));
    let body: { amount?: unknown; currency?: unknown; customer?: unknown; metadata?: { return_id?: unknown } };
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return send(res, 400, apiError('invalid_request_error', 'the body must be JSON'));
    }
    if (!Number.isInteger(body.amount) || (body.amount as number) <= 0 || typeof body.currency !== 'string' || !/^[a-z]{3}$/i.test(body.currency)) {
      return send(res, 400, apiError('invalid_request_error', 'amount (a positive integer of minor units) and currency (3 letters) are required'));
    }
    stats.posts++;
    const comeBack: Record<string, string> = faults.retryAfter ? { 'retry-after': faults.retryAfter } : {};
    if (roll() < faults.rateLimitRate) {
      stats.faults.rateLimited++;
      return send(res, 429, apiError('rate_limit_error', 'too many requests (simulated)'), comeBack);
    }
    // Rolled only when set, so that the dice of a seed replay as before for the other faults.
    if (faults.unavailableRate > 0 && roll() < faults.unavailableRate) {
      stats.faults.unavailable++;
      return send(res, 503, apiError('api_error', 'service unavailable before anything was applied (simulated)'), comeBack);
    }
    if (roll() < faults.errorRate) {
      stats.faults.errors++;
      return send(res, 500, apiError('api_error', 'internal error before anything was applied (simulated)'));
    }
    const hash = createHash('sha256')
      .update(JSON.stringify([endpoint, body.amount, body.currency.toLowerCase(), body.customer ?? null, (body as { payment_method?: unknown }).payment_method ?? null, body.metadata?.return_id ?? null]))
      .digest('hex');
    const claimed = await queryRows(
      db,
      sql`INSERT INTO payment_provider.requests (idempotency_key, endpoint, params_hash, state) VALUES (${key}, ${endpoint}, ${hash}, 'in_flight')
          ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key`,
    );
    if (claimed.length === 0) {
      const [seen] = await queryRows<{ endpoint: string; params_hash: string; state: string; status_code: number | null; response: unknown; stale: boolean }>(
        db,
        sql`SELECT endpoint, params_hash, state, status_code, response, updated_at < now() - interval '5 minutes' AS stale
            FROM payment_provider.requests WHERE idempotency_key = ${key}`,
      );
      if (!seen) return send(res, 409, apiError('idempotency_error', 'the request with this key is being processed; retry', 'request_in_progress'));
      if (seen.endpoint !== endpoint || seen.params_hash !== hash) {
        stats.conflicts++;
        return send(res, 422, apiError('idempotency_error', 'keys for idempotent requests can only be used with the same parameters they were first used with', 'idempotency_key_reused'));
      }
      if (seen.state === 'done') {
        stats.replayed++;
        return send(res, seen.status_code ?? 200, seen.response, { 'idempotent-replayed': 'true' });
      }
      // In flight: answer 409, unless the request that claimed it died long ago (a crashed simulator); then take it over,
      // answering from the effect if that request had applied one.
      const reclaimed = seen.stale
        ? await queryRows(db, sql`UPDATE payment_provider.requests SET updated_at = now() WHERE idempotency_key = ${key} AND state = 'in_flight' AND updated_at < now() - interval '5 minutes' RETURNING 1`)
        : [];
      if (reclaimed.length === 0) {
        stats.conflicts++;
        return send(res, 409, apiError('idempotency_error', 'a request with this key is in progress; retry later', 'request_in_progress'));
      }
      const [applied] = await queryRows<{ id: string; amount: number; currency: string }>(db, sql`SELECT id, amount, currency FROM payment_provider.effects WHERE idempotency_key = ${key}`);
      if (applied) {
        const response = { id: applied.id, object: kind, amount: Number(applied.amount), currency: applied.currency, status: 'succeeded' };
        await queryRows(db, sql`UPDATE payment_provider.requests SET state = 'done', status_code = 200, response = ${JSON.stringify(response)}::jsonb, updated_at = now() WHERE idempotency_key = ${key} AND state = 'in_flight'`);
        stats.replayed++;
        return send(res, 200, response, { 'idempotent-replayed': 'true' });
      }
    }
    const [low, high] = faults.latencyMs;
    if (high > 0) await new Promise((resolve) => setTimeout(resolve, low + (high - low) * roll()));
    // Stripe's test PaymentMethod that is always declined, so that a demo or a test can have exactly one decline.
    if ((body as { payment_method?: unknown }).payment_method === DECLINED_PAYMENT_METHOD || roll() < faults.declineRate) {
      stats.declined++;
      const declined = apiError('card_error', 'your card was declined (simulated)', 'card_declined');
      await queryRows(db, sql`UPDATE payment_provider.requests SET state = 'done', status_code = 402, response = ${JSON.stringify(declined)}::jsonb, updated_at = now() WHERE idempotency_key = ${key} AND state = 'in_flight'`);
      return send(res, 402, declined);
    }
    const id = `${kind === 'charge' ? 'ch' : 're'}_${randomBytes(12).toString('hex')}`;
    const response = { id, object: kind, amount: body.amount, currency: body.currency.toLowerCase(), customer: body.customer ?? null, metadata: body.metadata ?? {}, status: 'succeeded' };
    await db.transaction(async (tx) => {
      const t = tx as unknown as Db;
      await queryRows(
        t,
        sql`INSERT INTO payment_provider.effects (id, kind, amount, currency, idempotency_key, return_id, customer)
            VALUES (${id}, ${kind}, ${body.amount as number}, ${(body.currency as string).toLowerCase()}, ${key}, ${String(body.metadata?.return_id ?? '')}, ${String(body.customer ?? '')})
            ON CONFLICT (idempotency_key) DO NOTHING`,
      );
      await queryRows(t, sql`UPDATE payment_provider.requests SET state = 'done', status_code = 200, response = ${JSON.stringify(response)}::jsonb, updated_at = now() WHERE idempotency_key = ${key} AND state = 'in_flight'`);
    });
    stats.applied++;
    if (roll() < faults.timeoutRate) {
      stats.faults.timeouts++;
      res.socket?.destroy(); // applied, but the caller never hears of it
      return;
    }
    send(res, 200, response);
  };

  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const route = async () => {
      if (req.method === 'GET' && path === '/healthz') return send(res, 200, { ok: true });
      if (req.headers.authorization !== `Bearer ${apiKey}`) return send(res, 401, apiError('authentication_error', 'invalid API key'));
      if (req.method === 'POST' && path === '/v1/charges') return effect('charge', path, req, res);
      if (req.method === 'POST' && path === '/v1/refunds') return effect('refund', path, req, res);
      if (req.method === 'GET' && path === '/v1/ledger') return send(res, 200, { effects: await readLedger(db) });
      if (req.method === 'GET' && path === '/v1/_simulator/stats') return send(res, 200, { ...stats, faultSettings: faults });
      if (req.method === 'POST' && path === '/v1/_simulator/faults') {
        faults = { ...faults, ...(JSON.parse(await readBody(req)) as Partial<SimulatorFaults>) };
        return send(res, 200, faults);
      }
      return send(res, 404, apiError('invalid_request_error', `no such route: ${req.method} ${path}`));
    };
    route().catch((error: unknown) => {
      if (!res.headersSent) send(res, 500, apiError('api_error', `simulator error: ${(error as Error).message}`));
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', resolve);
  });
  const address = server.address() as AddressInfo;
  return {
    url: `http://${options.host ?? '127.0.0.1'}:${address.port}`,
    stats: () => structuredClone(stats),
    setFaults(next) {
      faults = { ...faults, ...next };
      return faults;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
