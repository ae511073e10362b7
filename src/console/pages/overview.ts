/**
 * The overview: what is stuck first (broken job files, passes that throw, dead items, late
 * passes, deaf wake listeners), in plain sentences; then a row per reconciler and partition;
 * then each reconciler's charts over the last 24 hours.
 */
import { oneLine } from '../../errors.js';
import { nextTick } from '../../scheduler/cron.js';
import { passCharts } from '../chart.js';
import { html, type Html } from '../html.js';
import { ago, at, count, duration, plural, reconcilerPath, span, status } from './format.js';
import type { PageContent, Viewer } from './layout.js';
import type { LaneView, Overview, ReconcilerSummary } from './model.js';

/** Slack before a lane whose passes stopped counts as late: two schedule intervals and this. */
const LATE_MS = 60_000;

function laneLabel(lane: LaneView): string {
  return lane.partitions > 1 ? `${lane.reconciler} partition ${lane.partition} of ${lane.partitions}` : lane.reconciler;
}

/** The schedule's interval from its next tick to the one after (every 5 minutes: 5 min), or null. */
function interval(lane: LaneView, now: Date): number | null {
  try {
    const first = nextTick(lane.schedule, lane.timezone, now);
    return nextTick(lane.schedule, lane.timezone, first).getTime() - first.getTime();
  } catch {
    return null;
  }
}

/** A lane none of whose passes started for two schedule intervals (and a minute), with none running: is a daemon running it? */
function isLate(lane: LaneView, now: Date): boolean {
  const every = interval(lane, now);
  return !lane.running && lane.lastPass !== null && every !== null && now.getTime() - lane.lastPass.startedAt.getTime() > 2 * every + LATE_MS;
}

/** How much a reconciler needs a person: a pass that throws, then dead items, then items in backoff. */
function trouble(r: ReconcilerSummary): number {
  if (r.lanes.some((l) => l.failingSince || l.lastPass?.status === 'error' || l.lastPass?.status === 'abandoned')) return 3;
  if (r.dead > 0) return 2;
  return r.inBackoff > 0 || r.lanes.some((l) => l.lastPass?.status === 'failed') ? 1 : 0;
}

/** Dead items: how many, since when, mostly why (their biggest error group), and what a person can do. */
function deadLine(r: ReconcilerSummary, now: Date): Html {
  const d = r.deadItems;
  const why = d
    ? html`: ${d.count === r.dead ? '' : `${d.count} of them: `}<a href="${reconcilerPath(r.name, { group: d.group, dead: '1' })}">${oneLine(d.error, 200)}</a>`
    : '';
  const fix = r.actions.length > 0 ? `retry, clear, or ${r.actions.map((a) => a.name).join(', ')} (on the item's page)` : 'retry or clear, once the cause is fixed';
  return html`<li class="bad"><a href="${reconcilerPath(r.name, { dead: '1' })}">${r.name}</a>: ${plural(r.dead, 'dead item')}, waiting for a person${
    d ? html` since ${at(d.since, now)}` : ''
  }${why}. To fix: ${fix}.</li>`;
}

/** The stuck things, one sentence each, worst first. */
function attention(model: Overview, now: Date): Html[] {
  const lines: Html[] = model.broken.map((b) => html`<li class="bad"><strong>${b.name}</strong> is not running: its job file <code>${b.file}</code> does not load: ${oneLine(b.error, 300)}</li>`);
  const lanes = model.reconcilers.flatMap((r) => r.lanes);
  for (const lane of lanes.filter((l) => l.failingSince || l.lastPass?.status === 'error')) {
    lines.push(html`<li class="bad"><a href="${reconcilerPath(lane.reconciler)}">${laneLabel(lane)}</a>: its passes fail${
      lane.failingSince ? html` since ${at(lane.failingSince, now)}` : ''
    }: ${oneLine(lane.lastPass?.error ?? '', 300)}</li>`);
  }
  for (const r of model.reconcilers.filter((r) => r.dead > 0)) lines.push(deadLine(r, now));
  for (const lane of lanes.filter((l) => isLate(l, now))) {
    lines.push(html`<li class="warn"><a href="${reconcilerPath(lane.reconciler)}">${laneLabel(lane)}</a>: no pass since ${ago(lane.lastPass?.startedAt, now)}, though it runs every ${span(interval(lane, now) ?? 0)} (is a daemon running it?).</li>`);
  }
  for (const lane of lanes.filter((l) => l.wakes && l.wakes.channels.length > 0 && !l.wakes.listening)) {
    lines.push(html`<li class="warn"><a href="${reconcilerPath(lane.reconciler)}">${laneLabel(lane)}</a>: no daemon listens for its wake-ups now; it runs on its schedule only.</li>`);
  }
  for (const r of model.reconcilers.filter((r) => r.inBackoff > 0)) {
    lines.push(html`<li class="warn"><a href="${reconcilerPath(r.name)}">${r.name}</a>: ${plural(r.inBackoff, 'item')} in backoff, to be tried again.</li>`);
  }
  return lines;
}

function lastPassCell(lane: LaneView, now: Date): Html {
  const p = lane.lastPass;
  if (!p) return html`<span class="muted">no pass yet</span>`;
  const c = p.counts;
  return html`${status(p.status)} ${ago(p.startedAt, now)}, took ${duration(p.durationMs)} <span class="muted">(${p.trigger})</span>
    <div class="counts">${c.found} found · ${c.changed} changed · ${c.failed} failed · ${c.deferred} deferred · ${c.dead} dead${p.complete ? '' : ' · stopped early'}</div>
    ${p.error ? html`<div class="error-line" title="${oneLine(p.error, 2000)}">${oneLine(p.error, 120)}</div>` : ''}`;
}

function wakesCell(lane: LaneView): Html {
  if (!lane.wakes || lane.wakes.channels.length === 0) return html`<span class="muted">schedule only</span>`;
  return html`${lane.wakes.listening ? status('listening') : html`<span class="badge badge-warn">not listening</span>`} <span class="muted">${lane.wakes.channels.join(', ')}</span>`;
}

function laneRow(r: ReconcilerSummary, lane: LaneView, now: Date): Html {
  return html`<tr class="trouble-${trouble(r)}">
    <th scope="row"><a href="${reconcilerPath(r.name)}">${r.name}</a>${lane.partitions > 1 ? html` <span class="muted">partition ${lane.partition} of ${lane.partitions}</span>` : ''}</th>
    <td><code>${lane.schedule}</code> <span class="muted">${lane.timezone}</span><div>next ${ago(lane.nextRun, now, 'not scheduled')}</div></td>
    <td>${lastPassCell(lane, now)}</td>
    <td>${lane.running ? html`${status('running')} since ${ago(lane.running.since, now)}<div class="muted">${lane.running.host} pid ${lane.running.pid}${lane.running.runId === null ? '' : ` (pass ${lane.running.runId})`}</div>` : html`<span class="muted">idle</span>`}</td>
    <td>${lane.stalenessMs === null ? html`<span class="muted">–</span>` : span(lane.stalenessMs)}</td>
    <td>${count(lane.backlog)}</td>
    <td>${count(lane.inBackoff, 'warn')}</td>
    <td>${lane.dead > 0 ? html`<a href="${reconcilerPath(r.name, { dead: '1' })}">${count(lane.dead, 'bad')}</a>` : count(lane.dead)}</td>
    <td>${wakesCell(lane)}</td>
  </tr>`;
}

function lanesTable(reconcilers: readonly ReconcilerSummary[], now: Date): Html {
  return html`<table class="lanes">
  <thead><tr><th>Reconciler</th><th>Schedule</th><th>Last pass</th><th>Running now</th><th title="How long the oldest item the last pass found has waited">Staleness</th><th title="Items the last pass found">Backlog</th><th>In backoff</th><th>Dead</th><th>Wakes</th></tr></thead>
  <tbody>${reconcilers.map((r) => r.lanes.map((lane) => laneRow(r, lane, now)))}</tbody>
</table>`;
}

/** The overview page. */
export function overviewPage(model: Overview, viewer: Viewer): PageContent {
  const now = viewer.now;
  const sorted = [...model.reconcilers].sort((a, b) => trouble(b) - trouble(a) || a.name.localeCompare(b.name));
  const stuck = attention(model, now);
  return {
    title: 'Overview',
    main: html`<h1>Overview</h1>
<section class="attention">
  <h2>${stuck.length === 0 ? 'Nothing is stuck' : 'Needs attention'}</h2>
  ${stuck.length === 0 ? html`<p class="ok">Every reconciler's last pass ran, and no item is dead.</p>` : html`<ul>${stuck}</ul>`}
</section>
<section>
  <h2>Reconcilers</h2>
  ${sorted.length === 0 ? html`<p class="muted">No reconciler is loaded (is JOBS_DIR right?).</p>` : lanesTable(sorted, now)}
</section>
<section>
  <h2>Last 24 hours</h2>
  ${sorted.map((r) => html`<div class="chart-row"><h3><a href="${reconcilerPath(r.name)}">${r.name}</a></h3>${passCharts(r.chart, now)}</div>`)}
</section>`,
  };
}
