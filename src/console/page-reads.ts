/**
 * How the console's pages read the database without stalling the daemon that serves them: each
 * render runs in one read-only snapshot whose statements give up after READ_TIMEOUT_MS
 * (`withReadSnapshot`), and at most RENDERS_AT_ONCE renders run at a time, so that a few
 * slow pages loaded in parallel hold at most that many of the daemon's connections. Requests
 * beyond them wait in a short queue; past it they are refused with 503 and Retry-After.
 */
import { READ_TIMEOUT_MS, withReadSnapshot, type OperatorContext } from '../operator/context.js';
import { HttpError } from './http.js';

export interface PageReadLimits {
  /** Renders running at once: each holds one database connection. */
  atOnce: number;
  /** Renders waiting for a turn; more are refused. */
  queue: number;
  /** The longest one statement of a render may take. */
  timeoutMs: number;
}

export const PAGE_READ_LIMITS: PageReadLimits = { atOnce: 2, queue: 20, timeoutMs: READ_TIMEOUT_MS };

/** PostgreSQL's SQLSTATE for a statement cancelled by statement_timeout. */
const QUERY_CANCELED = '57014';

function isStatementTimeout(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; typeof e === 'object' && e !== null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code === QUERY_CANCELED) return true;
  }
  return false;
}

export class PageReads {
  #running = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(readonly limits: PageReadLimits = PAGE_READ_LIMITS) {}

  /** `render` over a read-only snapshot of `ctx`, in its turn. A statement past the timeout is a 503 that says so. */
  async read<T>(ctx: OperatorContext, render: (snapshot: OperatorContext) => Promise<T>): Promise<T> {
    await this.#turn();
    try {
      return await withReadSnapshot(ctx, render, this.limits.timeoutMs);
    } catch (error) {
      if (!isStatementTimeout(error)) throw error;
      const limit = this.limits.timeoutMs >= 1_000 ? `${Math.round(this.limits.timeoutMs / 1_000)} s` : `${this.limits.timeoutMs} ms`;
      throw new HttpError(503, `the page took too long to read (over ${limit}): try a narrower filter`, { 'retry-after': '5' });
    } finally {
      this.#release();
    }
  }

  async #turn(): Promise<void> {
    if (this.#running < this.limits.atOnce) {
      this.#running++;
      return;
    }
    if (this.#waiting.length >= this.limits.queue) {
      throw new HttpError(503, 'the console is busy rendering other pages: try again in a few seconds', { 'retry-after': '5' });
    }
    // The releasing render hands its turn over: #running stays as it is.
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#running--;
  }
}
