/**
 * The example's own configuration: where its payment provider is. The engine knows none of
 * these variables; the example reads them when it first needs the provider, with zod, and
 * marks the key as a secret so that the engine masks it everywhere.
 */
import { z } from 'zod';
import { registerSecret } from 'reconciler';

/** A duration like `10s` or `500ms`, in ms. */
const duration = (example: string, fallback: string) =>
  z
    .string()
    .regex(/^\d+(ms|s)$/, `must be a duration like ${example}`)
    .default(fallback)
    .transform((value) => (value.endsWith('ms') ? Number(value.slice(0, -2)) : Number(value.slice(0, -1)) * 1_000));

const providerSchema = z.object({
  /** The payment provider's API origin: https://api.stripe.com, or the simulator's. The SDK adds the paths, so it has none. */
  PAYMENT_PROVIDER_URL: z
    .url({ protocol: /^https?$/, message: 'must be an http(s) URL, e.g. https://api.stripe.com' })
    .refine((value) => {
      if (!URL.canParse(value)) return true; // not a URL at all: said once, above
      const url = new URL(value);
      return url.pathname.replace(/\/+$/, '') === '' && !url.search && !url.hash;
    }, 'must be the API\'s origin without a path (the Stripe SDK adds /v1/…), e.g. https://api.stripe.com')
    .optional(),
  /** The provider's API key (a secret). */
  PAYMENT_PROVIDER_KEY: z.string().min(1).optional(),
  /** Time limit of one provider request: `10s`, `500ms`. */
  PAYMENT_PROVIDER_TIMEOUT: duration('10s or 500ms', '10s'),
  /** How long after an effect is created the provider's search may still miss it: `60s` (Stripe: "usually within a minute"), `500ms`. */
  PAYMENT_PROVIDER_SEARCH_LAG: duration('60s or 500ms', '60s'),
  DATABASE_URL: z.string().optional(),
});

/** How long a search may miss an effect when nothing says otherwise: Stripe documents "usually within a minute". */
export const DEFAULT_SEARCH_LAG_MS = 60_000;

export interface ProviderConfig {
  url: string;
  key: string;
  timeoutMs: number;
  searchLagMs: number;
}

/**
 * The provider to call, or undefined for the demo's in-process simulator (nothing configured,
 * on the embedded database). Throws one line per problem: settle-returns then fails its items
 * with that line (and retries them once it is fixed), while every other reconciler runs.
 */
export function loadProviderConfig(env: NodeJS.ProcessEnv = process.env): ProviderConfig | undefined {
  // Secrets first, before anything could print them: the key, and a password inside the URL.
  registerSecret(env.PAYMENT_PROVIDER_KEY);
  try {
    const url = new URL(env.PAYMENT_PROVIDER_URL ?? '');
    registerSecret(decodeURIComponent(url.password) || undefined);
  } catch {
    // not a URL: reported below
  }
  const parsed = providerSchema.safeParse(Object.fromEntries(Object.entries(env).filter(([, value]) => value !== '')));
  if (!parsed.success) {
    throw new Error(parsed.error.issues.map((issue) => `invalid ${String(issue.path[0])}: ${issue.message}`).join('; '));
  }
  const { PAYMENT_PROVIDER_URL: url, PAYMENT_PROVIDER_KEY: key, PAYMENT_PROVIDER_TIMEOUT: timeoutMs, PAYMENT_PROVIDER_SEARCH_LAG: searchLagMs, DATABASE_URL } = parsed.data;
  if (!url) {
    if (DATABASE_URL) throw new Error('PAYMENT_PROVIDER_URL is not set: point it (and PAYMENT_PROVIDER_KEY) at the payment provider; only on the embedded database does the demo simulator stand in');
    return undefined;
  }
  if (!key) throw new Error('PAYMENT_PROVIDER_KEY is not set: it is required with PAYMENT_PROVIDER_URL (the API key of the payment provider)');
  return { url, key, timeoutMs, searchLagMs };
}
