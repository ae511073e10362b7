/**
 * Plain-text tables, time formats and the other shapes of CLI output. Every string from the
 * database (keys, errors, notes) is untrusted: `table` and `printable` make it harmless on a
 * terminal (no escape sequences, no bidirectional overrides).
 */
import { formatDuration } from '../duration.js';

/** Control characters (escape sequences, carriage returns) and bidirectional overrides, which could rewrite what a terminal shows. */
const UNPRINTABLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** `text` with every character that could steer a terminal shown as `�`; newlines and tabs stay. */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, '\ufffd');
}

/** `text` on one line, unprintable characters replaced. */
function cell(text: string): string {
  return printable(text.replace(/[\n\t]/g, ' '));
}

/** Left-aligned columns separated by two spaces; the header row first. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const safe = rows.map((r) => r.map(cell));
  const widths = header.map((h, i) => Math.max(h.length, ...safe.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...safe.map(line)].join('\n');
}

/** `2026-11-27 21:03:04Z (3m05s ago)` or `… (in 12s)`. */
export function when(date: Date | null | undefined, now = new Date()): string {
  if (!date) return '-';
  const stamp = `${date.toISOString().slice(0, 19).replace('T', ' ')}Z`;
  const delta = now.getTime() - date.getTime();
  return delta >= 0 ? `${stamp} (${formatDuration(delta)} ago)` : `${stamp} (in ${formatDuration(-delta)})`;
}

/** `12m00s ago`: how long ago, without the timestamp. */
export function ago(date: Date, now = new Date()): string {
  return `${formatDuration(Math.max(0, now.getTime() - date.getTime()))} ago`;
}

/**
 * One line that keeps both ends of a long text: the first `head` and the last `tail` characters
 * around `…`. The end of an error often holds its hint ("… see the provider's dashboard").
 */
export function clip(text: string | null | undefined, head = 60, tail = 60): string {
  if (!text) return '';
  const flat = text.replace(/\s+/g, ' ').trim();
  if (flat.length <= head + tail + 3) return flat;
  // Each end is cut at a space when one is near, so that no word shows half.
  const start = flat.slice(0, head);
  const end = flat.slice(-tail);
  const startCut = start.lastIndexOf(' ');
  const endCut = end.indexOf(' ');
  return `${startCut > head - 15 ? start.slice(0, startCut) : start} … ${endCut >= 0 && endCut < 15 ? end.slice(endCut + 1) : end}`;
}

/**
 * The line under a listing that a limit cut: `3 of 85 shown (--limit 85 to see all)`;
 * nothing when every row is shown.
 */
export function shownOf(shown: number, total: number): string {
  return shown < total ? `${shown} of ${total} shown (--limit ${total} to see all)\n` : '';
}

/** `1 item`, `3 items`. */
export function plural(count: number, noun: string, nouns = `${noun}s`): string {
  return `${count} ${count === 1 ? noun : nouns}`;
}

/** `"return:16"` for a key in a command line a person can paste; a plain key as it is. */
export function shellWord(text: string): string {
  return /^[\w.:@/+-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}
