/** The audit log: who did what to which items, when and why; the whole log, or one reconciler's. */
import { html, type Html } from '../html.js';
import { ago, itemPath, reconcilerPath, shown } from './format.js';
import type { PageContent, Viewer } from './layout.js';
import type { AuditRow } from './model.js';

/** At most this many keys listed in one entry; the rest are counted. */
const KEYS_SHOWN = 10;

function keysCell(entry: AuditRow): Html {
  const listed = entry.keys.slice(0, KEYS_SHOWN);
  const more = entry.keys.length - listed.length;
  return html`${listed.map((k, i) => html`${i > 0 ? ', ' : ''}<a href="${itemPath(entry.reconciler, k)}"><code>${k}</code></a>`)}${more > 0 ? ` and ${more} more` : ''}${
    entry.keys.length === 0 ? html`<span class="muted">none</span>` : ''
  }`;
}

/** The entries as a table; `withReconciler` adds its column (the whole log). */
export function auditTable(entries: readonly AuditRow[], now: Date, withReconciler: boolean): Html {
  if (entries.length === 0) return html`<p class="muted">Nobody has acted here yet.</p>`;
  return html`<table class="audit"><thead><tr><th>When</th><th>Who</th>${withReconciler ? html`<th>Reconciler</th>` : ''}<th>What</th><th>Items</th><th>Note</th><th>Result</th></tr></thead>
  <tbody>${entries.map(
    (e) => html`<tr>
      <td>${ago(e.at, now)}</td><td>${e.actor} <span class="muted">(${e.via})</span></td>
      ${withReconciler ? html`<td><a href="${reconcilerPath(e.reconciler)}">${e.reconciler}</a></td>` : ''}
      <td><strong>${e.action}</strong> <span class="muted">${e.target}</span></td>
      <td>${keysCell(e)}</td>
      <td class="note">${e.note ?? html`<span class="muted">–</span>`}</td>
      <td>${e.result}</td>
    </tr>`,
  )}</tbody></table>`;
}

/** The audit page, optionally for one reconciler. */
export function auditPage(log: { entries: AuditRow[]; total: number }, reconciler: string | undefined, viewer: Viewer): PageContent {
  return {
    title: reconciler ? `Audit log of ${reconciler}` : 'Audit log',
    main: html`<h1>Audit log${reconciler ? html` of <a href="${reconcilerPath(reconciler)}">${reconciler}</a>` : ''}</h1>
  <p class="muted">Every retry, clear and manual action, from the console or the CLI, newest first.${reconciler ? html` <a href="/audit">The whole log</a>.` : ''}</p>
  ${auditTable(log.entries, viewer.now, reconciler === undefined)}
  ${shown(log.entries.length, log.total)}`,
  };
}
