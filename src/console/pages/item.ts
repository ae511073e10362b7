/** An item's page: its key, where it stands in failure memory, its full error, what can be done, and what people did. */
import { html, type Html } from '../html.js';
import { accessNote, itemButtons, manualActionForms } from './actions.js';
import { auditTable } from './audit.js';
import { ago, absolute, reconcilerPath, status } from './format.js';
import type { PageContent, Viewer } from './layout.js';
import type { FailingItem, ItemView } from './model.js';

function failureFacts(name: string, f: FailingItem, now: Date): Html {
  return html`<dl class="facts">
    <dt>State</dt><dd>${f.deadAt ? html`${status('dead')} since ${ago(f.deadAt, now)}: no more attempts until a person retries, clears or resolves it` : html`${status('backoff')} to be tried again`}</dd>
    <dt>Attempts</dt><dd>${f.attempts}</dd>
    <dt>Next attempt</dt><dd>${f.deadAt ? html`<span class="muted">none (dead)</span>` : ago(f.nextAttemptAt, now)}</dd>
    <dt>Failing since</dt><dd>${ago(f.firstFailedAt, now)}</dd>
    <dt>Last failed</dt><dd>${ago(f.lastFailedAt, now)}</dd>
    <dt>Last seen by a scan</dt><dd>${ago(f.lastSeenAt, now)}</dd>
    <dt>Error group</dt><dd><a href="${reconcilerPath(name, { group: f.group })}">${f.group}</a> (the items that fail the same way)</dd>
  </dl>
  <h2>The full error</h2>
  <pre class="error full">${f.lastError}</pre>`;
}

/** The item page. */
export function itemPage(view: ItemView, viewer: Viewer): PageContent {
  const f = view.failure;
  return {
    title: `${view.key} · ${view.reconciler}`,
    main: html`<p class="crumbs"><a href="/">Overview</a> › <a href="${reconcilerPath(view.reconciler)}">${view.reconciler}</a> › item</p>
  <h1 class="key"><code>${view.key}</code></h1>
  ${f ? failureFacts(view.reconciler, f, viewer.now) : html`<p class="ok">Not failing: failure memory holds nothing for this item (it succeeded, was fixed, was cleared, or never failed). Checked ${html`<time datetime="${viewer.now.toISOString()}" title="${absolute(viewer.now)}">just now</time>`}.</p>`}
  <section><h2>Actions</h2>
    ${accessNote(viewer)}
    ${f ? itemButtons(view.reconciler, view.key, viewer) : ''}
    ${view.actions.length > 0 ? html`<h3>Resolve by hand</h3>${manualActionForms(view.reconciler, view.key, view.actions, viewer)}` : ''}
    ${!f && view.actions.length === 0 ? html`<p class="muted">Nothing to do.</p>` : ''}
  </section>
  <section><h2>What people did</h2>${auditTable(view.audit, viewer.now, false)}</section>`,
  };
}
