/**
 * Sign-in attempts that failed, counted per client address and overall over a sliding window.
 * Past an address's limit, its attempts are refused (429 with Retry-After) before any token is
 * compared. Past the overall limit only, a token is still compared: the right one signs in (a
 * token of 16 characters or more cannot be guessed in 50 tries a minute), a wrong one gets 429.
 * So many addresses guessing together cannot lock the operators out. A wrong bearer token
 * counts as a failed sign-in too.
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

  /** Seconds until `address`, and until anyone past the overall limit, may try again; 0 for now. */
  retryAfter(address: string, now = Date.now()): { address: number; overall: number } {
    const since = now - this.limits.windowMs;
    this.#overall = this.#overall.filter((at) => at > since);
    const mine = (this.#byAddress.get(address) ?? []).filter((at) => at > since);
    if (mine.length === 0) this.#byAddress.delete(address);
    else this.#byAddress.set(address, mine);
    const wait = (times: number[], limit: number) => (times.length >= limit ? times[times.length - limit]! + this.limits.windowMs - now : 0);
    const seconds = (ms: number) => (ms > 0 ? Math.ceil(ms / 1000) : 0);
    return { address: seconds(wait(mine, this.limits.perAddress)), overall: seconds(wait(this.#overall, this.limits.overall)) };
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
