/**
 * The frame of every page: the head (the console's own stylesheet and script, nothing from
 * elsewhere: it must work in an air-gapped cluster), the header with who is signed in, the
 * flash line after an action, and `<main>`, which the live-update script refreshes.
 */
import { html, type Html } from '../html.js';
import type { ConsoleSession } from './index.js';

/** Who is looking, and where: what decides whether action forms show, and where they return to. */
export interface Viewer {
  session: ConsoleSession | null;
  actionsEnabled: boolean;
  /** The current path and query, without the flash parameters: where an action or sign-in returns. */
  returnTo: string;
  now: Date;
  /** The line after an action (PageRequest.flash). */
  flash?: { kind: 'done' | 'error'; text: string };
}

export interface PageContent {
  title: string;
  main: Html;
}

/** The current path and query without `done`/`error`, so that a flash shows once per action. */
export function returnPath(path: string, query: URLSearchParams): string {
  const kept = new URLSearchParams(query);
  kept.delete('done');
  kept.delete('error');
  const search = kept.toString();
  return search ? `${path}?${search}` : path;
}

function who(viewer: Viewer): Html {
  if (viewer.session) {
    return html`<form method="post" action="/sign-out" class="inline">
      <span>Signed in as <strong>${viewer.session.name}</strong></span>
      <input type="hidden" name="csrf" value="${viewer.session.csrf}">
      <button type="submit" class="link">Sign out</button>
    </form>`;
  }
  if (viewer.actionsEnabled) return html`<a href="/sign-in?return_to=${encodeURIComponent(viewer.returnTo)}">Sign in to act</a>`;
  return html`<span class="muted">Read-only (CONSOLE_TOKENS not set)</span>`;
}

/** The line after an action. Only from the console's own cookie: a `?done=`/`?error=` link shows nothing. */
function flash(given: Viewer['flash']): Html {
  if (!given) return html``;
  return given.kind === 'done' ? html`<p class="flash flash-ok" role="status">${given.text}</p>` : html`<p class="flash flash-bad" role="alert">${given.text}</p>`;
}

function document(title: string, body: Html): string {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>${title} · reconciler console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/console.css">
<script src="/assets/console.js" defer></script>
</head>
<body>
${body}
</body>
</html>
`.text;
}

/** A whole page, or (for the live-update script) only the inside of `<main>`. */
export function layout(content: PageContent, viewer: Viewer, fragment: boolean): string {
  if (fragment) return content.main.text;
  return document(
    content.title,
    html`<header class="top">
  <nav><a href="/" class="brand">reconciler</a> <a href="/">Overview</a> <a href="/audit">Audit log</a></nav>
  <div class="who">${who(viewer)}</div>
</header>
${flash(viewer.flash)}
<p id="live" class="live muted" aria-live="polite">Live updates start when the page has loaded.</p>
<main id="main">${content.main}</main>`,
  );
}

/** The sign-in page: a console token, and where to go back to. */
export function signInPage(options: { error?: string; returnTo: string }): string {
  return document(
    'Sign in',
    html`<header class="top"><nav><a href="/" class="brand">reconciler</a> <a href="/">Overview</a></nav></header>
<main id="signin" class="narrow">
  <h1>Sign in to act</h1>
  <p>Reading needs no sign-in. To retry, clear or resolve items, sign in with a console token (one of CONSOLE_TOKENS); your actions are recorded in the audit log under its name.</p>
  ${options.error ? html`<p class="flash flash-bad" role="alert">${options.error}</p>` : ''}
  <form method="post" action="/sign-in">
    <label for="token">Console token</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
    <input type="hidden" name="return_to" value="${options.returnTo}">
    <button type="submit">Sign in</button>
  </form>
</main>`,
  );
}

/** The page for a reconciler or item that does not exist. */
export function notFound(what: Html): PageContent {
  return { title: 'Not found', main: html`<h1>Not found</h1><p>${what}</p><p><a href="/">Back to the overview</a></p>` };
}
