/**
 * Sign-in attempts that failed, counted per client address and overall over a sliding window:
 * past the limit, more attempts are refused (429 with Retry-After) before any token is compared.
 * A wrong bearer token counts as a failed sign-in too.
 */

export interface RateLimits {
  /** Failures one address may make per window. */
  perAddress: number;
  /** Failures all addresses together may make per window (a spread-out guess). */
  overall: number;
  windowMs: number;
}

export const SIGN_IN_LIMITS: RateLimits = { perAddress: 5, overall: 50, windowMs: 60_000 };

/** Addresses remembered at most: past it, the oldest are forgotten (the overall limit still holds). */
const MAX_ADDRESSES = 10_000;

export class FailureLimiter {
  readonly #byAddress = new Map<string, number[]>();
  #overall: number[] = [];

  constructor(readonly limits: RateLimits = SIGN_IN_LIMITS) {}

  /** Seconds until `address` may try again, or 0 when it may try now. */
  retryAfter(address: string, now = Date.now()): number {
    const since = now - this.limits.windowMs;
    this.#overall = this.#overall.filter((at) => at > since);
    const mine = (this.#byAddress.get(address) ?? []).filter((at) => at > since);
    if (mine.length === 0) this.#byAddress.delete(address);
    else this.#byAddress.set(address, mine);
    const wait = (times: number[], limit: number) => (times.length >= limit ? times[times.length - limit]! + this.limits.windowMs - now : 0);
    const ms = Math.max(wait(mine, this.limits.perAddress), wait(this.#overall, this.limits.overall));
    return ms > 0 ? Math.ceil(ms / 1000) : 0;
  }

  /** Counts a failed attempt from `address`. */
  failed(address: string, now = Date.now()): void {
    this.#overall.push(now);
    const mine = this.#byAddress.get(address) ?? [];
    mine.push(now);
    this.#byAddress.delete(address); // re-inserted last: the map's order is the forgetting order
    this.#byAddress.set(address, mine);
    if (this.#byAddress.size > MAX_ADDRESSES) this.#byAddress.delete(this.#byAddress.keys().next().value!);
  }
}
