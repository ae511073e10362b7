/** How times, durations, statuses and counts read on the console's pages: plain words, both relative and absolute. */
import { formatDuration } from '../../duration.js';
import { html, type Html } from '../html.js';

/** `2026-11-27 21:03:04 UTC`: the absolute time, in the title of every relative one. */
export function absolute(date: Date): string {
  return `${date.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

/** A span of time in plain words: `12 s`, `4 min`, `3 h 12 min`, `2 d 4 h`. */
export function span(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1_000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 === 0 ? `${h} h` : `${h} h ${m % 60} min`;
  const d = Math.floor(h / 24);
  return h % 24 === 0 ? `${d} d` : `${d} d ${h % 24} h`;
}

/** `4 min ago` or `in 12 s`, with the absolute time as its title; `never` (or the given word) for none. */
export function ago(date: Date | null | undefined, now: Date, none = 'never'): Html {
  if (!date) return html`<span class="muted">${none}</span>`;
  const delta = now.getTime() - date.getTime();
  const words = Math.abs(delta) < 1_000 ? 'just now' : delta >= 0 ? `${span(delta)} ago` : `in ${span(-delta)}`;
  return html`<time datetime="${date.toISOString()}" title="${absolute(date)}">${words}</time>`;
}

/** `09:38:12 UTC (4 min ago)`: for the times an operator quotes in a ticket (the date too when not today). */
export function at(date: Date, now: Date): Html {
  const day = date.toISOString().slice(0, 10) === now.toISOString().slice(0, 10) ? '' : `${date.toISOString().slice(0, 10)} `;
  return html`${day}${date.toISOString().slice(11, 19)} UTC (${ago(date, now)})`;
}

/** A duration as the engine prints it (`850ms`, `12.3s`, `4m05s`), or a dash. */
export function duration(ms: number | null | undefined): string {
  return ms === null || ms === undefined ? '–' : formatDuration(ms);
}

const STATUS_CLASS: Record<string, string> = {
  succeeded: 'ok',
  running: 'info',
  failed: 'warn',
  aborted: 'warn',
  error: 'bad',
  abandoned: 'bad',
  dead: 'bad',
  backoff: 'warn',
  listening: 'ok',
};

/** A status word in its colour: green for succeeded, amber for failed items, red for a broken pass or dead items. */
export function status(word: string): Html {
  return html`<span class="badge badge-${STATUS_CLASS[word] ?? 'plain'}">${word}</span>`;
}

/** A count that is bad when above zero (dead items, items in backoff), in its colour. */
export function count(n: number | null | undefined, kind: 'bad' | 'warn' | 'plain' = 'plain'): Html {
  if (n === null || n === undefined) return html`<span class="muted">–</span>`;
  return n > 0 && kind !== 'plain' ? html`<strong class="num ${kind}">${n}</strong>` : html`<span class="num">${n}</span>`;
}

/** `n thing` or `n things`. */
export function plural(n: number, thing: string, things = `${thing}s`): string {
  return `${n} ${n === 1 ? thing : things}`;
}

/** The path of a reconciler's page, with its filters. */
export function reconcilerPath(name: string, query?: Record<string, string | undefined>): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== '') params.set(k, v);
  const search = params.toString();
  return `/reconcilers/${encodeURIComponent(name)}${search ? `?${search}` : ''}`;
}

/**
 * An item's page: the key goes in the query, not the path, where a browser would resolve a key
 * like `.`, `..` or `%2e%2e` away as a dot-segment before sending the request.
 */
export function itemPath(name: string, key: string): string {
  return `/reconcilers/${encodeURIComponent(name)}/item?key=${encodeURIComponent(key)}`;
}

/** "showing 50 of 312", or nothing when all are shown. */
export function shown(showing: number, total: number): Html {
  return total > showing ? html`<p class="muted">Showing ${showing} of ${total}.</p>` : html``;
}
