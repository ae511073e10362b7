/**
 * The payment provider, as the settle-returns service sees it: a small interface, and an
 * HTTP client for a Stripe-like API (`POST /v1/charges`, `POST /v1/refunds`, an
 * `Idempotency-Key` header on every POST, a bearer API key).
 *
 * Every failure is classified, because the caller's next step depends on it:
 * - `declined`: a definite "no" (402). Final.
 * - `retryable`: the effect may or may not have happened (timeout, reset, 408, 5xx), or the
 *   provider asks us to come back (409 request in progress, 425, 429). Retry with the same key.
 * - `permanent`: the request itself is wrong (400, 401, 403, 404, 422 such as a key reused
 *   with other parameters). Retrying the same request cannot help.
 */
import { loadConfig } from '../config.js';

export interface EffectRequest {
  idempotencyKey: string;
  amountCents: number;
  currency: string;
  customer: string;
  paymentMethod: string;
  returnId: number;
}

export interface EffectResult {
  /** The provider's reference, e.g. `ch_3f9a…`. */
  id: string;
}

export interface PaymentProvider {
  charge(request: EffectRequest, signal: AbortSignal): Promise<EffectResult>;
  refund(request: EffectRequest, signal: AbortSignal): Promise<EffectResult>;
}

export type ProviderFailure = 'declined' | 'retryable' | 'permanent';

export class ProviderError extends Error {
  override name = 'ProviderError';
  constructor(
    message: string,
    readonly failure: ProviderFailure,
    readonly status: number | undefined,
  ) {
    super(message);
  }
}

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
          amount: request.amountCents,
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
    throw new ProviderError(`POST ${path}: ${response.status}${error?.code ? ` ${error.code}` : ''}: ${detail}`, classify(response.status), response.status);
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

/**
 * Fails when a real database is configured without a payment provider: settle-returns would
 * only fail every item. Called when the job file is loaded, so the daemon refuses to start.
 */
export function requirePaymentProviderConfig(): void {
  const config = loadConfig();
  if (config.DATABASE_URL && !config.PAYMENT_PROVIDER_URL) {
    throw new Error('PAYMENT_PROVIDER_URL is not set, but DATABASE_URL is: set PAYMENT_PROVIDER_URL and PAYMENT_PROVIDER_KEY (only with neither set does a demo simulator run)');
  }
}

let fromEnv: { url: string; key: string; provider: PaymentProvider } | undefined;

/**
 * The provider configured by PAYMENT_PROVIDER_URL / _KEY / _TIMEOUT (validated with the
 * rest of the configuration), created on first use.
 */
export function paymentProviderFromEnv(): PaymentProvider {
  const config = loadConfig();
  if (!config.PAYMENT_PROVIDER_URL || !config.PAYMENT_PROVIDER_KEY) {
    throw new Error('PAYMENT_PROVIDER_URL is not set: point it at the payment provider (or leave DATABASE_URL unset too, for the demo simulator)');
  }
  if (fromEnv?.url === config.PAYMENT_PROVIDER_URL && fromEnv.key === config.PAYMENT_PROVIDER_KEY) return fromEnv.provider;
  const provider = new HttpPaymentProvider({ baseUrl: config.PAYMENT_PROVIDER_URL, apiKey: config.PAYMENT_PROVIDER_KEY, timeoutMs: config.PAYMENT_PROVIDER_TIMEOUT });
  fromEnv = { url: config.PAYMENT_PROVIDER_URL, key: config.PAYMENT_PROVIDER_KEY, provider };
  return provider;
}
