/**
 * The console's HTTP side: security headers, read-only without tokens, sign-in, sessions, CSRF,
 * the Origin check, the sign-in rate limit, bearer tokens and their audit records, that no
 * token ever shows, and the security review's findings (allowed hosts, page reads that cannot
 * stall the daemon, authenticating proxies, the flash cookie, malformed names). The HTTP rules run against the handler in this process over a real
 * database; what is about processes (the daemon's console, `reconciler console`) runs them.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { sql } from 'drizzle-orm';
import pg from 'pg';
import { useTestDatabase } from './helpers/db.js';
import { API, jobsDir } from './helpers/jobs.js';
import { freePort } from './helpers/ports.js';
import { runCli, startProcess, useCleanup, type RunningProcess } from './helpers/processes.js';
import { until } from '../testkit/processes.js';
import { createLogger } from '../src/log.js';
import { createConsoleHandler, READ_ONLY, type ConsoleOptions } from '../src/console/server.js';
import { CONTENT_SECURITY_POLICY } from '../src/console/http.js';
import { defineReconciler, resolveReconciler } from '../src/reconciler.js';
import type { ConsoleToken } from '../src/console/tokens.js';

const t = useTestDatabase({ resetEngineTables: true });
const { children, dirs } = useCleanup();

const ALICE = 'alice-token-5f1c9e0a7b3d';
const BOT = 'bot-token-8e2d4c6a0f1b3';
const TOKENS: ConsoleToken[] = [
  { name: 'alice', token: ALICE },
  { name: 'ops-bot', token: BOT },
];
const TOKENS_ENV = `alice:${ALICE},ops-bot:${BOT}`;

const ORDERS = resolveReconciler(
  'orders',
  'jobs/orders.ts',
  defineReconciler<{ id: string }>({
    schedule: '0 0 1 1 *',
    scan: async function* () {},
    key: (item) => item.id,
    reconcile: async () => 'unchanged',
    actions: { 'settle-by-hand': { description: 'settled outside the system', run: async (key) => `settled ${key} by hand` } },
  }),
);

/** A console over the test database, in this process; every response and log line it wrote, for the leak checks. */
interface Console {
  url: string;
  /** Every header and body it answered, and every log line. */
  seen: string[];
  request(path: string, init?: RequestInit & { cookie?: string; origin?: string | null }): Promise<{ status: number; headers: Headers; text: string }>;
}

const servers: Server[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) await new Promise((resolve) => server.close(resolve));
});

type ServerOptions = Partial<Pick<ConsoleOptions, 'listenHost' | 'hosts' | 'pageReads'>>;

async function startConsole(tokens: readonly ConsoleToken[], options: ServerOptions = {}): Promise<Console> {
  const seen: string[] = [];
  const log = createLogger({ level: 'debug', fd: 2, pretty: false, destination: new Writable({ write: (chunk, _enc, done) => (seen.push(String(chunk)), done()) }) });
  const context = () => ({ db: t.db, reconcilers: [ORDERS], loadErrors: [], log });
  const handler = createConsoleHandler({ log, tokens, context, listenHost: '127.0.0.1', ...options });
  const server = createServer((req, res) => void handler(req, res));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    seen,
    async request(path, init = {}) {
      const headers = new Headers(init.headers);
      if (init.cookie) headers.set('cookie', init.cookie);
      if (init.origin !== null && (init.method ?? 'GET') === 'POST') headers.set('origin', init.origin ?? url);
      const response = await fetch(`${url}${path}`, { ...init, headers, redirect: 'manual' });
      const text = await response.text();
      seen.push(JSON.stringify([...response.headers]), text);
      return { status: response.status, headers: response.headers, text };
    },
  };
}

/** A request with what fetch does not send: any Host header, a chosen local address (127.0.0.0/8 is all loopback). */
function raw(url: string, path: string, init: { method?: string; headers?: Record<string, string>; body?: string; localAddress?: string } = {}): Promise<{ status: number; headers: IncomingHttpHeaders; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${url}${path}`, { method: init.method ?? 'GET', headers: init.headers, localAddress: init.localAddress }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

/** Holds an exclusive lock on reconciler.failures (every page reads it) until released: pages wait on it as on a slow query. */
async function lockFailures(): Promise<{ release(): Promise<void> }> {
  const client = new pg.Client({ connectionString: t.url });
  await client.connect();
  await client.query('BEGIN');
  await client.query('LOCK TABLE reconciler.failures IN ACCESS EXCLUSIVE MODE');
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      await client.query('ROLLBACK');
      await client.end();
    },
  };
}

/** The flash cookie of a response, as a Cookie header. */
const flashOf = (headers: Headers) => /reconciler_flash=[^;]*/.exec(headers.get('set-cookie') ?? '')?.[0];

const form = (fields: Record<string, string>) => ({ method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(fields).toString() });
const json = (token: string, fields: Record<string, string>) => ({
  method: 'POST',
  headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
  body: JSON.stringify(fields),
});

/** Two failing items of `orders`: o-1 dead, o-2 in backoff. */
async function failingItems(): Promise<void> {
  await t.rows(sql`TRUNCATE reconciler.audit`);
  await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at) VALUES
    ('orders', 'o-1', 10, 'boom <script>alert(1)</script>', now() + interval '1 hour', now()),
    ('orders', 'o-2', 3, 'timeout', now() + interval '1 hour', NULL)`);
}
const dueNow = async (key: string) => (await t.rows<{ due: boolean }>(sql`SELECT next_attempt_at <= now() AND dead_at IS NULL AS due FROM reconciler.failures WHERE key = ${key}`))[0]?.due;
const auditRows = () => t.rows<{ actor: string; via: string; action: string; target: string; keys: string[]; note: string | null }>(sql`SELECT actor, via, action, target, keys, note FROM reconciler.audit ORDER BY id`);

/** Signs in as alice: the session cookie and the CSRF token the page's forms carry. */
async function signIn(c: Console): Promise<{ cookie: string; csrf: string }> {
  const response = await c.request('/sign-in', form({ token: ALICE, return_to: '/reconcilers/orders' }));
  expect(response.status, response.text).toBe(303);
  expect(response.headers.get('location')).toBe('/reconcilers/orders');
  const cookie = response.headers.get('set-cookie')!.split(';')[0]!;
  const page = await c.request('/', { cookie });
  expect(page.text).toContain('Signed in as <strong>alice</strong>');
  const csrf = /name="csrf" value="([^"]+)"/.exec(page.text)?.[1];
  expect(csrf).toBeTruthy();
  return { cookie, csrf: csrf! };
}

describe('the console handler', () => {
  it('sends the security headers with every response: pages, assets, refusals, not found', async () => {
    const c = await startConsole(TOKENS);
    for (const [path, init, status] of [['/', {}, 200], ['/assets/console.js', {}, 200], ['/nope', {}, 404], ['/sign-in', {}, 200], ['/reconcilers/orders/actions', form({ op: 'retry' }), 401]] as const) {
      const response = await c.request(path, init);
      expect(response.status, `${path}: ${response.text}`).toBe(status);
      expect(response.headers.get('content-security-policy'), path).toBe(CONTENT_SECURITY_POLICY);
      expect(response.headers.get('x-content-type-options'), path).toBe('nosniff');
      expect(response.headers.get('referrer-policy'), path).toBe('same-origin');
      expect(response.headers.get('x-frame-options'), path).toBe('DENY');
      expect(response.headers.get('cache-control'), path).toMatch(/no-store|no-cache/);
    }
    expect(CONTENT_SECURITY_POLICY).not.toMatch(/unsafe-inline|https?:/);
  });

  it('is read-only without tokens: every action answers 403, whatever credentials it brings, and changes nothing', async () => {
    await failingItems();
    const c = await startConsole([]);
    expect((await c.request('/')).text).toContain('Read-only');
    for (const init of [json(ALICE, { op: 'retry', scope: 'all' }), form({ op: 'retry', scope: 'all' })]) {
      const response = await c.request('/reconcilers/orders/actions', init);
      expect(response.status).toBe(403);
      expect(response.text).toContain(READ_ONLY);
    }
    expect((await c.request('/sign-in', form({ token: ALICE }))).status).toBe(403);
    expect(await dueNow('o-1')).toBe(false);
    expect(await auditRows()).toEqual([]);
  });

  it('signs in with a form: an HttpOnly, SameSite=Strict session cookie (Secure behind https), and signs out', async () => {
    const c = await startConsole(TOKENS);
    const response = await c.request('/sign-in', form({ token: ALICE, return_to: '//evil.example/x' }));
    expect(response.status).toBe(303);
    expect(response.headers.get('location')).toBe('/');
    const cookie = response.headers.get('set-cookie')!;
    expect(cookie).toMatch(/^reconciler_console=[\w-]+\.[\w-]+;/);
    for (const attribute of ['HttpOnly', 'SameSite=Strict', 'Path=/', 'Max-Age=28800']) expect(cookie).toContain(attribute);
    expect(cookie).not.toContain('Secure');
    const viaProxy = await c.request('/sign-in', { ...form({ token: ALICE }), headers: { ...form({}).headers, 'x-forwarded-proto': 'https' } });
    expect(viaProxy.headers.get('set-cookie')).toMatch(/; Secure/);

    const { cookie: session, csrf } = await signIn(c);
    expect((await c.request('/sign-out', { ...form({}), cookie: session })).status).toBe(403); // no CSRF token
    const out = await c.request('/sign-out', { ...form({ csrf }), cookie: session });
    expect(out.status).toBe(303);
    expect(out.headers.get('set-cookie')).toMatch(/^reconciler_console=;.*Max-Age=0/);
    // A forged or tampered cookie is no session.
    const [body, signature] = session.split('=')[1]!.split('.');
    const tampered = `reconciler_console=${Buffer.from(JSON.stringify({ n: 'ops-bot', e: 9e9, r: 'x' })).toString('base64url')}.${signature}`;
    expect((await c.request('/', { cookie: tampered })).text).not.toContain('Signed in as');
    expect(body).toBeTruthy();
  });

  it('refuses a wrong token with 401, then rate-limits the address with 429 and Retry-After, even for the right token', async () => {
    const c = await startConsole(TOKENS);
    for (let attempt = 1; attempt <= 5; attempt++) {
      const response = await c.request('/sign-in', form({ token: `wrong-token-${attempt}-0123456789` }));
      expect(response.status, `attempt ${attempt}`).toBe(401);
      expect(response.text).toContain('not one of CONSOLE_TOKENS');
      expect(response.headers.get('set-cookie')).toBeNull();
    }
    const limited = await c.request('/sign-in', form({ token: ALICE }));
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(limited.headers.get('set-cookie')).toBeNull();
    expect((await c.request('/reconcilers/orders/actions', json(BOT, { op: 'retry', scope: 'all' }))).status).toBe(429);
    const events = c.seen.filter((line) => line.includes('"console:sign-in"')).map((line) => JSON.parse(line) as { outcome: string });
    expect(events.map((e) => e.outcome)).toEqual(['refused', 'refused', 'refused', 'refused', 'refused', 'limited', 'limited']);
  });

  it('acts from a signed-in form only with the session CSRF token and from its own origin, and audits it under the token name', async () => {
    await failingItems();
    const c = await startConsole(TOKENS);
    const { cookie, csrf } = await signIn(c);
    const fields = { op: 'retry', scope: 'key', key: 'o-1', note: 'fixed upstream', return_to: '/reconcilers/orders?dead=1&done=old' };
    const refusals: [string, Parameters<Console['request']>[1]][] = [
      ['no csrf', { ...form(fields), cookie }],
      ['wrong csrf', { ...form({ ...fields, csrf: `${csrf.slice(0, -2)}xx` }), cookie }],
      ['another origin', { ...form({ ...fields, csrf }), cookie, origin: 'http://evil.example' }],
      ['no Origin nor Referer', { ...form({ ...fields, csrf }), cookie, origin: null }],
    ];
    for (const [what, init] of refusals) expect((await c.request('/reconcilers/orders/actions', init)).status, what).toBe(403);
    expect((await c.request('/reconcilers/orders/actions', form({ ...fields, csrf }))).status, 'no session').toBe(401);
    expect(await dueNow('o-1')).toBe(false);

    const done = await c.request('/reconcilers/orders/actions', { ...form({ ...fields, csrf }), cookie });
    expect(done.status, done.text).toBe(303);
    const location = new URL(done.headers.get('location')!, c.url);
    expect(location.pathname).toBe('/reconcilers/orders');
    expect(location.search).toBe('?dead=1'); // the outcome is not in the URL, and the old flash parameter is gone
    expect(await dueNow('o-1')).toBe(true);
    expect(await auditRows()).toEqual([{ actor: 'alice', via: 'console', action: 'retry', target: 'key o-1', keys: ['o-1'], note: 'fixed upstream' }]);
    // The outcome travels in a short-lived cookie that the next full page shows once and clears.
    const setFlash = done.headers.get('set-cookie')!;
    for (const attribute of ['HttpOnly', 'SameSite=Strict', 'Path=/', 'Max-Age=60']) expect(setFlash).toContain(attribute);
    const flash = flashOf(done.headers)!;
    const fragment = await c.request(`${location.pathname}${location.search}`, { cookie: `${cookie}; ${flash}`, headers: { 'x-console-fragment': '1' } });
    expect(fragment.text).not.toContain('due now'); // a live update neither shows nor clears it
    expect(fragment.headers.get('set-cookie')).toBeNull();
    const page = await c.request(`${location.pathname}${location.search}`, { cookie: `${cookie}; ${flash}` });
    expect(page.text).toMatch(/<p class="flash flash-ok" role="status">1 item\(s\) of orders due now/);
    expect(page.headers.get('set-cookie')).toMatch(/^reconciler_flash=;.*Max-Age=0/);

    const refused = await c.request('/reconcilers/orders/actions', { ...form({ op: 'clear', scope: 'key', key: 'missing', csrf, return_to: '/' }), cookie });
    expect(refused.status).toBe(303);
    expect(refused.headers.get('location')).toBe('/');
    const shown = await c.request('/', { cookie: `${cookie}; ${flashOf(refused.headers)!}` });
    expect(shown.text).toMatch(/<p class="flash flash-bad" role="alert">[^<]*no failing item/);
  });

  it('takes a bearer token from a script: JSON back, the token name in the audit record, refusals as JSON with their status', async () => {
    await failingItems();
    const c = await startConsole(TOKENS);
    const retried = await c.request('/reconcilers/orders/actions', { ...json(BOT, { op: 'retry', scope: 'all', note: 'provider back' }), origin: null });
    expect(retried.status, retried.text).toBe(200);
    const body = JSON.parse(retried.text) as { ok: boolean; result: string; keys: string[]; count: number; auditId: number };
    expect(body).toMatchObject({ ok: true, count: 2, keys: expect.arrayContaining(['o-1', 'o-2']) as unknown });
    expect(body.auditId).toBeGreaterThan(0);
    expect(await auditRows()).toEqual([{ actor: 'ops-bot', via: 'console', action: 'retry', target: 'all', keys: expect.arrayContaining(['o-1', 'o-2']) as unknown, note: 'provider back' }]);

    const acted = await c.request('/reconcilers/orders/actions', json(BOT, { op: 'act', key: 'o-9', action: 'settle-by-hand', note: 'refunded by phone' }));
    expect(JSON.parse(acted.text)).toMatchObject({ ok: true, result: 'settled o-9 by hand' });
    expect((await auditRows()).at(-1)).toMatchObject({ actor: 'ops-bot', action: 'act:settle-by-hand', note: 'refunded by phone' });

    const expectError = async (init: RequestInit & { origin?: string }, status: number, pattern: RegExp, path = '/reconcilers/orders/actions') => {
      const response = await c.request(path, init);
      expect(response.status, response.text).toBe(status);
      expect((JSON.parse(response.text) as { error: string }).error).toMatch(pattern);
    };
    await expectError(json(BOT, { op: 'act', key: 'o-9', action: 'settle-by-hand' }), 400, /note is required/);
    await expectError(json(BOT, { op: 'explode', scope: 'all' }), 400, /op must be one of/);
    await expectError(json(BOT, { op: 'retry', scope: 'key', key: 'nope' }), 404, /no failing item/);
    await expectError(json(BOT, { op: 'retry', scope: 'all' }), 404, /unknown reconciler/, '/reconcilers/ghost/actions');
    await expectError({ ...json(BOT, { op: 'retry', scope: 'all' }), origin: 'http://evil.example' }, 403, /another origin/);
    await expectError(json('not-a-token-0123456789', { op: 'retry', scope: 'all' }), 401, /not one of CONSOLE_TOKENS/);
    await expectError(json(BOT, { op: 'retry', scope: 'all', note: 'x'.repeat(17_000) }), 413, /larger than 16 KiB/);
  });

  it('never shows a token: not in pages, headers, refusals or log lines', async () => {
    await failingItems();
    const c = await startConsole(TOKENS);
    const { cookie } = await signIn(c);
    await c.request('/', { cookie });
    await c.request('/reconcilers/orders', { cookie });
    await c.request('/reconcilers/orders/items/o-1', { cookie });
    await c.request('/sign-in', form({ token: `${ALICE}x` }));
    await c.request('/reconcilers/orders/actions', json(BOT, { op: 'retry', scope: 'all' }));
    await c.request('/reconcilers/orders/actions', json(`${BOT}x`, { op: 'retry', scope: 'all' }));
    const everything = c.seen.join('\n');
    expect(everything).toContain('"operator:action"');
    expect(everything).not.toContain(ALICE);
    expect(everything).not.toContain(BOT);
    expect(everything).not.toContain('<script>alert(1)');
  });
});

describe('the console after the security review', () => {
  it('reads each page in a snapshot whose statements time out: a slow page answers 503 and says so, rather than holding a connection', async () => {
    const c = await startConsole(TOKENS, { pageReads: { atOnce: 2, queue: 20, timeoutMs: 300 } });
    const lock = await lockFailures();
    try {
      for (const headers of [{}, { 'x-console-fragment': '1' }] as Record<string, string>[]) {
        const page = await c.request('/', { headers });
        expect(page.status, page.text).toBe(503);
        expect(page.text).toContain('the page took too long to read (over 300 ms): try a narrower filter');
      }
    } finally {
      await lock.release();
    }
    expect((await c.request('/')).status).toBe(200);
    expect(c.seen.join('\n')).not.toContain('"level":40'); // an answer, not a failure to warn about
  });

  it('renders at most two pages at once; twenty more wait their turn, further ones get 503 with Retry-After: 5', async () => {
    const c = await startConsole([]);
    const lockWaiters = async () => Number((await t.rows<{ n: string }>(sql`SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`))[0]!.n);
    const lock = await lockFailures();
    let answers: Awaited<ReturnType<Console['request']>>[];
    try {
      const settled: Awaited<ReturnType<Console['request']>>[] = [];
      const requests = Array.from({ length: 30 }, () => c.request('/').then((response) => (settled.push(response), response)));
      await until(async () => settled.length >= 8, 'the requests past the queue to be refused');
      expect(settled.map((r) => [r.status, r.headers.get('retry-after')])).toEqual(Array.from({ length: 8 }, () => [503, '5']));
      expect(settled[0]!.text).toContain('the console is busy');
      // The two renders hold one connection each, waiting on the lock; the twenty others hold none.
      await until(async () => (await lockWaiters()) === 2, 'two renders to wait on the lock');
      expect(settled).toHaveLength(8);
      await lock.release();
      answers = await Promise.all(requests);
    } finally {
      await lock.release();
    }
    expect(answers.filter((r) => r.status === 200)).toHaveLength(22);
    expect(answers.filter((r) => r.status === 503)).toHaveLength(8);
  });

  it('does not lock out the right token when many addresses guess: only the guessing address is limited', async () => {
    const c = await startConsole(TOKENS);
    const signIn = (token: string, localAddress: string) =>
      raw(c.url, '/sign-in', { method: 'POST', localAddress, body: new URLSearchParams({ token }).toString(), headers: { origin: c.url, 'content-type': 'application/x-www-form-urlencoded' } });
    for (let address = 2; address <= 11; address++) {
      for (let attempt = 1; attempt <= 5; attempt++) expect((await signIn(`wrong-token-${attempt}-0123456789`, `127.0.0.${address}`)).status).toBe(401);
    }
    // 50 failures in the minute: the overall limit. A new address's wrong token is refused, its right one signs in.
    expect((await signIn('wrong-token-x-0123456789', '127.0.0.12')).status).toBe(429);
    const right = await signIn(ALICE, '127.0.0.12');
    expect(right.status, right.text).toBe(303);
    expect(String(right.headers['set-cookie'])).toMatch(/^reconciler_console=/);
    const bearer = await raw(c.url, '/reconcilers/orders/actions', { method: 'POST', localAddress: '127.0.0.13', body: '{"op":"retry","scope":"all"}', headers: { authorization: `Bearer ${BOT}`, 'content-type': 'application/json' } });
    expect(bearer.status, bearer.text).toBe(200);
    // An address past its own limit is refused before any token is compared, the right one too.
    expect((await signIn(ALICE, '127.0.0.2')).status).toBe(429);
  });

  it('answers only its own host names: loopback names when bound to loopback, CONSOLE_HOSTS when set, any when bound to every address', async () => {
    const get = async (c: Console, host: string) => (await raw(c.url, '/', { headers: { host } })).status;
    const loopback = await startConsole(TOKENS);
    for (const host of ['localhost:28417', '127.0.0.1', '[::1]:8081']) expect(await get(loopback, host), host).toBe(200);
    const rebound = await raw(loopback.url, '/audit', { headers: { host: 'attacker.example:28417' } });
    expect(rebound.status).toBe(421);
    expect(rebound.text).toBe('unknown host: set CONSOLE_HOSTS\n');
    const signIn = await raw(loopback.url, '/sign-in', { method: 'POST', body: `token=${ALICE}`, headers: { host: 'attacker.example', origin: 'http://attacker.example', 'content-type': 'application/x-www-form-urlencoded' } });
    expect(signIn.status).toBe(421);
    expect(signIn.headers['set-cookie']).toBeUndefined();

    expect(await get(await startConsole(TOKENS, { listenHost: '0.0.0.0' }), 'attacker.example')).toBe(200);
    const named = await startConsole(TOKENS, { listenHost: '0.0.0.0', hosts: ['console.example.com'] });
    expect(await get(named, 'console.example.com:443')).toBe(200);
    expect(await get(named, 'CONSOLE.example.com')).toBe(200);
    expect(await get(named, 'attacker.example')).toBe(421);
    expect(await get(named, 'localhost')).toBe(421);
  });

  it('behind an authenticating proxy: a session acts whatever Authorization the proxy adds; JSON only when asked for or signed in by bearer', async () => {
    await failingItems();
    const c = await startConsole(TOKENS);
    const { cookie, csrf } = await signIn(c);
    const fields = { op: 'retry', scope: 'key', key: 'o-2', csrf, return_to: '/reconcilers/orders' };
    for (const authorization of ['Basic dXNlcjpwYXNzd29yZA==', 'Bearer oauth2-proxy-access-token-0123456789']) {
      const response = await c.request('/reconcilers/orders/actions', { ...form(fields), cookie, headers: { ...form({}).headers, authorization } });
      expect(response.status, `${authorization}: ${response.text}`).toBe(303);
      expect(response.headers.get('location')).toBe('/reconcilers/orders');
    }
    expect(c.seen.filter((line) => line.includes('"console:sign-in"') && line.includes('"refused"'))).toEqual([]);
    expect((await auditRows()).map((r) => r.actor)).toEqual(['alice', 'alice']);
    const asked = await c.request('/reconcilers/orders/actions', { ...form(fields), cookie, headers: { ...form({}).headers, accept: 'application/json' } });
    expect(JSON.parse(asked.text)).toMatchObject({ ok: true, keys: ['o-2'] });
    const sent = await c.request('/reconcilers/orders/actions', { method: 'POST', body: JSON.stringify(fields), cookie, headers: { 'content-type': 'application/json' } });
    expect(JSON.parse(sent.text)).toMatchObject({ ok: true, keys: ['o-2'] });
    // Without a session, Basic credentials are no console token: a plain refusal, not JSON, and no failed sign-in.
    const basic = await c.request('/reconcilers/orders/actions', { ...form(fields), headers: { ...form({}).headers, authorization: 'Basic dXNlcjpwYXNzd29yZA==' } });
    expect(basic.status).toBe(401);
    expect(basic.headers.get('content-type')).toMatch(/^text\/plain/);
  });

  it('answers a malformed name with 404 and a malformed form with 400, without a warning', async () => {
    await failingItems();
    const c = await startConsole(TOKENS);
    const { cookie, csrf } = await signIn(c);
    const path = await c.request('/reconcilers/%E0%A4%A/actions', json(BOT, { op: 'retry', scope: 'all' }));
    expect(path.status, path.text).toBe(404);
    expect((await c.request('/reconcilers/%E0%A4%A')).status).toBe(404);
    const body = await c.request('/reconcilers/orders/actions', { method: 'POST', body: `op=retry&scope=key&key=%E0%A4%A&csrf=${encodeURIComponent(csrf)}`, cookie, headers: form({}).headers });
    expect(body.status, body.text).toBe(400);
    expect(body.text).toContain('not valid URL encoding');
    expect(c.seen.filter((line) => line.includes('"level":40') || line.includes('URI malformed'))).toEqual([]);
  });

  it('shows no flash from the URL: a link cannot put an official-looking line above a page', async () => {
    const c = await startConsole(TOKENS);
    const page = await c.request(`/?error=${encodeURIComponent('Your session expired, sign in at https://evil.example')}&done=${encodeURIComponent('all clear')}`);
    expect(page.status).toBe(200);
    expect(page.text).not.toContain('evil.example');
    expect(page.text).not.toContain('all clear');
    expect(page.text).not.toContain('class="flash');
  });

  it('narrows a group or all to the dead items with the field dead, refuses it for one key, and answers bulk actions with 100 keys and a count', async () => {
    await failingItems();
    const c = await startConsole(TOKENS);
    const dead = await c.request('/reconcilers/orders/actions', json(BOT, { op: 'retry', scope: 'all', dead: '1' }));
    expect(JSON.parse(dead.text)).toMatchObject({ ok: true, count: 1, keys: ['o-1'] });
    expect(await dueNow('o-2')).toBe(false);
    expect((await auditRows()).at(-1)).toMatchObject({ target: 'all dead', keys: ['o-1'] });
    for (const [fields, pattern] of [[{ op: 'retry', scope: 'key', key: 'o-2', dead: 'true' }, /scope group or all/], [{ op: 'retry', scope: 'all', dead: 'yes' }, /dead must be/]] as const) {
      const refused = await c.request('/reconcilers/orders/actions', json(BOT, fields));
      expect(refused.status).toBe(400);
      expect((JSON.parse(refused.text) as { error: string }).error).toMatch(pattern);
    }

    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at)
      SELECT 'orders', 'bulk-' || n, 1, 'timeout', now() + interval '1 hour' FROM generate_series(1, 150) AS n`);
    const bulk = await c.request('/reconcilers/orders/actions', json(BOT, { op: 'clear', scope: 'all' }));
    const answer = JSON.parse(bulk.text) as { count: number; keys: string[] };
    expect(answer.count).toBe(152);
    expect(answer.keys).toHaveLength(100);
    expect((await auditRows()).at(-1)!.keys).toHaveLength(152);
  });
});

describe('the console in processes', () => {
  const endpoint = async (child: RunningProcess) => String((await child.waitForEvent('http:listening')).url);
  const jobs = () => {
    const dir = jobsDir({
      'orders.ts': `import { defineReconciler } from ${JSON.stringify(API)};
export default defineReconciler({ schedule: '0 0 1 1 *', scan: async function* () {}, key: (i) => String(i), reconcile: async () => 'unchanged' });`,
    });
    dirs.push(dir);
    return dir.dir;
  };
  const daemon = (env: Record<string, string>) => {
    const child = startProcess(['daemon'], { LOG_LEVEL: 'info', ...env });
    children.push(child);
    return child;
  };

  it('the daemon serves the console beside its probes, and no log line or CLI output shows a token', async () => {
    const child = daemon({ DATABASE_URL: t.url, JOBS_DIR: jobs(), CONSOLE_TOKENS: TOKENS_ENV });
    const url = await endpoint(child);
    // Its catch-up pass (it never ran) forgets failures its empty scan does not find: the failures come after it.
    await child.waitForEvent('pass:finish', { reconciler: 'orders' });
    await failingItems();
    const page = await fetch(`${url}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-security-policy')).toBe(CONTENT_SECURITY_POLICY);
    expect(await page.text()).toContain('orders');
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect((await fetch(`${url}/metrics`, { method: 'POST' })).status).toBe(405);
    const retried = await fetch(`${url}/reconcilers/orders/actions`, json(ALICE, { op: 'retry', scope: 'key', key: 'o-2' }));
    expect(retried.status).toBe(200);
    expect((await auditRows()).map((r) => r.actor)).toEqual(['alice']);
    await child.waitForEvent('operator:action', { actor: 'alice' });
    // The action starts a pass at once (its schedule is yearly): the scan no longer finds the items, so their failures go now.
    await child.waitForEvent('pass:finish', { reconciler: 'orders', trigger: 'wake' });
    expect(await t.rows(sql`SELECT key FROM reconciler.failures WHERE reconciler = 'orders'`)).toEqual([]);
    const config = await runCli(['config'], { DATABASE_URL: t.url, CONSOLE_TOKENS: TOKENS_ENV });
    expect(config.stdout).toMatch(/CONSOLE_TOKENS\s+alice, ops-bot \(tokens hidden\)/);
    for (const text of [child.stdoutText.join('\n'), child.stderr, config.stdout, config.stderr]) {
      expect(text).not.toContain(ALICE);
      expect(text).not.toContain(BOT);
    }
  });

  it('a bad CONSOLE_TOKENS is one line that names the problem and never the token; CONSOLE=off answers 404 at /', async () => {
    const bad = await runCli(['config'], { DATABASE_URL: t.url, CONSOLE_TOKENS: 'alice:k9Zq2,Bob-Token-0123456789abcdef' });
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    expect(bad.stderr).toMatch(/invalid CONSOLE_TOKENS: the token of alice is shorter than 16 characters; entry 2 is not name:token/);
    expect(bad.stderr).not.toContain('k9Zq2');
    expect(bad.stderr).not.toContain('Bob-Token');
    // A token too short to be one is not masked as a secret: it would mangle ordinary words of the message.
    const short = await runCli(['config'], { DATABASE_URL: t.url, CONSOLE_TOKENS: 'alice:short' });
    expect(short.stderr.trim()).toBe('reconciler: invalid CONSOLE_TOKENS: the token of alice is shorter than 16 characters (expected name:token pairs separated by commas, each token at least 16 characters)');
    const hosts = await runCli(['config'], { DATABASE_URL: t.url, CONSOLE_HOSTS: 'console.example.com:443, bad host' });
    expect(hosts.code).toBe(2);
    expect(hosts.stderr.trim()).toBe('reconciler: invalid CONSOLE_HOSTS (got "console.example.com:443, bad host"): "bad host" is not a host name (expected names such as console.example.com or console.example.com:443, separated by commas)');

    const child = daemon({ DATABASE_URL: t.url, JOBS_DIR: jobs(), CONSOLE: 'off' });
    const url = await endpoint(child);
    const root = await fetch(`${url}/`);
    expect(root.status).toBe(404);
    expect(await root.text()).toContain('the console is off (CONSOLE=off)');
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
  });

  it('the daemon console answers 503 while it waits for its database, and only CONSOLE_HOSTS; its probes answer any host', async () => {
    const child = daemon({ DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/nowhere`, JOBS_DIR: jobs(), CONSOLE_HOSTS: 'console.example.com' });
    const url = await endpoint(child);
    await child.waitForEvent('database:waiting');
    const page = await raw(url, '/', { headers: { host: 'console.example.com' } });
    expect(page.status).toBe(503);
    expect(page.text).toContain('waiting for the database');
    expect((await raw(url, '/', { headers: { host: 'attacker.example' } })).status).toBe(421);
    expect((await raw(url, '/healthz', { headers: { host: 'attacker.example' } })).status).toBe(200);
    const config = await runCli(['config'], { DATABASE_URL: t.url, CONSOLE_HOSTS: 'Console.example.com:443,[::1]' });
    expect(config.stdout).toMatch(/CONSOLE_HOSTS\s+console\.example\.com, \[::1\]\n/);
  });

  it('`reconciler console` serves the console on its own and stops on SIGTERM', async () => {
    const child = startProcess(['console', '--port', '0'], { DATABASE_URL: t.url, JOBS_DIR: jobs(), CONSOLE_TOKENS: TOKENS_ENV });
    children.push(child);
    const url = String((await child.waitForEvent('console:listening')).url);
    expect(child.stdoutText[0]).toBe(`console on ${url} (actions need sign-in)`);
    const page = await fetch(`${url}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('orders');
    expect((await raw(url, '/', { headers: { host: 'attacker.example' } })).status).toBe(421); // bound to loopback: loopback names only
    child.child.kill('SIGTERM');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(child.events('console:stopped')).toHaveLength(1);
  });

  it('`reconciler console` on a busy port exits 2 with one line', async () => {
    const busy = createTcpServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const port = (busy.address() as AddressInfo).port;
    try {
      const result = await runCli(['console', '--port', String(port)], { DATABASE_URL: t.url, JOBS_DIR: jobs() });
      expect(result.code).toBe(2);
      expect(result.stderr.trim().split('\n')).toEqual([`reconciler: cannot serve the console on 127.0.0.1:${port} (EADDRINUSE): choose another port with --port`]);
    } finally {
      busy.close();
    }
  });

  it('`reconciler console` on an embedded database that a daemon holds exits 2, pointing at the daemon\'s console', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'console-embedded-'));
    try {
      const child = daemon({ DATA_DIR: dataDir, JOBS_DIR: jobs() });
      await child.waitForEvent('daemon:started', {}, 60_000);
      const result = await runCli(['console', '--port', '0'], { DATA_DIR: dataDir, JOBS_DIR: jobs() });
      expect(result.code).toBe(2);
      const lines = result.stderr.trim().split('\n');
      expect(lines, result.stderr).toHaveLength(1);
      expect(lines[0]).toBe(`reconciler: the embedded database is open in another process (pid ${child.pid}, in ${dataDir}): use the daemon's console on its HTTP_PORT, or set DATABASE_URL to a PostgreSQL server both can share`);
    } finally {
      await Promise.all(children.splice(0).map((child) => child.kill('SIGTERM')));
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000);
});
