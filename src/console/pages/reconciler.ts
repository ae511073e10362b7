/**
 * A reconciler's page: what it does; whether its passes throw (and since when); its failures
 * grouped by normalised error, then the failing items (filtered by group or dead); its pass
 * history, filtered by status, trigger and partition.
 */
import type { Reconciler } from '../../reconciler.js';
import { oneLine } from '../../errors.js';
import { html, type Html } from '../html.js';
import { accessNote, allButtons, groupButtons } from './actions.js';
import { ago, count, duration, itemPath, plural, reconcilerPath, shown, status } from './format.js';
import type { PageContent, Viewer } from './layout.js';
import type { FailingItem, FailureGroup, PassError, RunRow } from './model.js';
import { historyFilters, type HistoryFilter } from './filters.js';

export interface ReconcilerModel {
  reconciler: Reconciler;
  passErrors: PassError[];
  groups: { groups: FailureGroup[]; total: number };
  items: { items: FailingItem[]; total: number };
  history: { runs: RunRow[]; total: number };
  filter: HistoryFilter & { group?: string; dead: boolean };
}

function passErrorsSection(errors: readonly PassError[], partitioned: boolean, now: Date): Html {
  if (errors.length === 0) return html``;
  return html`<section class="attention"><h2>Its passes fail</h2><ul>${errors.map(
    (e) => html`<li class="bad">${partitioned ? `Partition ${e.partition}: ` : ''}failing since ${ago(e.failingSince, now)} (${plural(e.passes, 'pass', 'passes')}, last ${ago(e.lastAt, now)}):
      <pre class="error">${e.error}</pre></li>`,
  )}</ul></section>`;
}

function groupRow(name: string, g: FailureGroup, m: ReconcilerModel, viewer: Viewer): Html {
  const now = viewer.now;
  return html`<tr id="group-${g.id}"${m.filter.group === g.id ? html` class="selected"` : ''}>
    <td><pre class="error">${g.error}</pre>${g.sample !== g.error ? html`<details><summary>a full message</summary><pre class="error">${g.sample}</pre></details>` : ''}</td>
    <td>${count(g.count)}</td><td>${count(g.dead, 'bad')}</td>
    <td>${ago(g.firstSeen, now)}</td><td>${ago(g.lastSeen, now)}</td>
    <td><ul class="plain">${g.sampleKeys.map((k) => html`<li><a href="${itemPath(name, k)}"><code>${k}</code></a></li>`)}</ul>
      <a href="${reconcilerPath(name, { group: g.id, dead: m.filter.dead ? '1' : undefined })}">all ${plural(m.filter.dead ? g.dead : g.count, m.filter.dead ? 'dead item' : 'item')} with this error</a></td>
    <td>${groupButtons(name, g, m.filter.dead, viewer)}</td>
  </tr>`;
}

function groupsSection(m: ReconcilerModel, viewer: Viewer): Html {
  const name = m.reconciler.name;
  const { groups, total } = m.groups;
  if (groups.length === 0) return html`<section><h2>Failures</h2><p class="ok">No item of ${name} is failing${m.filter.dead ? ' dead' : ''}.</p></section>`;
  return html`<section><h2>Failures, grouped by error</h2>
  <p>${m.filter.dead ? html`Dead items only. <a href="${reconcilerPath(name)}">Show all failures</a>.` : html`<a href="${reconcilerPath(name, { dead: '1' })}">Show dead items only</a>.`}</p>
  <table class="groups"><thead><tr><th>Error (normalised)</th><th>Items</th><th>Dead</th><th>First seen</th><th>Last seen</th><th>Sample keys</th><th></th></tr></thead>
  <tbody>${groups.map((g) => groupRow(name, g, m, viewer))}</tbody></table>
  ${shown(groups.length, total)}
  </section>`;
}

function itemRow(name: string, item: FailingItem, now: Date): Html {
  return html`<tr>
    <td><a href="${itemPath(name, item.key)}"><code>${item.key}</code></a></td>
    <td>${item.deadAt ? status('dead') : status('backoff')}</td>
    <td>${item.attempts}</td>
    <td>${item.deadAt ? html`<span class="muted">never (dead ${ago(item.deadAt, now)})</span>` : ago(item.nextAttemptAt, now)}</td>
    <td>${ago(item.lastFailedAt, now)}</td>
    <td class="error-line" title="${oneLine(item.lastError, 2000)}">${oneLine(item.lastError, 120)}</td>
  </tr>`;
}

function itemsSection(m: ReconcilerModel, viewer: Viewer): Html {
  const name = m.reconciler.name;
  const { items, total } = m.items;
  if (items.length === 0) return html``;
  const what = [m.filter.dead ? 'dead' : '', m.filter.group ? `with error group ${m.filter.group}` : ''].filter(Boolean).join(', ');
  return html`<section><h2>Failing items${what ? ` (${what})` : ''}</h2>
  ${m.filter.group ? html`<p><a href="${reconcilerPath(name, { dead: m.filter.dead ? '1' : undefined })}">Show every group</a></p>` : ''}
  <table class="items"><thead><tr><th>Key</th><th>State</th><th>Attempts</th><th>Next attempt</th><th>Last failed</th><th>Last error</th></tr></thead>
  <tbody>${items.map((item) => itemRow(name, item, viewer.now))}</tbody></table>
  ${shown(items.length, total)}
  ${m.filter.group ? '' : allButtons(name, total, m.filter.dead, viewer)}
  </section>`;
}

function runRow(run: RunRow, partitioned: boolean, now: Date): Html {
  return html`<tr>
    <td>${run.id}</td><td>${status(run.status)}</td><td>${run.trigger}</td>${partitioned ? html`<td>${run.partition}</td>` : ''}
    <td>${ago(run.startedAt, now)}</td><td>${run.status === 'running' ? html`<span class="muted">running</span>` : duration(run.durationMs)}</td>
    <td class="counts">${run.found} found · ${run.changed} changed · ${run.failed} failed · ${run.deferred} deferred · ${run.dead} dead${run.complete || run.status === 'running' ? '' : ' · stopped early'}</td>
    <td class="muted">${run.host} pid ${run.pid}</td>
    <td class="error-line" title="${oneLine(run.error, 2000)}">${oneLine(run.error, 100)}</td>
  </tr>`;
}

function historySection(m: ReconcilerModel, viewer: Viewer): Html {
  const partitioned = m.reconciler.partitions > 1;
  const { runs, total } = m.history;
  return html`<section><h2>Passes</h2>
  ${historyFilters(m.reconciler, m.filter)}
  ${runs.length === 0 ? html`<p class="muted">No pass matches.</p>` : html`<table class="history"><thead><tr><th>Pass</th><th>Status</th><th>Trigger</th>${partitioned ? html`<th>Partition</th>` : ''}<th>Started</th><th>Took</th><th>Items</th><th>Where</th><th>Error</th></tr></thead>
  <tbody>${runs.map((r) => runRow(r, partitioned, viewer.now))}</tbody></table>`}
  ${shown(runs.length, total)}
  </section>`;
}

function header(r: Reconciler, viewer: Viewer): Html {
  const actions = Object.entries(r.actions);
  return html`<h1>${r.name}</h1>
  ${r.description ? html`<p class="lead">${r.description}</p>` : ''}
  <p class="muted">Runs on <code>${r.schedule}</code> (${r.timezone})${r.partitions > 1 ? ` in ${r.partitions} partitions` : ''}; defined in <code>${r.file}</code>; an item is dead after ${plural(r.retry.maxAttempts, 'attempt')}.
  <a href="/audit?reconciler=${encodeURIComponent(r.name)}">Its audit log</a>.</p>
  ${actions.length > 0 ? html`<p>Manual actions, on an item's page: ${actions.map(([name, a], i) => html`${i > 0 ? ', ' : ''}<strong>${name}</strong> (${a.description})`)}.</p>` : ''}
  ${accessNote(viewer)}`;
}

/** The reconciler page. */
export function reconcilerPage(m: ReconcilerModel, viewer: Viewer): PageContent {
  return {
    title: m.reconciler.name,
    main: html`${header(m.reconciler, viewer)}${passErrorsSection(m.passErrors, m.reconciler.partitions > 1, viewer.now)}${groupsSection(m, viewer)}${itemsSection(m, viewer)}${historySection(m, viewer)}`,
  };
}
