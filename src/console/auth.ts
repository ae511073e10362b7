/**
 * Who may act in the console: tokens (CONSOLE_TOKENS), stateless signed sessions, CSRF tokens
 * and the Origin check. Reads need none of it; every action needs a token, either through a
 * session cookie set by the sign-in form or as `Authorization: Bearer <token>`.
 *
 * A session is `base64url(payload).base64url(hmac)`, signed with a key derived from the
 * token of the name it carries: every replica with the same tokens accepts it, and removing
 * (or changing) a token ends that name's sessions. No session is stored anywhere.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { ConsoleToken } from './tokens.js';
import type { ConsoleSession } from './pages/index.js';

export const SESSION_COOKIE = 'reconciler_console';
/** Eight hours: a working day. */
export const SESSION_SECONDS = 8 * 3_600;

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest();
const hmac = (key: Buffer, text: string) => createHmac('sha256', key).update(text, 'utf8').digest();
const sameBytes = (a: Buffer, b: Buffer) => a.length === b.length && timingSafeEqual(a, b);

interface SessionPayload {
  /** The token's name. */
  n: string;
  /** Expiry, Unix seconds. */
  e: number;
  /** Random per session: the CSRF token is derived from it. */
  r: string;
}

export class ConsoleAuth {
  readonly #digests: { name: string; digest: Buffer }[];
  readonly #keys = new Map<string, Buffer>();

  constructor(tokens: readonly ConsoleToken[]) {
    this.#digests = tokens.map(({ name, token }) => ({ name, digest: sha256(token) }));
    for (const { name, token } of tokens) this.#keys.set(name, hmac(sha256(token), 'reconciler console session key'));
  }

  /** False when no token is configured: the console is read-only. */
  get actionsEnabled(): boolean {
    return this.#digests.length > 0;
  }

  /** The name of the token `given` is, compared in constant time against every configured token. */
  nameOf(given: string): string | undefined {
    const digest = sha256(given);
    let found: string | undefined;
    for (const entry of this.#digests) if (sameBytes(digest, entry.digest) && found === undefined) found = entry.name;
    return found;
  }

  /** A new session for `name`: the cookie value and the session it stands for. */
  issue(name: string, now = Date.now()): { cookie: string; session: ConsoleSession } {
    const key = this.#keys.get(name);
    if (!key) throw new Error(`no console token is named ${name}`);
    const payload: SessionPayload = { n: name, e: Math.floor(now / 1000) + SESSION_SECONDS, r: randomBytes(16).toString('base64url') };
    const body = Buffer.from(JSON.stringify(payload), 'utf8').toString('base64url');
    return { cookie: `${body}.${hmac(key, body).toString('base64url')}`, session: { name, csrf: this.#csrf(key, payload.r) } };
  }

  /** The session a cookie value stands for, if its signature holds, its name still has a token and it has not expired. */
  session(cookie: string | undefined, now = Date.now()): ConsoleSession | null {
    if (!cookie) return null;
    const [body, signature, extra] = cookie.split('.');
    if (!body || !signature || extra !== undefined) return null;
    let payload: SessionPayload;
    try {
      payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as SessionPayload;
    } catch {
      return null;
    }
    if (typeof payload?.n !== 'string' || typeof payload.e !== 'number' || typeof payload.r !== 'string') return null;
    const key = this.#keys.get(payload.n);
    if (!key || !sameBytes(hmac(key, body), Buffer.from(signature, 'base64url'))) return null;
    if (payload.e * 1000 <= now) return null;
    return { name: payload.n, csrf: this.#csrf(key, payload.r) };
  }

  /** True when `given` is the CSRF token of `session`. */
  csrfMatches(session: ConsoleSession, given: string | undefined): boolean {
    return given !== undefined && sameBytes(Buffer.from(given, 'utf8'), Buffer.from(session.csrf, 'utf8'));
  }

  #csrf(key: Buffer, nonce: string): string {
    return hmac(key, `csrf:${nonce}`).toString('base64url');
  }
}

/** The value of one cookie in a request's Cookie header. */
export function cookieValue(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/**
 * The console token of an `Authorization: Bearer …` header, when the request carries no session
 * cookie. With one, the header belongs to a proxy in front (oauth2-proxy passes its own access
 * token): the session is who acts, and the header is neither compared nor counted as a failed
 * sign-in. Any other scheme (`Basic …`) is never a console token.
 */
export function consoleBearer(req: IncomingMessage): string | undefined {
  if (cookieValue(req, SESSION_COOKIE) !== undefined) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return match?.[1];
}

/** True when the request came over https (as the TLS-terminating proxy in front says). */
export function viaHttps(req: IncomingMessage): boolean {
  return String(req.headers['x-forwarded-proto'] ?? '').split(',')[0]!.trim() === 'https' || Boolean((req.socket as { encrypted?: boolean }).encrypted);
}

/** The Set-Cookie header for a session, or for ending one (`value` undefined). */
export function sessionCookie(value: string | undefined, secure: boolean): string {
  const attributes = ['HttpOnly', 'SameSite=Strict', 'Path=/', `Max-Age=${value === undefined ? 0 : SESSION_SECONDS}`, ...(secure ? ['Secure'] : [])];
  return [`${SESSION_COOKIE}=${value ?? ''}`, ...attributes].join('; ');
}

/**
 * Where a POST says it comes from: Origin, else Referer. `same` when its host (name and port)
 * is the request's own Host; `absent` when the request has neither header.
 */
export function originOf(req: IncomingMessage): 'same' | 'other' | 'absent' {
  const claimed = req.headers.origin ?? req.headers.referer;
  if (claimed === undefined || claimed === '') return 'absent';
  const host = req.headers.host;
  try {
    const url = new URL(claimed);
    return host !== undefined && (url.protocol === 'http:' || url.protocol === 'https:') && url.host === host.toLowerCase() ? 'same' : 'other';
  } catch {
    return 'other'; // "null" (a sandboxed frame, a privacy setting) or garbage
  }
}
