/**
 * The errors that cross module boundaries, and the one function every `catch` uses.
 *
 * Exit codes are part of the CLI's contract (see docs/cli.md):
 * 0 ok, 1 the pass finished with failed items, 2 usage / configuration / load /
 * database-connection error, 3 the pass lease is held by another process.
 */
export const ExitCode = { ok: 0, itemsFailed: 1, usage: 2, leaseHeld: 3 } as const;

import { scrub } from './secrets.js';

const TERMINAL = Symbol.for('reconciler.TerminalError');

/**
 * Throw from `reconcile` to say "retrying will not help": the item is marked dead at
 * once and skipped until a person acts: `reconciler retry`, `reconciler clear`, or one of the
 * reconciler's manual actions (`reconciler act`).
 * Any other thrown value means "retry later, with backoff".
 */
export class TerminalError extends Error {
  readonly [TERMINAL] = true;
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'TerminalError';
  }
}

/** True for a {@link TerminalError}, even one created by another copy of this module. */
export function isTerminalError(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as Record<symbol, unknown>)[TERMINAL] === true;
}

/**
 * An error a person caused and can fix (a bad flag, file, variable or name). The CLI
 * prints its message as one line, with no stack trace, and exits with `exitCode`.
 */
export class UserError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = ExitCode.usage,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'UserError';
  }
}

/** Every `catch` passes its `unknown` through here, so code after it always has an Error. */
export function coerceError(value: unknown): Error {
  if (value instanceof Error) return value;
  if (typeof value === 'string') return new Error(value);
  try {
    return new Error(`non-error thrown: ${JSON.stringify(value)}`);
  } catch {
    return new Error(`non-error thrown: ${String(value)}`);
  }
}

/**
 * The message that explains an error. drizzle wraps every failed query in
 * "Failed query: <sql> params: <values>" with the database's own error as `cause`: the
 * cause is what a person needs, and the parameters may hold secrets, so they never show.
 */
function explanation(error: Error): string {
  const cause = (error as { cause?: unknown }).cause;
  if (error.message.startsWith('Failed query:') && cause instanceof Error) {
    const code = (cause as { code?: unknown }).code;
    return `${explanation(cause)}${typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? ` (SQLSTATE ${code})` : ''}`;
  }
  return error.message || error.name || 'error';
}

/**
 * The message of an error as one line: the database's cause rather than drizzle's wrapper,
 * no NUL bytes (PostgreSQL text cannot hold them), no secrets, cut to `max` characters so
 * that one bad item cannot bloat a row or a log line.
 */
export function errorSummary(error: Error, max = 2_000): string {
  const text = scrub(explanation(error)).replace(/\u0000/g, '').replace(/\s*\n\s*/g, ' ').trim() || 'error';
  return text.length > max ? `${text.slice(0, max)}… (${text.length - max} more characters)` : text;
}

/** One line, at most `max` characters. */
export function oneLine(text: string | null | undefined, max = 80): string {
  if (!text) return '';
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** SQLSTATEs that say the server is going away or not there yet: class 08, admin/crash shutdown, starting up, full after a restart. */
const UNAVAILABLE_SQLSTATE = /^(08...|57P0[1-3]|53300)$/;
const UNAVAILABLE_SOCKET = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);
/**
 * What `pg` throws when its socket went away or never came. Not pg-pool's "timeout exceeded
 * when trying to connect": that is a wait for a free connection of a busy pool, not an outage.
 */
const UNAVAILABLE_MESSAGE = /^(Connection terminated|Client has encountered a connection error|Connection refused)/;

/**
 * True when an error of one of our own queries means the database cannot be reached (it
 * restarts, fails over, or the network is down), not that the query or the data was wrong.
 * Only meaningful for the engine's own queries: an item's error may come from anywhere.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && (UNAVAILABLE_SQLSTATE.test(code) || UNAVAILABLE_SOCKET.has(code))) return true;
    if (UNAVAILABLE_MESSAGE.test(e.message)) return true;
    if (e instanceof AggregateError && e.errors.some(isDatabaseUnavailable)) return true;
  }
  return false;
}
