/**
 * A payment provider simulator that behaves like an external system and speaks Stripe's wire
 * format, so that the official `stripe` SDK talks to it as to Stripe's test mode: its own
 * storage (the `payment_provider` schema, which survives the daemon's crashes), Stripe's
 * idempotency semantics, object shapes and errors, and fault knobs.
 *
 * The wire: form-encoded bodies (`metadata[return_id]=7`; JSON bodies are accepted too), a
 * bearer API key, JSON answers with a `request-id` header, errors as
 * `{ error: { type, code, message, param?, decline_code? } }`.
 *
 * Idempotency (as Stripe documents it): the first request with a key is recorded once it starts
 * executing; the same key with the same parameters replays the first answer, errors included
 * (`Idempotent-Replayed: true`); the same key with other parameters gets 400 `idempotency_error`;
 * a request whose key is still in flight gets 409. Requests rejected before executing (invalid
 * parameters, 429, 503, a 500 before anything started) save nothing. An effect is applied at most
 * once per key until the key expires: a key first used more than `keyLifetimeHours` ago (on the
 * simulator's clock, which tests can move) is forgotten, and a request with it runs as new.
 *
 * Endpoints: POST /v1/charges, POST /v1/refunds, GET /v1/charges/:id, GET /v1/refunds/:id,
 * GET /v1/charges/search (`metadata['k']:'v'` terms, joined by AND; eventually consistent:
 * `searchLagMs`), GET /v1/refunds (`charge`, `limit`, `starting_after`; consistent), and the
 * simulator's own: GET /v1/ledger, GET /v1/_simulator/stats, POST /v1/_simulator/faults,
 * POST /v1/_simulator/clock.
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
  /** Share of requests answered 500 before anything is applied (nothing saved: a retry runs anew). */
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
  /**
   * Share of requests answered 500 with that answer saved under their key: every later request
   * with the key gets the same 500 (`Idempotent-Replayed: true`) until the key expires.
   */
  savedErrorRate: number;
  /** Of those saved 500s, the share that applied the effect before answering. */
  savedErrorAppliedShare: number;
  /** An effect shows in search results only this long after it was created (simulator clock). Retrieving and listing are consistent. */
  searchLagMs: number;
  /** A key first used longer ago than this (simulator clock) is forgotten: a request with it runs as new. */
  keyLifetimeHours: number;
  /** The Search API is missing (404 on /v1/charges/search and the refund list), as at a provider without one: lookups cannot be answered. */
  searchUnsupported: boolean;
}

/** The payment method whose charges the simulator always declines, as Stripe's test card of that name is. */
export const DECLINED_PAYMENT_METHOD = 'pm_card_chargeDeclined';
/** Its token twin, as Stripe's test tokens name it. */
export const DECLINED_TOKEN = 'tok_chargeDeclined';
/** Charges with this payment method (or `tok_refundFail`) succeed; every refund of them is declined, as Stripe's test card of that name fails refunds. */
export const REFUND_FAILS_PAYMENT_METHOD = 'pm_card_refundFail';

/** How long an idle keep-alive connection stays open (see the server's `keepAliveTimeout`). */
const IDLE_CONNECTION_MS = 10 * 60_000;
const DECLINED_SOURCES = new Set([DECLINED_PAYMENT_METHOD, DECLINED_TOKEN]);
const REFUND_FAILS_SOURCES = new Set([REFUND_FAILS_PAYMENT_METHOD, 'tok_refundFail']);

export const NO_FAULTS: SimulatorFaults = {
  latencyMs: [0, 0],
  errorRate: 0,
  timeoutRate: 0,
  declineRate: 0,
  rateLimitRate: 0,
  unavailableRate: 0,
  retryAfter: '',
  savedErrorRate: 0,
  savedErrorAppliedShare: 0.5,
  searchLagMs: 0,
  keyLifetimeHours: 24,
  searchUnsupported: false,
};

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
  /** POSTs to /v1/charges and /v1/refunds with valid parameters, whatever their answer. */
  posts: number;
  applied: number;
  replayed: number;
  declined: number;
  /** Answers 400 (a key reused with other parameters) and 409 (the key's request in flight). */
  conflicts: number;
  /** POSTs whose key had been first used longer ago than `keyLifetimeHours`: forgotten, so run as new. A correct caller makes none. */
  expiredKeyReuses: number;
  /**
   * POSTs with a new idempotency key for an `intent_key` whose other key has a request in flight
   * or applied an effect: a new key version while the old one could still apply. A correct caller makes none.
   */
  overlappingKeys: number;
  /** 500s saved under their key (`savedErrorRate`); their replays count in `replayed`. */
  savedErrors: number;
  /** GET /v1/charges/search. */
  searches: number;
  /** GET /v1/charges/:id and /v1/refunds/:id. */
  retrieves: number;
  /** GET /v1/refunds. */
  lists: number;
  faults: { errors: number; timeouts: number; rateLimited: number; unavailable: number };
}

export interface LedgerEntry {
  id: string;
  kind: 'charge' | 'refund';
  amount: number;
  currency: string;
  idempotencyKey: string;
  /** Metadata `return_id` ('' when none): what the audit joins on. */
  returnId: string;
  /** Metadata `intent_key`, null when none. */
  intentKey: string | null;
  /** Refunds: the charge refunded. */
  charge: string | null;
  createdAt: string;
}

/** A request that carried a W3C `traceparent` header: how a test joins the provider's side of a trace to the caller's span. */
export interface TracedRequest {
  method: string;
  path: string;
  traceparent: string;
  tracestate?: string;
  idempotencyKey?: string;
  at: string;
}

/** The traced requests the simulator keeps, newest last; older ones are dropped beyond this. */
const TRACED_REQUESTS_KEPT = 10_000;

export interface RunningSimulator {
  url: string;
  stats(): SimulatorStats;
  /** The requests that carried a `traceparent` (also `GET /v1/_simulator/traceparents`). */
  tracedRequests(): TracedRequest[];
  setFaults(faults: Partial<SimulatorFaults>): SimulatorFaults;
  /** Moves the simulator's clock forward (cumulative); resolves to the offset from real time, in seconds. */
  advanceClock(seconds: number): Promise<number>;
  close(): Promise<void>;
}

/** Creates the simulator's own tables, and brings older ones up to date (idempotent). */
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
  // The request's intent (overlapping key versions), and who holds an in-flight claim (only that holder may apply).
  await queryRows(db, sql`ALTER TABLE payment_provider.requests ADD COLUMN IF NOT EXISTS intent_key text, ADD COLUMN IF NOT EXISTS claim_token text`);
  await queryRows(
    db,
    sql`ALTER TABLE payment_provider.effects ADD COLUMN IF NOT EXISTS intent_key text, ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
          ADD COLUMN IF NOT EXISTS charge text, ADD COLUMN IF NOT EXISTS amount_refunded int NOT NULL DEFAULT 0, ADD COLUMN IF NOT EXISTS source text`,
  );
  // A forgotten (expired) key may apply again, as at Stripe: one effect per key is the requests' claim's to keep, not a constraint's.
  await queryRows(db, sql`ALTER TABLE payment_provider.effects DROP CONSTRAINT IF EXISTS effects_idempotency_key_key`);
  await queryRows(db, sql`CREATE INDEX IF NOT EXISTS effects_by_key ON payment_provider.effects (idempotency_key)`);
  await queryRows(db, sql`CREATE INDEX IF NOT EXISTS effects_by_intent ON payment_provider.effects (intent_key)`);
  await queryRows(db, sql`CREATE INDEX IF NOT EXISTS effects_by_charge ON payment_provider.effects (charge, created_at) WHERE charge IS NOT NULL`);
  await queryRows(db, sql`CREATE INDEX IF NOT EXISTS requests_by_intent ON payment_provider.requests (intent_key) WHERE intent_key IS NOT NULL`);
  // The simulator's clock: an offset from real time that tests move forward, kept across restarts.
  await queryRows(db, sql`CREATE TABLE IF NOT EXISTS payment_provider.clock (id int PRIMARY KEY CHECK (id = 1), offset_ms bigint NOT NULL DEFAULT 0)`);
  await queryRows(db, sql`INSERT INTO payment_provider.clock (id, offset_ms) VALUES (1, 0) ON CONFLICT (id) DO NOTHING`);
}

/** Every effect applied, oldest first. */
export async function readLedger(db: Db): Promise<LedgerEntry[]> {
  const rows = await queryRows<{ id: string; kind: 'charge' | 'refund'; amount: number; currency: string; idempotency_key: string; return_id: string | null; intent_key: string | null; charge: string | null; created_at: string }>(
    db,
    sql`SELECT id, kind, amount, currency, idempotency_key, return_id, intent_key, charge, created_at::text FROM payment_provider.effects ORDER BY created_at, id`,
  );
  return rows.map((r) => ({
    id: r.id,
    kind: r.kind,
    amount: Number(r.amount),
    currency: r.currency,
    idempotencyKey: r.idempotency_key,
    returnId: r.return_id ?? '',
    intentKey: r.intent_key,
    charge: r.charge,
    createdAt: r.created_at,
  }));
}

/** A fault setting's problem, or undefined when `faults` may be set. */
export function faultsProblem(faults: Partial<SimulatorFaults>): string | undefined {
  for (const name of ['errorRate', 'timeoutRate', 'declineRate', 'rateLimitRate', 'unavailableRate', 'savedErrorRate', 'savedErrorAppliedShare'] as const) {
    const value = faults[name];
    if (value !== undefined && !(typeof value === 'number' && value >= 0 && value <= 1)) return `${name} must be a share between 0 and 1`;
  }
  const latency = faults.latencyMs;
  if (latency !== undefined && !(Array.isArray(latency) && latency.length === 2 && latency.every((n) => Number.isFinite(n) && n >= 0) && latency[0] <= latency[1])) {
    return 'latencyMs must be [low, high] in ms';
  }
  if (faults.searchLagMs !== undefined && !(Number.isInteger(faults.searchLagMs) && faults.searchLagMs >= 0)) return 'searchLagMs must be a whole number of ms, 0 or more';
  if (faults.keyLifetimeHours !== undefined && !(typeof faults.keyLifetimeHours === 'number' && faults.keyLifetimeHours > 0)) return 'keyLifetimeHours must be a positive number of hours';
  if (faults.retryAfter !== undefined && typeof faults.retryAfter !== 'string') return 'retryAfter must be a string';
  if (faults.searchUnsupported !== undefined && typeof faults.searchUnsupported !== 'boolean') return 'searchUnsupported must be true or false';
  return undefined;
}

interface StripeErrorBody {
  error: { type: string; message: string; code?: string; param?: string; decline_code?: string };
}

const apiError = (type: string, message: string, extra: { code?: string; param?: string; decline_code?: string } = {}): StripeErrorBody => ({ error: { type, message, ...extra } });
const missing = (what: string, id: string, param = 'id') => apiError('invalid_request_error', `No such ${what}: '${id}'`, { code: 'resource_missing', param });

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'request-id': `req_${randomBytes(7).toString('hex')}`, ...headers });
  res.end(text);
}

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

/** Form fields with Stripe's bracket nesting (`metadata[return_id]=7`, `expand[0]=x`) as an object. */
export function parseForm(params: URLSearchParams): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, value] of params) {
    const match = /^([^[\]]+)((?:\[[^[\]]*\])*)$/.exec(name);
    if (!match) continue;
    const path = [match[1]!, ...[...match[2]!.matchAll(/\[([^[\]]*)\]/g)].map((m) => m[1]!)];
    let node = out;
    for (const [i, segment] of path.entries()) {
      if (i === path.length - 1) node[segment] = value;
      else node = (node[segment] = typeof node[segment] === 'object' && node[segment] !== null ? node[segment] : {}) as Record<string, unknown>;
    }
  }
  return out;
}

/** The body of a POST: form-encoded as Stripe takes it, or JSON (older clients). */
async function readParams(req: IncomingMessage): Promise<Record<string, unknown>> {
  const text = await readBody(req);
  if (/^application\/json/i.test(req.headers['content-type'] ?? '')) {
    const body = JSON.parse(text) as unknown;
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new Error('the body must be an object');
    return body as Record<string, unknown>;
  }
  return parseForm(new URLSearchParams(text));
}

interface EffectParams {
  amount: number | undefined;
  currency: string | undefined;
  customer: string | undefined;
  source: string | undefined;
  charge: string | undefined;
  metadata: Record<string, string>;
}

type Invalid = { invalid: StripeErrorBody };

function positiveInteger(value: unknown, param: string): number | Invalid | undefined {
  if (value === undefined) return undefined;
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n <= 0) return { invalid: apiError('invalid_request_error', `Invalid positive integer: ${param}`, { code: 'parameter_invalid_integer', param }) };
  return n;
}

const optionalString = (value: unknown) => (typeof value === 'string' && value !== '' ? value : undefined);

/** A POST's parameters, checked as Stripe checks them before executing (nothing is saved for a request rejected here). */
function effectParams(kind: 'charge' | 'refund', body: Record<string, unknown>): EffectParams | Invalid {
  const amount = positiveInteger(body.amount, 'amount');
  if (typeof amount === 'object') return amount;
  const metadata: Record<string, string> = {};
  if (body.metadata !== undefined && body.metadata !== '') {
    if (typeof body.metadata !== 'object' || body.metadata === null || Array.isArray(body.metadata)) return { invalid: apiError('invalid_request_error', 'Invalid object', { code: 'parameter_invalid_object', param: 'metadata' }) };
    for (const [name, value] of Object.entries(body.metadata)) metadata[name] = String(value);
  }
  const params: EffectParams = {
    amount,
    currency: optionalString(body.currency)?.toLowerCase(),
    customer: optionalString(body.customer),
    source: optionalString(body.source) ?? optionalString(body.payment_method),
    charge: optionalString(body.charge),
    metadata,
  };
  if (kind === 'charge') {
    if (params.amount === undefined) return { invalid: apiError('invalid_request_error', 'Missing required param: amount.', { code: 'parameter_missing', param: 'amount' }) };
    if (params.currency === undefined) return { invalid: apiError('invalid_request_error', 'Missing required param: currency.', { code: 'parameter_missing', param: 'currency' }) };
    if (!/^[a-z]{3}$/.test(params.currency)) return { invalid: apiError('invalid_request_error', `Invalid currency: ${params.currency}.`, { code: 'parameter_invalid_string', param: 'currency' }) };
  } else if (params.charge === undefined) {
    return { invalid: apiError('invalid_request_error', 'Missing required param: charge.', { code: 'parameter_missing', param: 'charge' }) };
  }
  return params;
}

interface EffectRow {
  id: string;
  kind: 'charge' | 'refund';
  amount: number;
  amount_refunded: number;
  currency: string;
  customer: string | null;
  source: string | null;
  charge: string | null;
  metadata: Record<string, string> | null;
  status: string;
  created_ms: number;
}

const effectColumns = sql`id, kind, amount, amount_refunded, currency, nullif(customer, '') AS customer, source, charge,
  CASE WHEN metadata = '{}'::jsonb AND coalesce(return_id, '') <> '' THEN jsonb_build_object('return_id', return_id) ELSE metadata END AS metadata,
  'succeeded' AS status, (extract(epoch FROM created_at) * 1000)::float8 AS created_ms`;

/** A charge or refund as Stripe shows it. */
function stripeObject(row: EffectRow): Record<string, unknown> {
  const created = Math.floor(Number(row.created_ms) / 1_000);
  const amount = Number(row.amount);
  if (row.kind === 'refund') {
    return { id: row.id, object: 'refund', amount, balance_transaction: null, charge: row.charge, created, currency: row.currency, metadata: row.metadata ?? {}, payment_intent: null, reason: null, status: row.status };
  }
  const refunded = Number(row.amount_refunded);
  return {
    id: row.id,
    object: 'charge',
    amount,
    amount_captured: amount,
    amount_refunded: refunded,
    balance_transaction: null,
    captured: true,
    created,
    currency: row.currency,
    customer: row.customer,
    description: null,
    livemode: false,
    metadata: row.metadata ?? {},
    paid: true,
    payment_method: row.source,
    refunded: refunded >= amount,
    status: row.status,
  };
}

/** The terms of a search query `metadata['k']:'v' AND …`, or undefined for any other form. */
export function parseSearchQuery(query: string): Record<string, string> | undefined {
  const terms: Record<string, string> = {};
  for (const term of query.trim().split(/\s+AND\s+/)) {
    const match = /^metadata\[(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\]:(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")$/.exec(term.trim());
    if (!match) return undefined;
    const unescape = (s: string) => s.replace(/\\(.)/g, '$1');
    terms[unescape(match[1] ?? match[2]!)] = unescape(match[3] ?? match[4]!);
  }
  return Object.keys(terms).length > 0 ? terms : undefined;
}

function listLimit(value: string | null): number | Invalid {
  if (value === null) return 10;
  const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!(n >= 1 && n <= 100)) return { invalid: apiError('invalid_request_error', 'Invalid limit: must be an integer between 1 and 100', { code: 'parameter_invalid_integer', param: 'limit' }) };
  return n;
}

/** The response of a request still in flight, or an expired key taken over: nothing applied under this claim. */
class ClaimLost extends Error {}

export async function startSimulator(options: SimulatorOptions): Promise<RunningSimulator> {
  const { db, apiKey } = options;
  await prepareSimulatorStorage(db);
  const initial = { ...NO_FAULTS, ...options.faults };
  const problem = faultsProblem(initial);
  if (problem) throw new Error(`invalid simulator faults: ${problem}`);
  let faults: SimulatorFaults = initial;
  const roll = dice(options.seed ?? Date.now());
  const stats: SimulatorStats = {
    posts: 0,
    applied: 0,
    replayed: 0,
    declined: 0,
    conflicts: 0,
    expiredKeyReuses: 0,
    overlappingKeys: 0,
    savedErrors: 0,
    searches: 0,
    retrieves: 0,
    lists: 0,
    faults: { errors: 0, timeouts: 0, rateLimited: 0, unavailable: 0 },
  };
  const [clockRow] = await queryRows<{ offset_ms: string }>(db, sql`SELECT offset_ms::text FROM payment_provider.clock WHERE id = 1`);
  let offsetMs = Number(clockRow?.offset_ms ?? 0);
  /** The simulator's clock: real time plus the offset tests added. */
  const now = () => new Date(Date.now() + offsetMs);
  const keyExpiredBefore = (at: Date) => new Date(at.getTime() - faults.keyLifetimeHours * 3_600_000).toISOString();

  const findEffect = async (kind: 'charge' | 'refund', id: string): Promise<EffectRow | undefined> =>
    (await queryRows<EffectRow>(db, sql`SELECT ${effectColumns} FROM payment_provider.effects WHERE id = ${id} AND kind = ${kind}`))[0];

  const effect = async (kind: 'charge' | 'refund', endpoint: string, req: IncomingMessage, res: ServerResponse) => {
    const key = req.headers['idempotency-key'];
    if (typeof key !== 'string' || key === '') return send(res, 400, apiError('invalid_request_error', 'an Idempotency-Key header is required by this simulator'));
    const echo = { 'idempotency-key': key };
    let body: Record<string, unknown>;
    try {
      body = await readParams(req);
    } catch {
      return send(res, 400, apiError('invalid_request_error', 'the body must be form-encoded parameters (or a JSON object)'), echo);
    }
    const params = effectParams(kind, body);
    if ('invalid' in params) return send(res, 400, params.invalid, echo);
    if (kind === 'refund') {
      const charge = await findEffect('charge', params.charge!);
      if (!charge) return send(res, 404, missing('charge', params.charge!, 'charge'), echo);
    }
    stats.posts++;
    const at = now();
    const intentKey = params.metadata.intent_key ?? null;
    // What this POST says about its caller: a forgotten key reused, or a new key version while another could still apply.
    const [seen] = await queryRows<{ expired: boolean | null; overlapping: boolean }>(
      db,
      sql`SELECT (SELECT created_at < ${keyExpiredBefore(at)}::timestamptz FROM payment_provider.requests WHERE idempotency_key = ${key}) AS expired,
                 (${intentKey}::text IS NOT NULL AND (
                    EXISTS (SELECT 1 FROM payment_provider.requests WHERE intent_key = ${intentKey} AND idempotency_key <> ${key} AND state = 'in_flight')
                    OR EXISTS (SELECT 1 FROM payment_provider.effects WHERE intent_key = ${intentKey} AND idempotency_key <> ${key}))) AS overlapping`,
    );
    if (seen?.expired === true) stats.expiredKeyReuses++;
    if (seen?.expired !== false && seen?.overlapping) stats.overlappingKeys++;

    const comeBack: Record<string, string> = faults.retryAfter ? { 'retry-after': faults.retryAfter } : {};
    if (roll() < faults.rateLimitRate) {
      stats.faults.rateLimited++;
      return send(res, 429, apiError('rate_limit_error', 'Too many requests hit the API too quickly (simulated).', { code: 'rate_limit' }), { ...echo, ...comeBack });
    }
    // Rolled only when set, so that the dice of a seed replay as before for the other faults.
    if (faults.unavailableRate > 0 && roll() < faults.unavailableRate) {
      stats.faults.unavailable++;
      return send(res, 503, apiError('api_error', 'service unavailable before anything was applied (simulated)'), { ...echo, ...comeBack });
    }
    if (roll() < faults.errorRate) {
      stats.faults.errors++;
      return send(res, 500, apiError('api_error', 'internal error before anything was applied (simulated)'), echo);
    }
    const hash = createHash('sha256')
      .update(JSON.stringify([endpoint, params.amount ?? null, params.currency ?? null, params.customer ?? null, params.source ?? null, params.charge ?? null, Object.entries(params.metadata).sort()]))
      .digest('hex');
    const token = randomBytes(9).toString('hex');
    const claim = await claimKey(key, endpoint, hash, intentKey, token, at);
    if (claim) return send(res, claim.status, claim.body, { ...echo, ...claim.headers });

    try {
      const [low, high] = faults.latencyMs;
      if (high > 0) await new Promise((resolve) => setTimeout(resolve, low + (high - low) * roll()));
      // Saved 500s are rolled only when set, so that the dice of a seed replay as before for the other faults.
      const savedError = faults.savedErrorRate > 0 && roll() < faults.savedErrorRate;
      const savedErrorApplies = savedError && roll() < faults.savedErrorAppliedShare;
      let declined = false;
      if (!savedError) {
        const charge = kind === 'refund' ? await findEffect('charge', params.charge!) : undefined;
        // Stripe's test cards: one whose charges are declined, one whose refunds fail; then the dice.
        declined = (params.source !== undefined && DECLINED_SOURCES.has(params.source)) || (charge?.source != null && REFUND_FAILS_SOURCES.has(charge.source)) || roll() < faults.declineRate;
      }
      const answer = declined
        ? await save(key, token, 402, apiError('card_error', `Your card was declined (simulated${kind === 'refund' ? ': the refund failed' : ''}).`, { code: 'card_declined', decline_code: 'generic_decline' }))
        : savedError && !savedErrorApplies
          ? await save(key, token, 500, apiError('api_error', 'internal error, saved under this idempotency key; nothing was applied (simulated)'))
          : await apply(kind, key, token, params, at, savedError);
      if (declined) stats.declined++;
      if (answer.status === 500) stats.savedErrors++;
      if (answer.applied) {
        stats.applied++;
        if (roll() < faults.timeoutRate) {
          stats.faults.timeouts++;
          res.socket?.destroy(); // applied, but the caller never hears of it
          return;
        }
      }
      send(res, answer.status, answer.body, echo);
    } catch (error) {
      // Nothing was applied under this claim (applying and saving the answer are one transaction): free the key for a retry.
      await queryRows(db, sql`DELETE FROM payment_provider.requests WHERE idempotency_key = ${key} AND claim_token = ${token} AND state = 'in_flight'`).catch(() => undefined);
      if (error instanceof ClaimLost) {
        stats.conflicts++;
        return send(res, 409, apiError('idempotency_error', 'There is currently another in-progress request using this idempotency key; retry later.', { code: 'idempotency_key_in_use' }), echo);
      }
      throw error;
    }
  };

  /** Claims the key for this request (undefined), or the answer it gets instead: a replay, a conflict. */
  const claimKey = async (key: string, endpoint: string, hash: string, intentKey: string | null, token: string, at: Date): Promise<{ status: number; body: unknown; headers?: Record<string, string> } | undefined> => {
    const claimed = await queryRows(
      db,
      sql`INSERT INTO payment_provider.requests (idempotency_key, endpoint, params_hash, state, intent_key, claim_token, created_at)
          VALUES (${key}, ${endpoint}, ${hash}, 'in_flight', ${intentKey}, ${token}, ${at.toISOString()}::timestamptz)
          ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key`,
    );
    if (claimed.length > 0) return undefined;
    const inProgress = { status: 409, body: apiError('idempotency_error', 'There is currently another in-progress request using this idempotency key; retry later.', { code: 'idempotency_key_in_use' }) };
    const [seen] = await queryRows<{ endpoint: string; params_hash: string; state: string; status_code: number | null; response: unknown; expired: boolean; stale: boolean }>(
      db,
      sql`SELECT endpoint, params_hash, state, status_code, response, created_at < ${keyExpiredBefore(at)}::timestamptz AS expired, updated_at < now() - interval '5 minutes' AS stale
          FROM payment_provider.requests WHERE idempotency_key = ${key}`,
    );
    if (!seen) {
      stats.conflicts++;
      return inProgress;
    }
    if (seen.expired) {
      // Forgotten: the request runs as new, whatever the key did before.
      const taken = await queryRows(
        db,
        sql`UPDATE payment_provider.requests SET endpoint = ${endpoint}, params_hash = ${hash}, state = 'in_flight', status_code = NULL, response = NULL,
                   intent_key = ${intentKey}, claim_token = ${token}, created_at = ${at.toISOString()}::timestamptz, updated_at = now()
            WHERE idempotency_key = ${key} AND created_at < ${keyExpiredBefore(at)}::timestamptz RETURNING 1`,
      );
      if (taken.length > 0) return undefined;
      stats.conflicts++;
      return inProgress;
    }
    if (seen.endpoint !== endpoint || seen.params_hash !== hash) {
      stats.conflicts++;
      return {
        status: 400,
        body: apiError(
          'idempotency_error',
          `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
          { code: 'idempotency_key_reused' },
        ),
      };
    }
    if (seen.state === 'done') {
      stats.replayed++;
      return { status: seen.status_code ?? 200, body: seen.response, headers: { 'idempotent-replayed': 'true' } };
    }
    // In flight: 409, unless the request that claimed it died long ago (a crashed simulator); then take it over. Its
    // claimant cannot have applied anything: applying and saving the answer are one transaction.
    const reclaimed = seen.stale
      ? await queryRows(
          db,
          sql`UPDATE payment_provider.requests SET claim_token = ${token}, updated_at = now()
              WHERE idempotency_key = ${key} AND state = 'in_flight' AND updated_at < now() - interval '5 minutes' RETURNING 1`,
        )
      : [];
    if (reclaimed.length > 0) return undefined;
    stats.conflicts++;
    return inProgress;
  };

  /** Saves the answer under the key, if this request still holds its claim. */
  const saveIn = async (t: Db, key: string, token: string, status: number, body: unknown): Promise<void> => {
    const done = await queryRows(
      t,
      sql`UPDATE payment_provider.requests SET state = 'done', status_code = ${status}, response = ${JSON.stringify(body)}::jsonb, updated_at = now()
          WHERE idempotency_key = ${key} AND claim_token = ${token} AND state = 'in_flight' RETURNING 1`,
    );
    if (done.length === 0) throw new ClaimLost();
  };

  const save = async (key: string, token: string, status: number, body: unknown) => {
    await saveIn(db, key, token, status, body);
    return { status, body, applied: false };
  };

  /**
   * Applies the effect and saves the answer, in one transaction: a refund locks its charge, so
   * that two refunds of one charge at once never both pass its remaining amount. With
   * `savedError`, the effect is applied and the answer saved is a 500.
   */
  const apply = (kind: 'charge' | 'refund', key: string, token: string, params: EffectParams, at: Date, savedError: boolean) =>
    db.transaction(async (tx) => {
      const t = tx as unknown as Db;
      let amount = params.amount!;
      let currency = params.currency!;
      let customer = params.customer ?? null;
      if (kind === 'refund') {
        const [charge] = await queryRows<{ amount: number; amount_refunded: number; currency: string; customer: string | null }>(
          t,
          sql`SELECT amount, amount_refunded, currency, nullif(customer, '') AS customer FROM payment_provider.effects WHERE id = ${params.charge!} AND kind = 'charge' FOR UPDATE`,
        );
        if (!charge) return { ...(await saveAnswer(t, key, token, 404, missing('charge', params.charge!, 'charge'))), applied: false };
        const remaining = Number(charge.amount) - Number(charge.amount_refunded);
        amount = params.amount ?? remaining;
        if (remaining <= 0) {
          return { ...(await saveAnswer(t, key, token, 400, apiError('invalid_request_error', `Charge ${params.charge!} has already been refunded.`, { code: 'charge_already_refunded', param: 'charge' }))), applied: false };
        }
        if (amount > remaining) {
          const message = `Refund amount (${amount}) is greater than unrefunded amount on charge (${remaining}).`;
          return { ...(await saveAnswer(t, key, token, 400, apiError('invalid_request_error', message, { code: 'amount_too_large', param: 'amount' }))), applied: false };
        }
        currency = charge.currency;
        customer = charge.customer;
        await queryRows(t, sql`UPDATE payment_provider.effects SET amount_refunded = amount_refunded + ${amount} WHERE id = ${params.charge!}`);
      }
      const id = `${kind === 'charge' ? 'ch' : 're'}_${randomBytes(12).toString('hex')}`;
      const row: EffectRow = {
        id,
        kind,
        amount,
        amount_refunded: 0,
        currency,
        customer,
        source: kind === 'charge' ? (params.source ?? null) : null,
        charge: kind === 'refund' ? params.charge! : null,
        metadata: params.metadata,
        status: 'succeeded',
        created_ms: at.getTime(),
      };
      await queryRows(
        t,
        sql`INSERT INTO payment_provider.effects (id, kind, amount, currency, idempotency_key, return_id, customer, intent_key, metadata, charge, source, created_at)
            VALUES (${id}, ${kind}, ${amount}, ${currency}, ${key}, ${params.metadata.return_id ?? ''}, ${customer ?? ''}, ${params.metadata.intent_key ?? null},
                    ${JSON.stringify(params.metadata)}::jsonb, ${row.charge}, ${row.source}, ${at.toISOString()}::timestamptz)`,
      );
      const answer = savedError ? { status: 500, body: apiError('api_error', 'internal error, saved under this idempotency key (simulated)') } : { status: 200, body: stripeObject(row) };
      await saveIn(t, key, token, answer.status, answer.body);
      return { ...answer, applied: true };
    });

  const saveAnswer = async (t: Db, key: string, token: string, status: number, body: unknown) => {
    await saveIn(t, key, token, status, body);
    return { status, body };
  };

  const search = async (url: URL, res: ServerResponse) => {
    stats.searches++;
    const query = url.searchParams.get('query');
    if (!query) return send(res, 400, apiError('invalid_request_error', 'Missing required param: query.', { code: 'parameter_missing', param: 'query' }));
    const terms = parseSearchQuery(query);
    if (!terms) {
      return send(res, 400, apiError('invalid_request_error', `This simulator searches only by metadata terms joined by AND, e.g. metadata['order_id']:'6735'; got: ${query.slice(0, 200)}`, { code: 'parameter_invalid_string', param: 'query' }));
    }
    const limit = listLimit(url.searchParams.get('limit'));
    if (typeof limit === 'object') return send(res, 400, limit.invalid);
    const page = url.searchParams.get('page');
    const offset = page ? Number(Buffer.from(page, 'base64url').toString('utf8')) : 0;
    if (!Number.isSafeInteger(offset) || offset < 0) return send(res, 400, apiError('invalid_request_error', 'Invalid page token.', { code: 'parameter_invalid_string', param: 'page' }));
    const visibleUntil = new Date(now().getTime() - faults.searchLagMs).toISOString();
    const rows = await queryRows<EffectRow>(
      db,
      sql`SELECT ${effectColumns} FROM payment_provider.effects
          WHERE kind = 'charge' AND metadata @> ${JSON.stringify(terms)}::jsonb AND created_at <= ${visibleUntil}::timestamptz
          ORDER BY created_at DESC, id DESC LIMIT ${limit + 1} OFFSET ${offset}`,
    );
    const hasMore = rows.length > limit;
    send(res, 200, {
      object: 'search_result',
      data: rows.slice(0, limit).map(stripeObject),
      has_more: hasMore,
      next_page: hasMore ? Buffer.from(String(offset + limit)).toString('base64url') : null,
      url: '/v1/charges/search',
    });
  };

  const listRefunds = async (url: URL, res: ServerResponse) => {
    stats.lists++;
    const limit = listLimit(url.searchParams.get('limit'));
    if (typeof limit === 'object') return send(res, 400, limit.invalid);
    const charge = url.searchParams.get('charge');
    const after = url.searchParams.get('starting_after');
    if (after && !(await findEffect('refund', after))) return send(res, 404, missing('refund', after, 'starting_after'));
    // Newest first, as Stripe lists; `starting_after` continues after that object.
    const rows = await queryRows<EffectRow>(
      db,
      sql`SELECT ${effectColumns} FROM payment_provider.effects
          WHERE kind = 'refund' AND (${charge}::text IS NULL OR charge = ${charge})
            AND (${after}::text IS NULL OR (created_at, id) < (SELECT created_at, id FROM payment_provider.effects WHERE id = ${after}))
          ORDER BY created_at DESC, id DESC LIMIT ${limit + 1}`,
    );
    send(res, 200, { object: 'list', data: rows.slice(0, limit).map(stripeObject), has_more: rows.length > limit, url: '/v1/refunds' });
  };

  const retrieve = async (kind: 'charge' | 'refund', id: string, res: ServerResponse) => {
    stats.retrieves++;
    const row = await findEffect(kind, id);
    if (!row) return send(res, 404, missing(kind, id));
    send(res, 200, stripeObject(row));
  };

  const traced: TracedRequest[] = [];
  const noteTrace = (req: IncomingMessage, path: string) => {
    const { traceparent, tracestate } = req.headers;
    if (typeof traceparent !== 'string') return;
    const key = req.headers['idempotency-key'];
    traced.push({ method: req.method ?? '', path, traceparent, ...(typeof tracestate === 'string' ? { tracestate } : {}), ...(typeof key === 'string' ? { idempotencyKey: key } : {}), at: now().toISOString() });
    if (traced.length > TRACED_REQUESTS_KEPT) traced.splice(0, traced.length - TRACED_REQUESTS_KEPT);
  };

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://simulator');
    const path = url.pathname;
    const route = async () => {
      if (req.method === 'GET' && path === '/healthz') return send(res, 200, { ok: true });
      // Never echo the key that was sent: it may be a real one, sent here by mistake.
      if (req.headers.authorization !== `Bearer ${apiKey}`) return send(res, 401, apiError('invalid_request_error', 'Invalid API Key provided.'));
      if (req.method === 'GET' && path === '/v1/_simulator/traceparents') return send(res, 200, { data: traced });
      noteTrace(req, path);
      if (req.method === 'POST' && path === '/v1/charges') return effect('charge', path, req, res);
      if (req.method === 'POST' && path === '/v1/refunds') return effect('refund', path, req, res);
      const lookup = req.method === 'GET' && (path === '/v1/charges/search' || path === '/v1/refunds');
      if (lookup && faults.searchUnsupported) return send(res, 404, apiError('invalid_request_error', `Unrecognized request URL (GET: ${path}) (simulated: no lookups)`));
      if (req.method === 'GET' && path === '/v1/charges/search') return search(url, res);
      if (req.method === 'GET' && path === '/v1/refunds') return listRefunds(url, res);
      const byId = req.method === 'GET' ? /^\/v1\/(charges|refunds)\/([^/]+)$/.exec(path) : null;
      if (byId) return retrieve(byId[1] === 'charges' ? 'charge' : 'refund', decodeURIComponent(byId[2]!), res);
      if (req.method === 'GET' && path === '/v1/ledger') return send(res, 200, { effects: await readLedger(db) });
      if (req.method === 'GET' && path === '/v1/_simulator/stats') return send(res, 200, { ...stats, faultSettings: faults, clockOffsetSeconds: offsetMs / 1_000 });
      if (req.method === 'POST' && path === '/v1/_simulator/faults') {
        const next = JSON.parse(await readBody(req)) as Partial<SimulatorFaults>;
        const wrong = faultsProblem(next);
        if (wrong) return send(res, 400, apiError('invalid_request_error', wrong));
        faults = { ...faults, ...next };
        return send(res, 200, faults);
      }
      if (req.method === 'POST' && path === '/v1/_simulator/clock') {
        const { advanceSeconds } = JSON.parse(await readBody(req)) as { advanceSeconds?: unknown };
        if (typeof advanceSeconds !== 'number' || !Number.isFinite(advanceSeconds) || advanceSeconds < 0) {
          return send(res, 400, apiError('invalid_request_error', 'advanceSeconds must be a number of seconds, 0 or more (the clock only moves forward)'));
        }
        return send(res, 200, { offsetSeconds: await advanceClock(advanceSeconds), now: now().toISOString() });
      }
      return send(res, 404, apiError('invalid_request_error', `Unrecognized request URL (${req.method}: ${path}).`));
    };
    route().catch((error: unknown) => {
      if (!res.headersSent) send(res, 500, apiError('api_error', `simulator error: ${(error as Error).message}`));
      else res.destroy();
    });
  });

  const advanceClock = async (seconds: number): Promise<number> => {
    const [row] = await queryRows<{ offset_ms: string }>(db, sql`UPDATE payment_provider.clock SET offset_ms = offset_ms + ${Math.round(seconds * 1_000)} WHERE id = 1 RETURNING offset_ms::text`);
    offsetMs = Number(row!.offset_ms);
    return offsetMs / 1_000;
  };

  // Idle connections stay open as long as a provider's edge keeps them. With Node's default of 5 s, the server closed
  // idle keep-alive sockets just as a busy client reused them: a reset that no fault setting asked for, which makes a
  // charge's outcome unknown. Dropped connections are the `timeoutRate` fault's to make.
  server.keepAliveTimeout = IDLE_CONNECTION_MS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', resolve);
  });
  const address = server.address() as AddressInfo;
  return {
    url: `http://${options.host ?? '127.0.0.1'}:${address.port}`,
    stats: () => structuredClone(stats),
    tracedRequests: () => structuredClone(traced),
    setFaults(next) {
      const wrong = faultsProblem(next);
      if (wrong) throw new Error(`invalid simulator faults: ${wrong}`);
      faults = { ...faults, ...next };
      return faults;
    },
    advanceClock,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
