/**
 * The operator console's request handler, served by the daemon's operations endpoint (every
 * path but /healthz, /readyz and /metrics) and by `reconciler console`. Pages come from the
 * pages module; this file routes, signs in and out, guards actions (auth.ts) and sets the
 * security headers of every response (http.ts). docs/console.md ("Security model") says why.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { coerceError, errorSummary } from '../errors.js';
import type { OperatorContext } from '../operator/views.js';
import { asset, renderPage, renderSignIn } from './pages/index.js';
import { ConsoleAuth, SESSION_COOKIE, consoleBearer, cookieValue, originOf, sessionCookie, viaHttps } from './auth.js';
import { FailureLimiter } from './rate-limit.js';
import { HttpError, clientAddress, readFields, redirect, returnPath, send, sendHtml, sendJson, sendText, wantsJson } from './http.js';
import { handleAction } from './act.js';
import { FLASH_COOKIE, clearFlashCookie, requestFlash } from './flash.js';
import { allowedHosts, hostName } from './hosts.js';
import { PageReads, type PageReadLimits } from './page-reads.js';
import type { ConsoleToken } from './tokens.js';

export interface ConsoleOptions {
  log: Logger;
  /** CONSOLE_TOKENS; none: read-only. */
  tokens: readonly ConsoleToken[];
  /** What the pages read and the actions change; undefined while the database is awaited (pages answer 503). */
  context: () => OperatorContext | undefined;
  /** The address the console is bound to (HTTP_HOST, `--host`): with CONSOLE_HOSTS unset, a loopback one answers loopback names only. */
  listenHost: string;
  /** CONSOLE_HOSTS: the `Host` names the console answers (hosts.ts). */
  hosts?: readonly string[];
  /** How many pages render at once, how many wait, how long a statement may take (page-reads.ts). */
  pageReads?: PageReadLimits;
}

export type ConsoleHandler = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

export const READ_ONLY = 'read-only: set CONSOLE_TOKENS to allow actions';
const ACTIONS_PATH = /^\/reconcilers\/([^/]+)\/actions$/;

/** The live-update script asks for the `<main>` content only with this header. */
export const FRAGMENT_HEADER = 'x-console-fragment';

export function createConsoleHandler(options: ConsoleOptions): ConsoleHandler {
  const server = new ConsoleServer(options);
  return (req, res) => server.handle(req, res);
}

/** One console: its tokens, its sign-in limiter, its routes. */
class ConsoleServer {
  readonly #auth: ConsoleAuth;
  readonly #limiter = new FailureLimiter();
  readonly #log: Logger;
  readonly #hosts: ReadonlySet<string> | undefined;
  readonly #reads: PageReads;

  constructor(private readonly options: ConsoleOptions) {
    this.#auth = new ConsoleAuth(options.tokens);
    this.#log = options.log;
    this.#hosts = allowedHosts(options.listenHost, options.hosts);
    this.#reads = new PageReads(options.pageReads);
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://console.invalid');
    try {
      // DNS rebinding: a page elsewhere that resolves its own name to this address must get nothing.
      if (this.#hosts && !this.#hosts.has(hostName(req.headers.host ?? ''))) throw new HttpError(421, 'unknown host: set CONSOLE_HOSTS');
      if (req.method === 'GET' || req.method === 'HEAD') return await this.#get(req, res, url);
      if (req.method === 'POST') return await this.#post(req, res, url);
      throw new HttpError(405, 'the console answers GET and POST only', { allow: 'GET, HEAD, POST' });
    } catch (thrown) {
      const error = coerceError(thrown);
      if (!(error instanceof HttpError)) this.#log.warn({ err: error, path: url.pathname }, `console: ${req.method} ${url.pathname} failed: ${errorSummary(error, 300)}`);
      if (res.headersSent) return void res.destroy();
      const status = error instanceof HttpError ? error.status : 500;
      const message = error instanceof HttpError ? error.message : `the console failed to answer: ${errorSummary(error, 300)}`;
      const headers = error instanceof HttpError ? error.headers : {};
      if (wantsJson(req)) return sendJson(res, status, { error: message }, headers);
      return sendText(res, status, message, headers);
    }
  }

  async #get(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    if (url.pathname.startsWith('/assets/')) {
      const found = asset(url.pathname);
      return found ? send(res, 200, found.contentType, found.body, { 'cache-control': 'no-cache' }) : sendText(res, 404, 'no such asset');
    }
    const auth = this.#auth;
    if (url.pathname === '/sign-in') {
      const returnTo = returnPath(url.searchParams.get('return_to') ?? '/');
      return auth.actionsEnabled ? sendHtml(res, 200, renderSignIn({ returnTo })) : sendText(res, 404, `${READ_ONLY}; there is nothing to sign in to`);
    }
    const ctx = this.options.context();
    if (!ctx) return sendText(res, 503, 'the console is waiting for the database; reload in a moment', { 'retry-after': '5' });
    const session = auth.actionsEnabled ? auth.session(cookieValue(req, SESSION_COOKIE)) : null;
    const fragment = req.headers[FRAGMENT_HEADER] === '1';
    // The flash is the next full page's: a live-update fragment neither shows nor clears it.
    const flash = fragment ? undefined : requestFlash(req);
    const request = { path: url.pathname, query: url.searchParams, session, actionsEnabled: auth.actionsEnabled, fragment, flash };
    const page = await this.#reads.read(ctx, (snapshot) => renderPage({ ...request, ctx: snapshot }));
    if (!page) return sendText(res, 404, `no such page: ${url.pathname}`);
    const shown = !fragment && cookieValue(req, FLASH_COOKIE) !== undefined;
    return sendHtml(res, page.status, page.html, shown ? { 'set-cookie': clearFlashCookie(viaHttps(req)) } : {});
  }

  async #post(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const fields = await readFields(req);
    if (url.pathname === '/sign-in') return this.#postSignIn(req, res, fields);
    if (url.pathname === '/sign-out') {
      this.#actor(req, fields);
      return redirect(res, '/', { 'set-cookie': sessionCookie(undefined, viaHttps(req)) });
    }
    const match = ACTIONS_PATH.exec(url.pathname);
    if (!match) throw new HttpError(404, `no such action endpoint: ${url.pathname}`);
    const name = this.#actor(req, fields);
    const ctx = this.options.context();
    if (!ctx) throw new HttpError(503, 'the console is waiting for the database; try again in a moment');
    const reconciler = decodedName(match[1]!);
    return handleAction({ reconciler, fields, actor: { name, via: 'console' }, ctx, log: this.#log, json: wantsJson(req), secure: viaHttps(req) }, res);
  }

  #postSignIn(req: IncomingMessage, res: ServerResponse, fields: Record<string, string>): void {
    if (!this.#auth.actionsEnabled) throw new HttpError(403, READ_ONLY);
    if (originOf(req) !== 'same') throw new HttpError(403, "refused: sign in from the console's own page");
    const returnTo = returnPath(fields.return_to);
    let name: string;
    try {
      name = this.#signIn(req, fields.token ?? '', 'form');
    } catch (error) {
      if (!(error instanceof HttpError) || wantsJson(req)) throw error;
      return sendHtml(res, error.status, renderSignIn({ error: error.message, returnTo }), error.headers);
    }
    const { cookie } = this.#auth.issue(name);
    return redirect(res, returnTo, { 'set-cookie': sessionCookie(cookie, viaHttps(req)) });
  }

  /** Who acts in this POST: the bearer token's name, or the session's (with its CSRF token checked). Throws the refusal. */
  #actor(req: IncomingMessage, fields: Record<string, string>): string {
    if (!this.#auth.actionsEnabled) throw new HttpError(403, READ_ONLY);
    const origin = originOf(req);
    if (origin === 'other') throw new HttpError(403, 'refused: the request comes from another origin');
    const bearer = consoleBearer(req);
    if (bearer !== undefined) return this.#signIn(req, bearer, 'bearer');
    if (origin === 'absent') throw new HttpError(403, 'refused: the request has neither Origin nor Referer');
    const session = this.#auth.session(cookieValue(req, SESSION_COOKIE));
    if (!session) throw new HttpError(401, 'sign in to act (or send Authorization: Bearer <token>)');
    if (!this.#auth.csrfMatches(session, fields.csrf)) throw new HttpError(403, 'refused: the form is stale or forged (CSRF token missing or wrong); reload the page');
    return session.name;
  }

  /** The token's name, or a refusal: 401 for a wrong token, 429 past the rate limit. Logged either way, never with the token. */
  #signIn(req: IncomingMessage, token: string, via: 'form' | 'bearer'): string {
    const address = clientAddress(req);
    const wait = this.#limiter.retryAfter(address);
    const limited = (seconds: number) => {
      this.#log.warn({ event: 'console:sign-in', outcome: 'limited', via, address }, `console: sign-in from ${address} refused: too many failed attempts`);
      return new HttpError(429, `too many failed sign-in attempts: try again in ${seconds} s`, { 'retry-after': String(seconds) });
    };
    if (wait.address > 0) throw limited(wait.address);
    // Past the overall limit only, the right token still signs in: guesses spread over many addresses cannot lock operators out.
    const name = this.#auth.nameOf(token);
    if (name === undefined) {
      this.#limiter.failed(address);
      if (wait.overall > 0) throw limited(wait.overall);
      this.#log.warn({ event: 'console:sign-in', outcome: 'refused', via, address }, `console: sign-in from ${address} refused: unknown token`);
      throw new HttpError(401, 'that token is not one of CONSOLE_TOKENS');
    }
    if (via === 'form') this.#log.info({ event: 'console:sign-in', outcome: 'ok', via, name, address }, `console: ${name} signed in from ${address}`);
    return name;
  }
}

/** A path segment's name; malformed percent-encoding names nothing (404, not a 500 with a warning). */
function decodedName(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new HttpError(404, 'no such reconciler: the name in the path is not valid percent-encoding');
  }
}
