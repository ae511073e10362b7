/**
 * The payment provider, as the settle-returns service sees it: a small interface, and its
 * implementation on the official `stripe` SDK (`StripePaymentProvider`): charges and refunds
 * with our `Idempotency-Key`, lookups by metadata `intent_key`, against Stripe's test mode or
 * the example's simulator, which speaks the same wire format.
 *
 * Every failure is classified, because the caller's next step depends on it:
 * - `declined`: a definite "no" (402). Final.
 * - `retryable`: the effect may or may not have happened (timeout, reset, 408, 5xx), or the
 *   provider asks us to come back (409 request in progress, 425, 429). Retry with the same key;
 *   a 429 or 503 may say when (`Retry-After`), which the error carries as `retryAfter`, the
 *   engine's hint: the item is retried then instead of after its backoff.
 * - `permanent`: the request itself is wrong (400 such as a key reused with other parameters,
 *   401, 403, 404, 422). Retrying the same request cannot help.
 */
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import Stripe from 'stripe';
import type { ReconcileContext, RetryAfter } from 'reconciler';
import { DEFAULT_SEARCH_LAG_MS, loadProviderConfig } from './config.js';
import { startDemoSimulator } from './demo-provider.js';

export type EffectKind = 'charge' | 'refund';

export interface EffectRequest {
  kind: EffectKind;
  /** The current key version's key, `return:<public id>:<kind>:v<n>`: sent as `Idempotency-Key`. */
  idempotencyKey: string;
  /** The intent, whatever its key version: `return:<public id>:<kind>`, sent as metadata `intent_key` (what a lookup searches for). */
  intentKey: string;
  /** In the currency's minor units (ISO 4217 exponent). */
  amountMinor: number;
  /** ISO 4217, upper case (sent lower case, as Stripe writes it). */
  currency: string;
  /** The provider's customer, `cus_…`. */
  customer: string;
  /** Charges: what to charge (sent as `source`). */
  paymentMethod: string;
  /** Refunds: the charge refunded (`ch_…`), as the provider requires. */
  charge?: string;
  /** Sent as metadata with the request, besides `intent_key` and `idempotency_key`: `return_id`, `return_public_id`. */
  metadata: Record<string, string>;
}

/** An effect at the provider, as an answer or a lookup shows it. */
export interface Effect {
  /** The provider's id, `ch_…` or `re_…`. */
  id: string;
  kind: EffectKind;
  amountMinor: number;
  /** ISO 4217, upper case. */
  currency: string;
  /** `succeeded`, `pending`, `failed`, … as the provider says. */
  status: string;
  /** Its metadata `intent_key` and `idempotency_key`, when it carries them. */
  intentKey?: string;
  idempotencyKey?: string;
  /** Refunds: the charge refunded. */
  charge?: string;
  /** When the provider created it (ms since the epoch, the provider's clock). */
  createdAt: number;
}

export interface EffectResult extends Effect {
  /** The provider answered from its idempotency record (`Idempotent-Replayed: true`): the first answer to this key. */
  replayed: boolean;
}

/** What `find` asks for: the effects of one intent, whatever key version created them. */
export interface LookupRequest {
  kind: EffectKind;
  intentKey: string;
  /** Refunds: the charge whose refunds are listed. */
  charge?: string;
}

export interface PaymentProvider {
  charge(request: EffectRequest, signal: AbortSignal): Promise<EffectResult>;
  refund(request: EffectRequest, signal: AbortSignal): Promise<EffectResult>;
  /**
   * The effects the provider holds for an intent (any key version): charges through the Search
   * API (`metadata['intent_key']:'…'`, eventually consistent: an effect may show only
   * `searchLagMs` after it was created), refunds by listing the refunds of their charge
   * (consistent). Undefined when the provider has no such API (404 on search): it cannot
   * answer lookups. Throws a ProviderError when it could not answer now.
   */
  find(request: LookupRequest, signal: AbortSignal): Promise<Effect[] | undefined>;
  /** One effect by the provider's id (`GET /v1/charges/:id`, `GET /v1/refunds/:id`); a ProviderError with status 404 when there is none. */
  retrieve(kind: EffectKind, id: string, signal: AbortSignal): Promise<Effect>;
  /** How long after an effect is created a search may still miss it: an absence counts only for searches made that long after the key could last apply. */
  readonly searchLagMs: number;
}

export type ProviderFailure = 'declined' | 'retryable' | 'permanent';

export class ProviderError extends Error {
  override name = 'ProviderError';
  constructor(
    message: string,
    readonly failure: ProviderFailure,
    readonly status: number | undefined,
    /** False when the request cannot have reached the provider (the connection was refused): nothing happened there. */
    readonly sent = true,
    /** When the provider asked us to come back (a 429's or 503's `Retry-After`); the engine retries the item then. */
    readonly retryAfter?: RetryAfter,
    /** The provider answered from its idempotency record (`Idempotent-Replayed: true`): a saved error, replayed. */
    readonly replayed = false,
    /** The provider's error code (`card_declined`, `idempotency_key_in_use`, …). */
    readonly code?: string,
  ) {
    super(message);
  }
}

/**
 * A `Retry-After` header: delay-seconds (`120`) as milliseconds, or an HTTP-date
 * (`Wed, 21 Oct 2026 07:28:00 GMT`) as that time; undefined when absent or malformed.
 */
export function parseRetryAfter(header: string | null): RetryAfter | undefined {
  const value = header?.trim();
  if (!value) return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1_000;
  // An HTTP-date starts with the day's name (IMF-fixdate, RFC 850, asctime); Date.parse alone would take `1.5` for a date.
  const at = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*,? /.test(value) ? Date.parse(value) : Number.NaN;
  return Number.isNaN(at) ? undefined : new Date(at);
}

/** Socket errors that mean no connection was made: the request was never sent. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/** Node's code for the SDK's own time limit (`HttpClient.TIMEOUT_ERROR_CODE`). */
const TIMED_OUT = 'ETIMEDOUT';

/** What the SDK retries once even with `maxNetworkRetries: 0` (`HttpClient.CONNECTION_CLOSED_ERROR_CODES`). */
const CONNECTION_CLOSED = new Set(['ECONNRESET', 'EPIPE']);

export interface StripeProviderOptions {
  /**
   * The API's origin: `https://api.stripe.com` (Stripe's test mode with an `sk_test_…` key), or
   * the simulator's `http://127.0.0.1:4010`. The SDK takes a host, port and protocol, so the URL
   * may not have a path.
   */
  baseUrl: string;
  apiKey: string;
  /** Time limit of one request (the SDK's `timeout`). */
  timeoutMs: number;
  /** How long after an effect is created a search may still miss it (default 60 s: Stripe says "usually within a minute"). */
  searchLagMs?: number;
}

function classify(status: number): ProviderFailure {
  if (status === 402) return 'declined';
  // 408 request timeout, 409 in progress, 425 too early, 429 rate limited, 5xx: the outcome is unknown or the provider asks us back.
  if (status === 408 || status === 409 || status === 425 || status === 429 || status >= 500) return 'retryable';
  return 'permanent';
}

/** The host, port and protocol the SDK takes, from a base URL; throws one line when it has a path the SDK cannot send to. */
export function stripeEndpoint(baseUrl: string): { host: string; port: number; protocol: 'http' | 'https' } {
  const url = new URL(baseUrl);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`the payment provider's URL must be http(s), not ${url.protocol}`);
  if (url.pathname.replace(/\/+$/, '') !== '' || url.search || url.hash) throw new Error("the payment provider's URL must be an origin without a path (the SDK adds /v1/…), e.g. https://api.stripe.com");
  const protocol = url.protocol === 'http:' ? 'http' : 'https';
  return { host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port: url.port ? Number(url.port) : protocol === 'https' ? 443 : 80, protocol };
}

/**
 * The SDK's Node HTTP client, except that a connection closed mid-request (ECONNRESET, EPIPE)
 * surfaces instead of being retried once, which the SDK does even with `maxNetworkRetries: 0`:
 * we own the retries (with the intent's key, when the engine says so).
 */
function ownRetriesHttpClient(): Stripe.HttpClient {
  const inner = Stripe.createNodeHttpClient();
  return {
    getClientName: () => inner.getClientName(),
    makeRequest: (host, port, path, method, headers, requestData, protocol, timeout) =>
      tracedRequest({ host, port, path, method, protocol }, headers, (sent) =>
        inner.makeRequest(host, port, path, method, sent, requestData, protocol, timeout).catch((error: unknown) => {
          const code = (error as { code?: unknown } | undefined)?.code;
          if (typeof code === 'string' && CONNECTION_CLOSED.has(code)) throw Object.assign(new Error((error as Error).message, { cause: error }), { code: 'CONNECTION_CLOSED', socketCode: code });
          throw error;
        }),
      ),
  };
}

const tracer = trace.getTracer('reconciler-returns-example');

/**
 * One request to the provider as an OpenTelemetry client span (the HTTP semantic conventions),
 * a child of the item being reconciled, with its W3C `traceparent` in the request's headers: the
 * provider's side of the trace joins ours. While tracing is off (no SDK registered), the tracer
 * and the propagator are OpenTelemetry's no-ops and nothing is added.
 */
function tracedRequest(
  target: { host: string; port: string | number; path: string; method: string; protocol: string },
  headers: Record<string, string | number | string[]>,
  send: (headers: Record<string, string | number | string[]>) => Promise<Stripe.HttpClientResponse>,
): Promise<Stripe.HttpClientResponse> {
  const path = target.path.split('?')[0]!; // the query (a search's terms) stays out of the span
  const span = tracer.startSpan(target.method, {
    kind: SpanKind.CLIENT,
    attributes: { 'http.request.method': target.method, 'server.address': target.host, 'server.port': Number(target.port), 'url.full': `${target.protocol}://${target.host}:${target.port}${path}`, 'url.path': path },
  });
  const sent = { ...headers };
  propagation.inject(trace.setSpan(context.active(), span), sent);
  return send(sent).then(
    (response) => {
      const status = response.getStatusCode();
      span.setAttribute('http.response.status_code', status);
      if (status >= 400) {
        span.setAttribute('error.type', String(status));
        span.setStatus({ code: SpanStatusCode.ERROR });
      }
      span.end();
      return response;
    },
    (error: unknown) => {
      const code = (error as { code?: unknown } | undefined)?.code;
      span.setAttribute('error.type', typeof code === 'string' ? code : ((error as Error | undefined)?.name ?? 'Error'));
      span.setStatus({ code: SpanStatusCode.ERROR }); // no message: the engine's item span carries the error, scrubbed of secrets
      span.end();
      throw error;
    },
  );
}

/** A charge or refund as an Effect: currency upper case, `created` (seconds) in ms, the intent and key from its metadata. */
function effectOf(kind: EffectKind, object: { id: string; amount: number; currency: string; status: string | null; metadata: Stripe.Metadata | null; created: number }): Effect {
  return {
    id: object.id,
    kind,
    amountMinor: object.amount,
    currency: object.currency.toUpperCase(),
    status: object.status ?? 'unknown',
    intentKey: object.metadata?.intent_key,
    idempotencyKey: object.metadata?.idempotency_key,
    createdAt: (object.created ?? 0) * 1_000,
  };
}

const chargeEffect = (charge: Stripe.Charge): Effect => effectOf('charge', charge);
const refundEffect = (refund: Stripe.Refund): Effect => ({ ...effectOf('refund', refund), charge: typeof refund.charge === 'string' ? refund.charge : refund.charge?.id });

/** A search query's value, quoted as Stripe's search syntax takes it. */
const quoted = (value: string) => `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;

/**
 * The payment provider through the official `stripe` SDK: Stripe itself (test mode), or the
 * simulator, which speaks the same wire format. The SDK's own retries are off: an unknown
 * outcome goes back to the caller, which retries with the same key when the engine says so.
 */
export class StripePaymentProvider implements PaymentProvider {
  readonly searchLagMs: number;
  readonly #stripe: Stripe;
  readonly #apiKey: string;
  readonly #timeoutMs: number;

  constructor(options: StripeProviderOptions) {
    this.#apiKey = options.apiKey;
    this.#timeoutMs = options.timeoutMs;
    this.searchLagMs = options.searchLagMs ?? DEFAULT_SEARCH_LAG_MS;
    this.#stripe = new Stripe(options.apiKey, {
      ...stripeEndpoint(options.baseUrl),
      maxNetworkRetries: 0,
      timeout: options.timeoutMs,
      telemetry: false,
      httpClient: ownRetriesHttpClient(),
    });
  }

  charge(request: EffectRequest, signal: AbortSignal): Promise<EffectResult> {
    return this.#call('POST /v1/charges', signal, async () => {
      const charge = await this.#stripe.charges.create(
        {
          amount: request.amountMinor,
          currency: request.currency.toLowerCase(),
          customer: request.customer,
          source: request.paymentMethod,
          metadata: { ...request.metadata, intent_key: request.intentKey, idempotency_key: request.idempotencyKey },
        },
        { idempotencyKey: request.idempotencyKey },
      );
      return { ...chargeEffect(answered(charge, 'POST /v1/charges')), replayed: replayedHeader(charge.lastResponse?.headers) };
    });
  }

  refund(request: EffectRequest, signal: AbortSignal): Promise<EffectResult> {
    if (!request.charge) return Promise.reject(new ProviderError('POST /v1/refunds: no charge to refund (the request names none); not sent', 'permanent', undefined, false));
    const charge = request.charge;
    return this.#call('POST /v1/refunds', signal, async () => {
      const refund = await this.#stripe.refunds.create(
        { charge, amount: request.amountMinor, metadata: { ...request.metadata, intent_key: request.intentKey, idempotency_key: request.idempotencyKey } },
        { idempotencyKey: request.idempotencyKey },
      );
      return { ...refundEffect(answered(refund, 'POST /v1/refunds')), replayed: replayedHeader(refund.lastResponse?.headers) };
    });
  }

  async find(request: LookupRequest, signal: AbortSignal): Promise<Effect[] | undefined> {
    if (request.kind === 'charge') {
      try {
        return await this.#call('GET /v1/charges/search', signal, async () => {
          const found: Effect[] = [];
          let page: string | undefined;
          do {
            const result = await this.#stripe.charges.search({ query: `metadata['intent_key']:${quoted(request.intentKey)}`, limit: 100, ...(page ? { page } : {}) });
            found.push(...result.data.filter((charge) => charge.metadata?.intent_key === request.intentKey).map(chargeEffect));
            page = result.has_more && result.next_page ? result.next_page : undefined;
          } while (page);
          return found;
        });
      } catch (error) {
        if (noSuchApi(error)) return undefined;
        throw error;
      }
    }
    if (!request.charge) throw new ProviderError('GET /v1/refunds: no charge whose refunds to list (the lookup names none); not sent', 'permanent', undefined, false);
    const charge = request.charge;
    try {
      return await this.#call(`GET /v1/refunds?charge=${charge}`, signal, async () => {
        const found: Effect[] = [];
        for await (const refund of this.#stripe.refunds.list({ charge, limit: 100 })) {
          if (signal.aborted) break;
          if (refund.metadata?.intent_key === request.intentKey) found.push(refundEffect(refund));
        }
        return found;
      });
    } catch (error) {
      if (noSuchApi(error)) return undefined;
      throw error;
    }
  }

  retrieve(kind: EffectKind, id: string, signal: AbortSignal): Promise<Effect> {
    const path = `GET /v1/${kind === 'charge' ? 'charges' : 'refunds'}/${id}`;
    if (!/^[A-Za-z0-9_-]+$/.test(id)) return Promise.reject(new ProviderError(`${path}: not an id of the provider's; not sent`, 'permanent', undefined, false));
    return this.#call(path, signal, async () =>
      kind === 'charge' ? chargeEffect(answered(await this.#stripe.charges.retrieve(id), path)) : refundEffect(answered(await this.#stripe.refunds.retrieve(id), path)),
    );
  }

  /**
   * One provider call, raced with the signal (the SDK takes none): an abort rejects at once with
   * `signal.reason`, and the request's outcome is then unknown, which the caller handles. Every
   * other failure becomes a ProviderError.
   */
  async #call<T>(what: string, signal: AbortSignal, run: () => Promise<T>): Promise<T> {
    signal.throwIfAborted();
    let onAbort!: () => void;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      return await Promise.race([run(), aborted]);
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw this.#providerError(what, error);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** The SDK's error as a ProviderError, classified as the caller needs it: one line, without the API key. */
  #providerError(what: string, error: unknown): unknown {
    if (error instanceof ProviderError) return error;
    const line = (text: string) => oneLine(text).replaceAll(this.#apiKey, '[the API key]');
    if (!(error instanceof Stripe.errors.StripeError)) return error; // not the provider's answer: a bug, shown as it is
    if (error instanceof Stripe.errors.StripeConnectionError) {
      const detail = error.detail as { code?: string; socketCode?: string; message?: string; exception?: { code?: string } } | undefined;
      const code = detail?.socketCode ?? detail?.code ?? detail?.exception?.code;
      if (code === TIMED_OUT) return new ProviderError(`${what}: no answer within ${this.#timeoutMs} ms; the outcome is unknown`, 'retryable', undefined);
      if (code && NOT_CONNECTED.has(code)) return new ProviderError(line(`${what}: could not connect to the provider (${code}); the request was not sent`), 'retryable', undefined, false);
      return new ProviderError(line(`${what}: the connection failed (${code ?? detail?.message ?? 'network error'}); the outcome is unknown`), 'retryable', undefined);
    }
    const status = error.statusCode;
    if (status === undefined) {
      // An answer that was not Stripe's JSON (a proxy's page, a truncated body): whatever it was, the outcome is unknown.
      return new ProviderError(line(`${what}: an answer the SDK could not read (${error.message}); the outcome is unknown`), 'retryable', undefined);
    }
    const headers = error.headers ?? {};
    const replayed = replayedHeader(headers);
    const code = error.code ?? error.rawType;
    // Only a rate limit (429) or an unavailable provider (503) says when to come back.
    const retryAfter = status === 429 || status === 503 ? parseRetryAfter(headers['retry-after'] ?? null) : undefined;
    // The SDK starts the message with the request's id (`[req_…] `): dropped, so that the same failure reads the same every time.
    const prefix = error.requestId ? `[${error.requestId}] ` : '';
    const said = (prefix && error.message.startsWith(prefix) ? error.message.slice(prefix.length) : error.message) || 'no message';
    const message = `${what}: ${status}${code ? ` ${code}` : ''}: ${said}${replayed ? '; replayed: the answer saved under this idempotency key' : ''}`;
    return new ProviderError(line(message), classify(status), status, true, retryAfter, replayed, code);
  }
}

/** The answer's object, checked: a 2xx without an id leaves the outcome unknown. */
function answered<T extends { id?: unknown }>(object: T, what: string): T {
  if (typeof object?.id !== 'string') throw new ProviderError(`${what}: an answer without an id; the outcome is unknown`, 'retryable', undefined);
  return object;
}

const replayedHeader = (headers: Record<string, string> | undefined) => headers?.['idempotent-replayed'] === 'true';

/** A 404 for the route itself (no such API at this provider), not for a missing object (`resource_missing`). */
const noSuchApi = (error: unknown) => error instanceof ProviderError && error.status === 404 && error.code !== 'resource_missing';

function oneLine(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > 500 ? `${flat.slice(0, 499)}…` : flat;
}

/** The provider built from the environment, and the variables it was built from: parsed once, not once per item. */
let fromEnv: { env: string; provider: PaymentProvider | undefined } | undefined;

/** The variables the provider depends on, as one comparable string. */
const providerEnv = (env: NodeJS.ProcessEnv) =>
  JSON.stringify(['PAYMENT_PROVIDER_URL', 'PAYMENT_PROVIDER_KEY', 'PAYMENT_PROVIDER_TIMEOUT', 'PAYMENT_PROVIDER_SEARCH_LAG', 'DATABASE_URL'].map((name) => env[name]));

/**
 * The provider configured by PAYMENT_PROVIDER_URL / _KEY / _TIMEOUT / _SEARCH_LAG (see
 * ./config.ts), read when an item first needs it, never when the job file is imported:
 * `reconciler list` and the other read-only commands work without the example's secrets. The
 * configuration is parsed once per process (again only if those variables change, as tests
 * do); a bad one throws every time, so each item fails with its one line. Unset on the embedded
 * database (no DATABASE_URL), the demo's simulator starts in-process instead, storing its ledger there.
 */
export async function paymentProviderFromEnv(ctx: Pick<ReconcileContext, 'db' | 'log'>): Promise<PaymentProvider> {
  const env = providerEnv(process.env);
  if (fromEnv?.env !== env) {
    const config = loadProviderConfig();
    fromEnv = { env, provider: config && new StripePaymentProvider({ baseUrl: config.url, apiKey: config.key, timeoutMs: config.timeoutMs, searchLagMs: config.searchLagMs }) };
  }
  return fromEnv.provider ?? (await startDemoSimulator(ctx)).provider;
}
