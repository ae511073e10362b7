/**
 * The console's pages from hand-made read models (the operator layer's shapes): routing,
 * escaping of every string from the database, the CSP's rules (no inline script, style or
 * handler), and which action forms show to whom. The browser test runs them for real.
 */
import { describe, expect, it } from 'vitest';
import { html, raw } from '../src/console/html.js';
import { asset, renderPage, renderSignIn, type PageRequest } from '../src/console/pages/index.js';
import { setViews, type FailingItem, type OperatorContext, type Views } from '../src/console/pages/model.js';
import type { Reconciler } from '../src/reconciler.js';

const XSS_KEY = '<script>window.__xss = true</script>';
const XSS_ERROR = '<img src=x onerror="window.__xss = true">';
const now = new Date();
const minutesAgo = (m: number) => new Date(now.getTime() - m * 60_000);
const counts = { found: 3, changed: 1, unchanged: 0, skipped: 0, failed: 2, deferred: 0, dead: 0 };

const reconciler = (name: string, extra: Partial<Reconciler> = {}) =>
  ({ name, file: `jobs/${name}.ts`, schedule: '*/5 * * * *', timezone: 'UTC', description: `finds ${name}`, partitions: 1, retry: { maxAttempts: 3 }, actions: {}, ...extra }) as unknown as Reconciler;

const failure: FailingItem = {
  reconciler: 'exports', key: XSS_KEY, partition: 0, attempts: 3, lastError: `Error: ${XSS_ERROR}\n    at stack`, firstFailedAt: minutesAgo(60),
  lastFailedAt: minutesAgo(5), nextAttemptAt: minutesAgo(5), deadAt: minutesAgo(5), lastSeenAt: minutesAgo(1), group: 'abcdef0123',
};

const lane = (name: string, over: object = {}) => ({
  reconciler: name, partition: 0, partitions: 1, schedule: '*/5 * * * *', timezone: 'UTC', nextRun: new Date(now.getTime() + 120_000),
  lastPass: { id: 7, status: 'succeeded', trigger: 'schedule', startedAt: minutesAgo(3), durationMs: 1200, counts, complete: true, error: null },
  running: null, stalenessMs: 90_000, backlog: 3, inBackoff: 0, dead: 0, wakes: null, failingSince: null, ...over,
});

const fakeViews: Views = {
  overview: async () => ({
    broken: [{ name: 'typo', file: 'jobs/typo.ts', error: `SyntaxError ${XSS_ERROR}` }],
    reconcilers: [
      { name: 'calm', description: 'ok', file: 'jobs/calm.ts', schedule: '* * * * *', timezone: 'UTC', partitions: 1, actions: [], inBackoff: 0, dead: 0, lanes: [lane('calm')], chart: [] },
      {
        name: 'exports', description: 'exports', file: 'jobs/exports.ts', schedule: '* * * * *', timezone: 'UTC', partitions: 1, actions: [], inBackoff: 0, dead: 1,
        lanes: [lane('exports', { dead: 1, failingSince: minutesAgo(30), lastPass: { id: 9, status: 'error', trigger: 'schedule', startedAt: minutesAgo(1), durationMs: 5, counts, complete: false, error: XSS_ERROR } })],
        chart: [{ start: minutesAgo(15), passes: 2, found: 6, changed: 2, failed: 4, maxDurationMs: 900, avgDurationMs: 400 }],
      },
    ],
  }),
  passHistory: async () => ({ runs: [], total: 0 }),
  failureGroups: async () => ({ groups: [{ id: 'abcdef0123', reconciler: 'exports', error: XSS_ERROR, sample: failure.lastError, count: 1, dead: 1, firstSeen: minutesAgo(60), lastSeen: minutesAgo(5), sampleKeys: [XSS_KEY] }], total: 1 }),
  failingItems: async () => ({ items: [failure], total: 1 }),
  passErrors: async () => [{ reconciler: 'exports', partition: 0, failingSince: minutesAgo(30), lastAt: minutesAgo(1), passes: 6, error: XSS_ERROR }],
  itemView: async (_ctx, name, key) => ({
    reconciler: name, key, failure: key === XSS_KEY ? failure : null, actions: [{ name: 'settled-by-hand', description: 'record a return settled outside' }],
    audit: [{ id: 1, at: minutesAgo(2), actor: 'alice', via: 'console', reconciler: name, action: 'retry', target: 'all', keys: [key], note: `because ${XSS_ERROR}`, result: '1 item(s) due now' }],
  }),
  auditLog: async () => ({ entries: [], total: 0 }),
};
setViews(fakeViews);

const ctx = { db: {}, reconcilers: [reconciler('calm'), reconciler('exports', { actions: { 'settled-by-hand': { description: 'record', run: async () => {} } } })], loadErrors: [] } as unknown as OperatorContext;

async function page(path: string, over: Partial<PageRequest> = {}) {
  const [p, q] = path.split('?');
  const result = await renderPage({ path: p!, query: new URLSearchParams(q ?? ''), session: null, actionsEnabled: true, ctx, fragment: false, ...over });
  return result;
}
const itemUrl = `/reconcilers/exports/items/${encodeURIComponent(XSS_KEY)}`;
const signedIn = { session: { name: 'alice', csrf: 'csrf-token-1' } };

/** What the CSP forbids in the page itself: inline script, style attributes, event handlers. */
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
});

describe('console pages', () => {
  it('the overview puts what is stuck first and escapes every string from the database', async () => {
    const result = (await page('/'))!;
    expect(result.status).toBe(200);
    expect(cspViolations(result.html)).toEqual([]);
    expect(result.html).toContain('&lt;img src=x onerror=&quot;window.__xss = true&quot;&gt;');
    expect(result.html).toContain('Needs attention');
    expect(result.html).toContain('its job file <code>jobs/typo.ts</code> does not load');
    expect(result.html.indexOf('>exports</a>')).toBeLessThan(result.html.indexOf('>calm</a>'));
    expect(result.html).toMatch(/<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">3 min ago<\/time>/);
    expect(result.html).toContain('<svg');
  });

  it('the reconciler page groups failures and escapes keys and errors', async () => {
    const result = (await page('/reconcilers/exports?dead=1&status=bogus'))!;
    expect(result.status).toBe(200);
    expect(cspViolations(result.html)).toEqual([]);
    expect(result.html).toContain('failing since');
    expect(result.html).toContain(`href="${itemUrl.replace(/%/g, '%')}"`);
    expect(result.html).toContain('&lt;script&gt;window.__xss = true&lt;/script&gt;');
    expect(result.html).not.toContain('option value="bogus"');
  });

  it('the item page shows the full error, the audit record, and action forms only to a signed-in person', async () => {
    const anonymous = (await page(itemUrl))!;
    expect(cspViolations(anonymous.html)).toEqual([]);
    expect(anonymous.html).toContain('Sign in to act');
    expect(anonymous.html).not.toContain('name="op"');
    expect(anonymous.html).toContain('because &lt;img');
    expect((await page(itemUrl, { actionsEnabled: false }))!.html).toContain('Read-only (CONSOLE_TOKENS not set)');

    const signed = (await page(`${itemUrl}?done=${encodeURIComponent(XSS_KEY)}`, signedIn))!;
    expect(cspViolations(signed.html)).toEqual([]);
    expect(signed.html).toContain('<p class="flash flash-ok" role="status">&lt;script&gt;');
    expect(signed.html).toContain('name="csrf" value="csrf-token-1"');
    expect(signed.html).toContain(`name="return_to" value="${itemUrl}"`);
    expect(signed.html).toContain('name="action" value="settled-by-hand"');
    expect(signed.html).toMatch(/<textarea[^>]*name="note"[^>]*required/);
    expect(signed.html).toMatch(/value="clear">[\s\S]*?data-confirm=/);
  });

  it('the live-update fragment is the inside of <main> only', async () => {
    const fragment = (await page('/', { fragment: true }))!;
    expect(fragment.html).not.toContain('<html');
    expect(fragment.html.trimStart().startsWith('<h1>Overview</h1>')).toBe(true);
  });

  it('routes: unknown paths are undefined, unknown reconcilers 404, bad encoding undefined', async () => {
    expect(await page('/nope')).toBeUndefined();
    expect(await page('/reconcilers/exports/items/%E0%A4%A')).toBeUndefined();
    const missing = (await page(`/reconcilers/${encodeURIComponent(XSS_KEY)}`))!;
    expect(missing.status).toBe(404);
    expect(missing.html).toContain('&lt;script&gt;');
    expect((await page('/audit?reconciler=exports'))!.status).toBe(200);
  });

  it('sign-in and assets', () => {
    const signIn = renderSignIn({ error: XSS_ERROR, returnTo: '/"><script>' });
    expect(cspViolations(signIn)).toEqual([]);
    expect(signIn).toContain('name="token"');
    expect(signIn).toContain('value="/&quot;&gt;&lt;script&gt;"');
    expect(asset('/assets/console.js')?.contentType).toMatch(/javascript/);
    expect(asset('/assets/console.css')?.body).toContain(':root');
    expect(asset('/assets/nope.js')).toBeUndefined();
    expect(asset('/assets/constructor')).toBeUndefined();
  });
});
