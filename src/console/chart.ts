/**
 * The overview's charts, rendered on the server as inline SVG (no script, no external
 * resource): items per pass and pass durations over the last 24 hours, one bar per bucket.
 * Colours come from the stylesheet's classes; each bar's `<title>` says its numbers on hover.
 */
import { formatDuration } from '../duration.js';
import { html, type Html } from './html.js';
import { absolute } from './pages/format.js';
import type { ChartBucket } from './pages/model.js';

const WIDTH = 480;
const HEIGHT = 72;
const TOP = 12;
const BOTTOM = 14;

interface Series {
  title: string;
  /** The tall bar and the short one drawn over it (e.g. found and failed), per bucket. */
  value: (b: ChartBucket) => number;
  overlay: (b: ChartBucket) => number;
  label: (n: number) => string;
  tip: (b: ChartBucket) => string;
  classes: [string, string];
}

function bars(buckets: readonly ChartBucket[], series: Series): Html {
  const max = Math.max(1, ...buckets.map(series.value));
  const plot = HEIGHT - TOP - BOTTOM;
  const step = WIDTH / Math.max(1, buckets.length);
  const y = (v: number) => TOP + plot - (v / max) * plot;
  const rects = buckets.map((b, i) => {
    const x = (i * step).toFixed(1);
    const w = Math.max(1, step - 1).toFixed(1);
    const v = series.value(b);
    const o = Math.min(v, series.overlay(b));
    if (b.passes === 0) return html`<rect x="${x}" y="${TOP + plot - 1}" width="${w}" height="1" class="chart-none"><title>${absolute(b.start)}: no pass</title></rect>`;
    return html`<g><title>${absolute(b.start)}: ${series.tip(b)}</title><rect x="${x}" y="${y(v).toFixed(1)}" width="${w}" height="${Math.max(1, TOP + plot - y(v)).toFixed(1)}" class="${series.classes[0]}"></rect>${
      o > 0 ? html`<rect x="${x}" y="${y(o).toFixed(1)}" width="${w}" height="${(TOP + plot - y(o)).toFixed(1)}" class="${series.classes[1]}"></rect>` : ''
    }</g>`;
  });
  return html`<figure class="chart">
  <figcaption>${series.title}</figcaption>
  <svg viewBox="0 0 ${WIDTH} ${HEIGHT}" width="${WIDTH}" height="${HEIGHT}" role="img" aria-label="${series.title}, last 24 hours">
    <text x="0" y="9" class="chart-label">max ${series.label(max)}</text>
    <line x1="0" y1="${TOP + plot + 0.5}" x2="${WIDTH}" y2="${TOP + plot + 0.5}" class="chart-axis"></line>
    ${rects}
    <text x="0" y="${HEIGHT - 2}" class="chart-label">24 h ago</text>
    <text x="${WIDTH}" y="${HEIGHT - 2}" text-anchor="end" class="chart-label">now</text>
  </svg>
</figure>`;
}

const perPass = (n: number, passes: number) => (passes === 0 ? 0 : n / passes);

const BUCKET_MS = 15 * 60_000;
const BUCKETS = 96;

/** The last 24 hours as 96 buckets of 15 minutes, oldest first: the given ones in place, the rest empty (no pass). */
export function dayOfBuckets(given: readonly ChartBucket[], now: Date): ChartBucket[] {
  const byStart = new Map(given.map((b) => [b.start.getTime(), b]));
  const last = Math.floor(now.getTime() / BUCKET_MS) * BUCKET_MS;
  return Array.from({ length: BUCKETS }, (_, i) => {
    const start = last - (BUCKETS - 1 - i) * BUCKET_MS;
    return byStart.get(start) ?? { start: new Date(start), passes: 0, found: 0, changed: 0, failed: 0, maxDurationMs: 0, avgDurationMs: 0 };
  });
}

/** Both charts of one reconciler, from its non-empty 15-minute buckets. */
export function passCharts(given: readonly ChartBucket[], now: Date): Html {
  const buckets = dayOfBuckets(given, now);
  if (buckets.every((b) => b.passes === 0)) return html`<p class="muted">No pass in the last 24 hours.</p>`;
  return html`<div class="charts">${bars(buckets, {
    title: 'Items per pass (failed in red)',
    value: (b) => perPass(b.found, b.passes),
    overlay: (b) => perPass(b.failed, b.passes),
    label: (n) => String(Math.round(n)),
    tip: (b) => `${b.passes} pass(es), ${b.found} found, ${b.changed} changed, ${b.failed} failed`,
    classes: ['chart-found', 'chart-failed'],
  })}${bars(buckets, {
    title: 'Pass duration (longest; average darker)',
    value: (b) => b.maxDurationMs,
    overlay: (b) => b.avgDurationMs,
    label: (n) => formatDuration(n),
    tip: (b) => `${b.passes} pass(es), longest ${formatDuration(b.maxDurationMs)}, average ${formatDuration(b.avgDurationMs)}`,
    classes: ['chart-max', 'chart-avg'],
  })}</div>`;
}
