/**
 * The console's pages: each page from hand-made read models (escaping of every string from the
 * database, the CSP's rules: no inline script, style or handler; which action forms show to
 * whom), and the routes of `renderPage` over a real database. The browser test runs them for real.
 */
import { describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { dayOfBuckets } from '../src/console/chart.js';
import { html, raw } from '../src/console/html.js';
import { auditPage } from '../src/console/pages/audit.js';
import { asset, renderPage, renderSignIn, type PageRequest } from '../src/console/pages/index.js';
import { itemPage } from '../src/console/pages/item.js';
import { layout, type Viewer } from '../src/console/pages/layout.js';
import type { AuditRow, FailingItem, LaneView, Overview } from '../src/console/pages/model.js';
import { overviewPage } from '../src/console/pages/overview.js';
import { reconcilerPage, type ReconcilerModel } from '../src/console/pages/reconciler.js';
import { defineReconciler, resolveReconciler, type Reconciler } from '../src/reconciler.js';
import { retryItems } from '../src/operator/actions.js';
import { useTestDatabase } from './helpers/db.js';

const XSS_KEY = '<script>window.__xss = true</script>';
const XSS_ERROR = '<img src=x onerror="window.__xss = true">';
const now = new Date();
const minutesAgo = (m: number) => new Date(now.getTime() - m * 60_000);
const counts = { found: 3, changed: 1, unchanged: 0, skipped: 0, failed: 2, deferred: 0, dead: 0 };
const anonymous: Viewer = { session: null, actionsEnabled: true, returnTo: '/here?x=1', now };
const readOnly: Viewer = { ...anonymous, actionsEnabled: false };
const signedIn: Viewer = { ...anonymous, session: { name: 'alice', csrf: 'csrf-token-1' } };

const job = (name: string, actions = {}) =>
  resolveReconciler(name, `jobs/${name}.ts`, defineReconciler({ schedule: '*/5 * * * *', description: `finds ${name}`, retry: { maxAttempts: 3 }, actions, scan: async () => [], key: String, reconcile: async () => 'unchanged' })) as Reconciler;
const exportsJob = job('exports', { 'settled-by-hand': { description: 'record a return settled outside', run: async () => undefined } });

const failure: FailingItem = {
  reconciler: 'exports', key: XSS_KEY, partition: 0, attempts: 3, lastError: `Error: ${XSS_ERROR}\n    at stack`, firstFailedAt: minutesAgo(60),
  lastFailedAt: minutesAgo(5), nextAttemptAt: minutesAgo(5), deadAt: minutesAgo(5), lastSeenAt: minutesAgo(1), group: 'abcdef0123',
};
const auditEntry: AuditRow = { id: 1, at: minutesAgo(2), actor: 'alice', via: 'console', reconciler: 'exports', action: 'retry', target: 'all', keys: [XSS_KEY], note: `because ${XSS_ERROR}`, result: '1 item(s) due now' };

const lane = (name: string, over: Partial<LaneView> = {}): LaneView => ({
  reconciler: name, partition: 0, partitions: 1, schedule: '*/5 * * * *', timezone: 'UTC', nextRun: new Date(now.getTime() + 120_000),
  lastPass: { id: 7, status: 'succeeded', trigger: 'schedule', startedAt: minutesAgo(3), durationMs: 1200, counts, complete: true, error: null },
  running: null, stalenessMs: 90_000, backlog: 3, inBackoff: 0, dead: 0, wakes: null, failingSince: null, ...over,
});
const summary = (name: string, lanes: LaneView[], over = {}) => ({ name, description: name, file: `jobs/${name}.ts`, schedule: '* * * * *', timezone: 'UTC', partitions: 1, actions: [], inBackoff: 0, dead: 0, deadItems: null, lanes, chart: [], ...over });

const overviewModel: Overview = {
  broken: [{ name: 'typo', file: 'jobs/typo.ts', error: `SyntaxError ${XSS_ERROR}` }],
  reconcilers: [
    summary('calm', [lane('calm')]),
    summary('forgotten', [lane('forgotten', { lastPass: { id: 3, status: 'succeeded', trigger: 'schedule', startedAt: minutesAgo(180), durationMs: 10, counts, complete: true, error: null } })]),
    summary('exports', [lane('exports', { dead: 1, failingSince: minutesAgo(30), lastPass: { id: 9, status: 'error', trigger: 'schedule', startedAt: minutesAgo(1), durationMs: 5, counts, complete: false, error: XSS_ERROR } })], {
      dead: 3, deadItems: { since: minutesAgo(42), group: 'abcdef0123', error: XSS_ERROR, count: 2 }, actions: [{ name: 'sent-by-hand', description: 'x' }], chart: [{ start: new Date(Math.floor(now.getTime() / 900_000) * 900_000), passes: 2, found: 6, changed: 2, failed: 4, maxDurationMs: 900, avgDurationMs: 400 }],
    }),
  ],
};

const reconcilerModel: ReconcilerModel = {
  reconciler: exportsJob,
  passErrors: [{ reconciler: 'exports', partition: 0, failingSince: minutesAgo(30), lastAt: minutesAgo(1), passes: 6, error: XSS_ERROR }],
  groups: { groups: [{ id: 'abcdef0123', reconciler: 'exports', error: XSS_ERROR, sample: failure.lastError, count: 1, dead: 1, firstSeen: minutesAgo(60), lastSeen: minutesAgo(5), sampleKeys: [XSS_KEY] }], total: 1 },
  items: { items: [failure], total: 1 },
  history: { runs: [], total: 0 },
  filter: { dead: true },
};
const itemView = { reconciler: 'exports', key: XSS_KEY, failure, actions: [{ name: 'settled-by-hand', description: 'record a return settled outside' }], audit: [auditEntry] };

/** A whole page, as the server sends it. */
const full = (content: ReturnType<typeof overviewPage>, viewer: Viewer) => layout(content, viewer, false);

/** What the CSP forbids in the page itself: inline script, style attributes, event handlers (attribute values, escaped, left out). */
function cspViolations(text: string): string[] {
  const tags = [...text.matchAll(/<[a-z][^>]*>/gi)].map((m) => m[0].replace(/"[^"]*"/g, '""'));
  return tags.filter((tag) => /^<script(?![^>]*\ssrc=)|^<img\b|\sstyle=|\son[a-z]+=|javascript:/i.test(tag));
}

describe('html', () => {
  it('escapes every interpolation and keeps fragments', () => {
    expect(html`<p title="${'"x" & <y>'}">${XSS_KEY}${html`<b>${'ok'}</b>`}${['a', 1, null, false]}</p>`.text).toBe(
      '<p title="&quot;x&quot; &amp; &lt;y&gt;">&lt;script&gt;window.__xss = true&lt;/script&gt;<b>ok</b>a1</p>',
    );
    expect(html`${raw('<svg></svg>')}`.text).toBe('<svg></svg>');
  });

  it('the CSP check finds what it looks for (so that the checks below can fail)', () => {
    expect(cspViolations('<p style="x">a</p><button onclick="x()">b</button><script>x</script><script src="/a.js"></script>')).toEqual(['<p style="">', '<button onclick="">', '<script>']);
  });
});

describe('the pages', () => {
  it('the overview puts what is stuck first and escapes every string from the database', () => {
    const page = full(overviewPage(overviewModel, anonymous), anonymous);
    expect(cspViolations(page)).toEqual([]);
    expect(page).toContain('&lt;img src=x onerror=&quot;window.__xss = true&quot;&gt;');
    expect(page).toContain('Needs attention');
    expect(page).toContain('its job file <code>jobs/typo.ts</code> does not load');
    expect(page).toMatch(/>forgotten<\/a>: no pass since <time[^>]*>3 h ago<\/time>, though it runs every 5 min/);
    // Dead items: how many, since when (absolute and relative), mostly why (a link to that group), and what a person can do.
    expect(page).toMatch(
      /<a href="\/reconcilers\/exports\?dead=1">exports<\/a>: 3 dead items, waiting for a person since \d\d:\d\d:\d\d UTC \(<time[^>]*>42 min ago<\/time>\): 2 of them: <a href="\/reconcilers\/exports\?group=abcdef0123&amp;dead=1">&lt;img src=x[^<]*<\/a>\. To fix: retry, clear, or sent-by-hand \(on the item&#39;s page\)\./,
    );
    expect(page).not.toMatch(/>calm<\/a>: no pass since/);
    expect(page.indexOf('>exports</a></th>')).toBeLessThan(page.indexOf('>calm</a></th>'));
    expect(page).toMatch(/<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">3 min ago<\/time>/);
    expect(page).toContain('<svg');
    expect(page).toContain('<script src="/assets/console.js" defer></script>');
  });

  it('the reconciler page groups failures and escapes keys and errors', () => {
    const page = full(reconcilerPage(reconcilerModel, signedIn), signedIn);
    expect(cspViolations(page)).toEqual([]);
    expect(page).toContain('failing since');
    expect(page).toContain(`href="/reconcilers/exports/item?key=${encodeURIComponent(XSS_KEY)}"`);
    expect(page).toContain('&lt;script&gt;window.__xss = true&lt;/script&gt;');
    expect(page).toMatch(/name="scope" value="group"><input type="hidden" name="group" value="abcdef0123"><input type="hidden" name="dead" value="1">/);
    expect(page).toMatch(/value="all"><input type="hidden" name="dead" value="1">[^]*?name="op" value="retry" data-confirm="Retry all 1 dead item[^]*?name="op" value="clear" class="danger" data-confirm=/);
  });

  it('every retry and clear form takes a note for the audit log: item, group and all', () => {
    const forms = (page: string) => [...page.matchAll(/<form method="post"[^>]*class="actions">[^]*?<\/form>/g)].map((m) => m[0]);
    const reconcilerForms = forms(full(reconcilerPage({ ...reconcilerModel, filter: { dead: false } }, signedIn), signedIn));
    const itemForms = forms(full(itemPage(itemView, signedIn), signedIn));
    const scopes = [...reconcilerForms, ...itemForms].map((form) => /name="scope" value="(\w+)"/.exec(form)?.[1]);
    expect(scopes.sort()).toEqual(['all', 'group', 'key']);
    for (const form of [...reconcilerForms, ...itemForms]) expect(form).toMatch(/<input type="text" name="note" maxlength="2000"/);
  });

  it('the item page shows the full error, the audit record, and action forms only to a signed-in person', () => {
    const anon = full(itemPage(itemView, anonymous), anonymous);
    expect(cspViolations(anon)).toEqual([]);
    expect(anon).toContain('Sign in to act');
    expect(anon).toContain('href="/sign-in?return_to=%2Fhere%3Fx%3D1"');
    expect(anon).not.toContain('name="op"');
    expect(anon).toContain('because &lt;img');
    expect(full(itemPage(itemView, readOnly), readOnly)).toContain('Read-only (CONSOLE_TOKENS not set)');

    const signed = full(itemPage(itemView, signedIn), { ...signedIn, flash: { kind: 'done', text: XSS_KEY } });
    expect(cspViolations(signed)).toEqual([]);
    expect(signed).toContain('<p class="flash flash-ok" role="status">&lt;script&gt;');
    expect(signed).toContain('name="csrf" value="csrf-token-1"');
    expect(signed).toContain('name="return_to" value="/here?x=1"');
    expect(signed).toContain('name="action" value="settled-by-hand"');
    expect(signed).toMatch(/<textarea[^>]*name="note"[^>]*required/);
    expect(signed).toMatch(/name="op" value="clear" class="danger" data-confirm="Forget the failure of &lt;script&gt;/);
    expect(signed).toMatch(/<input type="text" name="note"/);
  });

  it('the audit page, and the sign-in page', () => {
    const page = full(auditPage({ entries: [auditEntry], total: 1 }, undefined, anonymous), anonymous);
    expect(cspViolations(page)).toEqual([]);
    expect(page).toContain('because &lt;img');
    const signIn = renderSignIn({ error: XSS_ERROR, returnTo: '/"><script>' });
    expect(cspViolations(signIn)).toEqual([]);
    expect(signIn).toContain('name="token"');
    expect(signIn).toContain('value="/&quot;&gt;&lt;script&gt;"');
  });

  it('a chart spans the last 24 hours, with the empty buckets in place', () => {
    const buckets = dayOfBuckets(overviewModel.reconcilers.find((r) => r.name === 'exports')!.chart, now);
    expect(buckets).toHaveLength(96);
    expect(buckets.at(-1)).toMatchObject({ passes: 2, failed: 4 });
    expect(buckets.slice(0, -1).every((b) => b.passes === 0)).toBe(true);
  });

  it('serves its own assets and nothing else', () => {
    expect(asset('/assets/console.js')?.contentType).toMatch(/javascript/);
    expect(asset('/assets/console.css')?.body).toContain(':root');
    expect(asset('/assets/nope.js')).toBeUndefined();
    expect(asset('/assets/constructor')).toBeUndefined();
  });
});

describe('renderPage over a database', () => {
  const t = useTestDatabase({ resetEngineTables: true });
  const request = (path: string, over: Partial<PageRequest> = {}) => {
    const [p, q] = path.split('?');
    const ctx = { db: t.db, reconcilers: [job('calm'), exportsJob], loadErrors: [] };
    return renderPage({ path: p!, query: new URLSearchParams(q ?? ''), session: null, actionsEnabled: true, ctx, fragment: false, ...over });
  };

  it('routes each page, and answers 404 or nothing for what is not there', async () => {
    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at) VALUES ('exports', ${XSS_KEY}, 3, ${XSS_ERROR}, now(), now())`);
    const itemUrl = `/reconcilers/exports/items/${encodeURIComponent(XSS_KEY)}`;
    for (const path of ['/', '/audit', '/audit?reconciler=exports', '/reconcilers/exports?dead=1&status=bogus', '/reconcilers/calm', itemUrl]) {
      const page = await request(path);
      expect(page?.status, path).toBe(200);
      expect(cspViolations(page!.html), path).toEqual([]);
      expect(page!.html, path).not.toContain(XSS_KEY);
      expect(page!.html, path).not.toContain(XSS_ERROR);
    }
    expect((await request(itemUrl))!.html).toContain('<pre class="error full">&lt;img src=x');
    expect((await request('/'))!.html).toContain('>exports</a>: 1 dead item, waiting for a person');
    expect(await request('/nope')).toBeUndefined();
    expect(await request('/reconcilers/exports/items/%E0%A4%A')).toBeUndefined();
    const missing = (await request(`/reconcilers/${encodeURIComponent(XSS_KEY)}`))!;
    expect(missing.status).toBe(404);
    expect(missing.html).toContain('&lt;script&gt;');
    expect((await request(`/reconcilers/nope/items/x`))!.status).toBe(404);
  });

  it("the dead view's buttons carry dead=1 and count every dead item, not the rows shown; the others count every failing one", async () => {
    // One error group with 2 dead items and 4 in backoff, and 60 more groups of one dead item: more groups than a page lists.
    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at)
      SELECT 'exports', 'locked-' || n, 3, 'Error: the ledger is locked', now(), CASE WHEN n <= 2 THEN now() END FROM generate_series(1, 6) AS n`);
    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at)
      SELECT 'exports', 'odd-' || n, 3, 'Error: unusual failure ' || chr(97 + n / 26) || chr(97 + n % 26), now(), now() FROM generate_series(0, 59) AS n`);
    const session = { name: 'alice', csrf: 'c' };
    const forms = async (path: string) => {
      const page = (await request(path, { session }))!.html;
      const row = page.split('<tr id="group-').find((r) => r.includes('the ledger is locked'))!;
      const group = /<form[^]*?<\/form>/.exec(row)![0];
      const all = /<form[^>]*class="actions">(?:(?!<\/form>)[^])*name="scope" value="all"[^]*?<\/form>/.exec(page)![0];
      return { group, all };
    };

    const dead = await forms('/reconcilers/exports?dead=1');
    expect(dead.group).toContain('<input type="hidden" name="dead" value="1">');
    expect(dead.group).toMatch(/>Retry 2 dead<\/button>[^]*>Clear 2 dead<\/button>/);
    expect(dead.all).toContain('<input type="hidden" name="dead" value="1">');
    expect(dead.all).toMatch(/>Retry all 62 dead<\/button>[^]*>Clear all 62 dead<\/button>/);

    const every = await forms('/reconcilers/exports');
    expect(every.group).not.toContain('name="dead"');
    expect(every.group).toMatch(/>Retry 6<\/button>/);
    expect(every.all).not.toContain('name="dead"');
    expect(every.all).toMatch(/>Retry all 66<\/button>/);

    // What the server does with the dead view's group form (act.ts reads dead=1 as deadOnly): exactly the 2 it names.
    const fields = Object.fromEntries([...dead.group.matchAll(/<input type="hidden" name="(\w+)" value="([^"]*)">/g)].map((m) => [m[1]!, m[2]!]));
    const ctx = { db: t.db, reconcilers: [exportsJob], loadErrors: [] };
    const outcome = await retryItems(ctx, { name: 'alice', via: 'console' }, 'exports', { group: fields.group!, deadOnly: fields.dead === '1' });
    expect(outcome.keys.sort()).toEqual(['locked-1', 'locked-2']);
  });

  it('opens items whose keys a browser would resolve away as a path segment (., .., %2e%2e), and the old item paths', async () => {
    const keys = ['.', '..', '%2e%2e', '../calm', 'a/b?c#d'];
    for (const key of keys) await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at) VALUES ('exports', ${key}, 3, 'Error: odd key', now(), now())`);
    const list = (await request('/reconcilers/exports'))!.html;
    for (const key of keys) {
      const href = [...list.matchAll(/<a href="([^"]+)"><code>([^<]*)<\/code><\/a>/g)].find((m) => m[2] === key)?.[1];
      expect(href, key).toBeDefined();
      const url = new URL(href!, 'http://console.example'); // what a browser requests when the link is followed
      const page = (await request(`${url.pathname}${url.search}`))!;
      expect(page.status, key).toBe(200);
      expect(page.html, key).toContain(`<h1 class="key"><code>${key}</code></h1>`);
      expect(page.html, key).toContain('Error: odd key');
    }
    const old = (await request(`/reconcilers/exports/items/${encodeURIComponent('%2e%2e')}`))!;
    expect(old.html).toContain('<h1 class="key"><code>%2e%2e</code></h1>');
    expect(await request('/reconcilers/exports/item')).toBeUndefined();
    expect((await request('/reconcilers/nope/item?key=x'))!.status).toBe(404);
  });

  it('the live-update fragment is the inside of <main> only', async () => {
    const fragment = (await request('/', { fragment: true }))!;
    expect(fragment.html).not.toContain('<html');
    expect(fragment.html.trimStart().startsWith('<h1>Overview</h1>')).toBe(true);
    expect(fragment.html).toContain('exports');
  });
});
