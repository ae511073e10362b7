/** Plain-text tables and time formats for CLI output. */
import { formatDuration } from '../duration.js';

/** Left-aligned columns separated by two spaces; the header row first. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

/** `2026-11-27 21:03:04Z (3m05s ago)` or `… (in 12s)`. */
export function when(date: Date | null | undefined, now = new Date()): string {
  if (!date) return '-';
  const stamp = `${date.toISOString().slice(0, 19).replace('T', ' ')}Z`;
  const delta = now.getTime() - date.getTime();
  return delta >= 0 ? `${stamp} (${formatDuration(delta)} ago)` : `${stamp} (in ${formatDuration(-delta)})`;
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}
