/**
 * The payment provider, as the settle-returns service sees it: a small interface, and an
 * HTTP client for a Stripe-like API (`POST /v1/charges`, `POST /v1/refunds`, an
 * `Idempotency-Key` header on every POST, a bearer API key).
 *
 * Every failure is classified, because the caller's next step depends on it:
 * - `declined`: a definite "no" (402). Final.
 * - `retryable`: the effect may or may not have happened (timeout, reset, 408, 5xx), or the
 *   provider asks us to come back (409 request in progress, 425, 429). Retry with the same key;
 *   a 429 or 503 may say when (`Retry-After`), which the error carries as `retryAfter`, the
 *   engine's hint: the item is retried then instead of after its backoff.
 * - `permanent`: the request itself is wrong (400, 401, 403, 404, 422 such as a key reused
 *   with other parameters). Retrying the same request cannot help.
 */
import type { ReconcileContext, RetryAfter } from 'reconciler';
import { loadProviderConfig } from './config.js';
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

export interface HttpProviderOptions {
  baseUrl: string;
  apiKey: string;
  timeoutMs: number;
}

interface ErrorBody {
  error?: { type?: string; code?: string; message?: string };
}

function classify(status: number): ProviderFailure {
  if (status === 402) return 'declined';
  // 408 request timeout, 409 in progress, 425 too early, 429 rate limited, 5xx: the outcome is unknown or the provider asks us back.
  if (status === 408 || status === 409 || status === 425 || status === 429 || status >= 500) return 'retryable';
  return 'permanent';
}

export class HttpPaymentProvider implements PaymentProvider {
  readonly #options: HttpProviderOptions;

  constructor(options: HttpProviderOptions) {
    this.#options = { ...options, baseUrl: options.baseUrl.replace(/\/+$/, '') };
  }

  charge(request: EffectRequest, signal: AbortSignal): Promise<EffectResult> {
    return this.#post('/v1/charges', request, signal);
  }

  refund(request: EffectRequest, signal: AbortSignal): Promise<EffectResult> {
    return this.#post('/v1/refunds', request, signal);
  }

  async #post(path: string, request: EffectRequest, signal: AbortSignal): Promise<EffectResult> {
    const timeout = AbortSignal.timeout(this.#options.timeoutMs);
    let response: Response;
    try {
      response = await fetch(`${this.#options.baseUrl}${path}`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${this.#options.apiKey}`,
          'content-type': 'application/json',
          'idempotency-key': request.idempotencyKey,
        },
        body: JSON.stringify({
          amount: request.amountMinor,
          currency: request.currency.toLowerCase(),
          customer: request.customer,
          payment_method: request.paymentMethod,
          metadata: { return_id: String(request.returnId) },
        }),
        signal: AbortSignal.any([signal, timeout]),
      });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      const reason = timeout.aborted ? `no answer within ${this.#options.timeoutMs} ms` : describeNetworkError(error);
      if (!timeout.aborted && NOT_CONNECTED.has(reason)) {
        throw new ProviderError(`POST ${path}: could not connect to the provider (${reason}); the request was not sent`, 'retryable', undefined, false);
      }
      throw new ProviderError(`POST ${path}: ${reason}; the outcome is unknown`, 'retryable', undefined);
    }
    let text: string;
    try {
      text = await response.text();
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      throw new ProviderError(`POST ${path}: the connection broke while reading the answer (${describeNetworkError(error)}); the outcome is unknown`, 'retryable', response.status);
    }
    if (response.ok) {
      const body = safeJson(text) as { id?: unknown } | undefined;
      if (typeof body?.id !== 'string') throw new ProviderError(`POST ${path}: ${response.status} without an id in the answer; the outcome is unknown`, 'retryable', response.status);
      return { id: body.id };
    }
    const error = (safeJson(text) as ErrorBody | undefined)?.error;
    const detail = error?.message ?? (text.slice(0, 200) || response.statusText);
    // Only a rate limit (429) or an unavailable provider (503) says when to come back.
    const retryAfter = response.status === 429 || response.status === 503 ? parseRetryAfter(response.headers.get('retry-after')) : undefined;
    throw new ProviderError(`POST ${path}: ${response.status}${error?.code ? ` ${error.code}` : ''}: ${detail}`, classify(response.status), response.status, true, retryAfter);
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function describeNetworkError(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error as Error).message ?? 'network error';
}

/** The provider built from the environment, and the variables it was built from: parsed once, not once per item. */
let fromEnv: { env: string; provider: PaymentProvider | undefined } | undefined;

/** The variables the provider depends on, as one comparable string. */
const providerEnv = (env: NodeJS.ProcessEnv) => JSON.stringify(['PAYMENT_PROVIDER_URL', 'PAYMENT_PROVIDER_KEY', 'PAYMENT_PROVIDER_TIMEOUT', 'DATABASE_URL'].map((name) => env[name]));

/**
 * The provider configured by PAYMENT_PROVIDER_URL / _KEY / _TIMEOUT (see ./config.ts), read
 * when an item first needs it, never when the job file is imported: `reconciler list` and the
 * other read-only commands work without the example's secrets. The configuration is parsed
 * once per process (again only if those variables change, as tests do); a bad one throws every
 * time, so each item fails with its one line. Unset on the embedded database (no DATABASE_URL),
 * the demo's simulator starts in-process instead, storing its ledger there.
 */
export async function paymentProviderFromEnv(ctx: Pick<ReconcileContext, 'db' | 'log'>): Promise<PaymentProvider> {
  const env = providerEnv(process.env);
  if (fromEnv?.env !== env) {
    const config = loadProviderConfig();
    fromEnv = { env, provider: config && new HttpPaymentProvider({ baseUrl: config.url, apiKey: config.key, timeoutMs: config.timeoutMs }) };
  }
  return fromEnv.provider ?? (await startDemoSimulator(ctx)).provider;
}
