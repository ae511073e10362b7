/**
 * The console in a real browser (headless Debian Chromium driven by playwright-core) against a
 * real daemon on a real database: the overview with reconcilers in several states, a dead item
 * found, signed in for and resolved by hand, hostile keys and errors shown as text, refused
 * actions, and canary secrets on no page. Waits on the daemon's log events and on the page, never
 * on a timer.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import type { Browser, BrowserContext, Page, Route } from 'playwright-core';
import { useTestDatabase } from './helpers/db.js';
import type { RunningProcess } from './helpers/processes.js';
import { CANARY, CONSOLE_FIXTURE_SQL, MANUAL_ACTION, XSS_ERROR, XSS_KEY, launchChromium, startConsoleDaemon, type ConsoleDaemon } from '../testkit/console.js';

const t = useTestDatabase();
let served: ConsoleDaemon;
let daemon: RunningProcess;
let browser: Browser;
let base: string;
/** Every page's HTML the tests saw, for the canary check. */
const seen = new Map<string, string>();

/** The page's globals these tests touch (the project compiles without the DOM's types). */
interface PageGlobals {
  marker?: string;
  before?: string;
  document: { querySelector(selector: string): { innerHTML: string } | null; getElementById(id: string): { textContent: string } | null };
}

/** What the test's wrapper of `fetch` counts in the page: the live-update script's requests. */
interface FetchProbe {
  fetches: number;
  inFlight: number;
  maxInFlight: number;
}

interface Watched {
  page: Page;
  dialogs: string[];
  errors: string[];
}

/** A page that records dialogs (dismissed) and console errors (a CSP violation is one). */
async function open(context: BrowserContext): Promise<Watched> {
  const page = await context.newPage();
  const watched: Watched = { page, dialogs: [], errors: [] };
  page.on('dialog', (dialog) => {
    watched.dialogs.push(dialog.message());
    void dialog.dismiss();
  });
  page.on('console', (message) => {
    if (message.type() === 'error') watched.errors.push(message.text());
  });
  page.on('pageerror', (error) => watched.errors.push(error.message));
  return watched;
}

async function visit(page: Page, path: string): Promise<void> {
  const response = await page.goto(`${base}${path}`);
  expect(response?.status(), path).toBe(200);
  seen.set(page.url(), await page.content());
}

const itemPath = (key: string) => `/reconcilers/shipments/item?key=${encodeURIComponent(key)}`;

/** Resolves once `count` passes of `reconciler` have finished after `since` (epoch ms): the last of them started after it. */
function passesAfter(reconciler: string, since: number, count: number): Promise<unknown> {
  const after = () => daemon.events('pass:finish', { reconciler }).filter((line) => Number(line.time) > since).length;
  return daemon.waitFor(() => after() >= count, `${count} passes of ${reconciler} after the action`, 20_000);
}

async function signIn(w: Watched): Promise<void> {
  await w.page.getByRole('link', { name: 'Sign in to act' }).first().click();
  await w.page.locator('#token').fill(CANARY.consoleToken);
  await w.page.getByRole('button', { name: 'Sign in' }).click();
  await w.page.getByText('Signed in as').waitFor();
}

beforeAll(async () => {
  await t.rows(sql.raw(CONSOLE_FIXTURE_SQL));
  [served, browser] = await Promise.all([startConsoleDaemon(t.url), launchChromium()]);
  ({ daemon, base } = served);
});

afterAll(async () => {
  await browser?.close();
  await served?.stop();
});

describe('the console in a browser', () => {
  it('shows every reconciler and what is stuck first, and updates live without a reload', async () => {
    const context = await browser.newContext();
    const w = await open(context);
    await visit(w.page, '/');
    const attention = await w.page.locator('section.attention').innerText();
    expect(attention).toMatch(/invoices: its passes fail since \d\d:\d\d:\d\d UTC \((just now|.+ ago)\)/);
    expect(attention).toMatch(/shipments: 4 dead items, waiting for a person/);
    const rows = await w.page.locator('table.lanes tbody th[scope=row] a').allInnerTexts();
    expect(rows.indexOf('invoices-sent')).toBeGreaterThan(Math.max(rows.indexOf('invoices'), rows.indexOf('shipments')));
    expect(await w.page.locator('figure.chart svg').count()).toBeGreaterThan(0);
    expect(await w.page.locator('time[title$=" UTC"]').count()).toBeGreaterThan(0);

    // Functions, not strings: the console's CSP forbids eval, which a string predicate needs.
    await w.page.evaluate(() => {
      const g = globalThis as unknown as PageGlobals;
      g.marker = 'no reload';
      g.before = g.document.querySelector('main')!.innerHTML;
    });
    await w.page.waitForFunction(() => {
      const g = globalThis as unknown as PageGlobals;
      return /^Live: updated/.test(g.document.getElementById('live')!.textContent) && g.document.querySelector('main')!.innerHTML !== g.before;
    }, undefined, { timeout: 15_000 });
    expect(await w.page.evaluate('window.marker')).toBe('no reload');
    expect(w.errors).toEqual([]);
    await context.close();
  });

  it('shows a hostile key and error as text, and runs nothing', async () => {
    const context = await browser.newContext();
    const w = await open(context);
    for (const path of ['/', '/reconcilers/shipments?dead=1', itemPath(XSS_KEY)]) {
      await visit(w.page, path);
      expect(await w.page.evaluate('window.__xss'), path).toBeUndefined();
    }
    expect(await w.page.locator('h1.key').innerText()).toBe(XSS_KEY);
    expect(await w.page.locator('pre.error.full').innerText()).toContain(XSS_ERROR);
    expect(await w.page.locator('main img, main script').count()).toBe(0);
    for (const key of ['..', '.', '%2e%2e']) {
      await visit(w.page, itemPath(key)); // in a path, the browser would resolve these away before asking
      expect(await w.page.locator('h1.key').innerText(), key).toBe(key);
    }
    expect(w.dialogs).toEqual([]);
    expect(w.errors).toEqual([]);
    await context.close();
  });

  it('finds a dead item by its error group, resolves it by hand with a note, and sees it leave after the next pass', async () => {
    const context = await browser.newContext();
    const w = await open(context);
    await visit(w.page, '/');
    await w.page.locator('section.attention a', { hasText: 'shipments' }).first().click();
    const group = w.page.locator('table.groups tr', { hasText: 'carrier refused the booking' });
    await group.locator('a', { hasText: /^order-/ }).first().click();
    const key = await w.page.locator('h1.key').innerText();
    expect(key).toMatch(/^order-100\d$/);
    expect(await w.page.locator('dl.facts').innerText()).toContain('dead');

    await signIn(w);
    expect(w.page.url()).toBe(`${base}${itemPath(key)}`);
    const note = 'booked by phone with the carrier, ticket <b>4711</b>';
    const form = w.page.locator('form.manual', { hasText: MANUAL_ACTION });
    await form.locator('textarea').fill(note);
    await w.page.getByText('Live updates paused while you type').waitFor(); // what was typed is not swapped away
    const acted = Date.now();
    await form.getByRole('button', { name: MANUAL_ACTION }).click();
    await w.page.locator('.flash-ok').waitFor();
    expect(await w.page.locator('.flash-ok').innerText()).toContain(`${key} marked as shipped by hand`);
    const audit = await w.page.locator('table.audit tbody').innerText();
    expect(audit).toContain('oncall');
    expect(audit).toContain(`act:${MANUAL_ACTION}`);
    expect(audit).toContain(note);

    await passesAfter('shipments', acted, 2);
    await visit(w.page, '/reconcilers/shipments?dead=1');
    expect(await w.page.locator('table.items').innerText()).not.toContain(key);
    await visit(w.page, itemPath(key));
    expect(await w.page.locator('main').innerText()).toContain('Not failing');
    expect(await t.rows<{ shipped_by: string }>(sql`SELECT shipped_by FROM shipments WHERE name = ${key}`)).toEqual([{ shipped_by: 'oncall' }]);
    expect(w.dialogs).toEqual([]);
    expect(w.errors).toEqual([]);
    await context.close();
  });

  it('refreshes one request at a time, waits longer when the console is slow, backs off after failures, and swaps in only a 200 page', async () => {
    const context = await browser.newContext();
    const w = await open(context);
    const page = w.page;
    await page.clock.install();
    // Counts the script's requests, at the page's (fake) time: nothing else in the page fetches.
    await page.addInitScript(() => {
      const g = globalThis as unknown as FetchProbe & { fetch: (...args: unknown[]) => Promise<unknown> };
      const real = g.fetch.bind(g);
      Object.assign(g, { fetches: 0, inFlight: 0, maxInFlight: 0 });
      g.fetch = (...args) => {
        g.fetches += 1;
        g.inFlight += 1;
        g.maxInFlight = Math.max(g.maxInFlight, g.inFlight);
        return real(...args).finally(() => (g.inFlight -= 1));
      };
    });
    const held: Route[] = [];
    let waiting: ((route: Route) => void) | undefined;
    await page.route(`${base}/`, (route) => {
      if (route.request().headers()['x-console-fragment'] !== '1') return route.continue();
      if (waiting) waiting(route);
      else held.push(route);
      waiting = undefined;
    });
    const nextRequest = () => (held.length > 0 ? Promise.resolve(held.shift()!) : new Promise<Route>((resolve) => (waiting = resolve)));
    const probe = () =>
      page.evaluate(() => {
        const { fetches, maxInFlight } = globalThis as unknown as FetchProbe;
        return { fetches, maxInFlight };
      });
    const requestsAfter = async (ms: number) => (await page.clock.runFor(ms), (await probe()).fetches);
    const live = (text: string) => page.locator('#live', { hasText: text }).waitFor({ timeout: 5_000 });
    const main = () => page.locator('main').innerHTML();

    await visit(page, '/');
    await page.clock.pauseAt((await page.evaluate(() => Date.now())) + 500);
    expect(await requestsAfter(2_000)).toBe(0);
    expect(await requestsAfter(3_000)).toBe(1); // 5 s after the page loaded
    (await nextRequest()).fulfill({ status: 503, contentType: 'text/plain', body: 'the console is waiting for the database' });
    await live('The console answered HTTP 503 (text/plain), retrying in 10 s');
    expect(await main()).not.toContain('waiting for the database');

    expect(await requestsAfter(9_000)).toBe(1); // backs off: 10 s after the first failure
    expect(await requestsAfter(1_000)).toBe(2);
    const slow = await nextRequest();
    expect(await requestsAfter(8_000)).toBe(2); // an answer takes 8 s: no second request meanwhile
    await slow.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: '<h1>Overview</h1><p id="swapped">the new main</p>' });
    await live('Live: updated just now, next in 32 s (the console answers slowly)');
    expect(await main()).toContain('the new main');

    expect(await requestsAfter(31_000)).toBe(2); // 4 times as long as the answer took
    expect(await requestsAfter(1_000)).toBe(3);
    await (await nextRequest()).fulfill({ status: 200, contentType: 'application/json', body: '{"error":"not a page"}' });
    await live('The console answered HTTP 200 (application/json), retrying in 10 s');
    expect(await main()).not.toContain('not a page');

    expect(await requestsAfter(10_000)).toBe(4);
    await (await nextRequest()).abort('connectionrefused');
    await live('Connection lost, retrying in 20 s');
    expect(await main()).toContain('the new main');

    expect(await requestsAfter(19_000)).toBe(4);
    expect(await requestsAfter(1_000)).toBe(5);
    await (await nextRequest()).continue(); // the console answers again: the real page, and every 5 s again
    await live('Live: updated just now');
    expect(await main()).toContain('table class="lanes"');
    expect(await requestsAfter(5_000)).toBe(6);
    await (await nextRequest()).continue();
    expect((await probe()).maxInFlight).toBe(1);
    expect(w.errors.filter((e) => !/503|Failed to load resource/.test(e))).toEqual([]);
    await context.close();
  });

  it('refuses an action without the CSRF token, from another origin, or without a session', async () => {
    const context = await browser.newContext();
    const w = await open(context);
    await visit(w.page, itemPath(XSS_KEY));
    await signIn(w);
    const csrf = await w.page.locator('input[name=csrf]').first().inputValue();
    const audited = async () => (await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM reconciler.audit`))[0]!.n;
    const before = await audited();
    const url = `${base}/reconcilers/shipments/actions`;
    const form = { op: 'retry', scope: 'key', key: XSS_KEY, return_to: '/' };
    const post = (request: typeof context.request, fields: Record<string, string>, origin: string) => request.post(url, { form: fields, headers: { origin }, maxRedirects: 0 });

    expect((await post(context.request, form, base)).status()).toBe(403);
    expect((await post(context.request, { ...form, csrf }, 'http://attacker.example')).status()).toBe(403);
    const stranger = await browser.newContext();
    expect((await post(stranger.request, { ...form, csrf }, base)).status()).toBe(401);
    expect(await audited()).toBe(before);

    // A destructive button asks first; dismissed, nothing is sent.
    await w.page.getByRole('button', { name: 'Clear (forget the failure)' }).click();
    expect(w.dialogs).toEqual([`Forget the failure of ${XSS_KEY}? The next pass tries it again from attempt 1.`]);
    expect(await audited()).toBe(before);

    // The same request with the token and from the console's own origin goes through: the refusals above were about those two.
    const accepted = await post(context.request, { ...form, csrf }, base);
    expect(accepted.status()).toBe(303);
    expect(await audited()).toBe(before + 1);
    await stranger.close();
    await context.close();
  });

  it('shows no secret on any page, and masks the ones an error carried', async () => {
    const context = await browser.newContext();
    const w = await open(context);
    await visit(w.page, '/reconcilers/invoices');
    const passErrors = await w.page.locator('section.attention').innerText();
    expect(passErrors).toContain('invoice queue unreadable');
    expect(passErrors).toMatch(/\*\*\*|\[redacted\]/);
    await signIn(w);
    for (const path of ['/', '/audit', '/reconcilers/invoices-sent', '/reconcilers/shipments', '/reconcilers/shipments?dead=1', itemPath(XSS_KEY), '/sign-in']) await visit(w.page, path);
    const fragment = await context.request.get(`${base}/`, { headers: { 'x-console-fragment': '1' } });
    seen.set('fragment', await fragment.text());
    const secrets = Object.values(CANARY).flatMap((s) => [s, encodeURIComponent(s)]);
    for (const [page, html] of seen) for (const secret of secrets) expect(html.includes(secret), `${secret} on ${page}`).toBe(false);
    expect(seen.size).toBeGreaterThan(8);
    await context.close();
  });
});
