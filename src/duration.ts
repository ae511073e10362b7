/**
 * Values people write in configuration, reconciler definitions and command-line flags, each
 * parsed by one function: durations (`parseDuration`) and whole numbers (`parseWholeNumber`).
 *
 * Durations: either milliseconds as a number, or a string such as `"500ms"`, `"30s"`, `"5m"`,
 * `"2h"`, `"14d"`.
 */
export type Duration = number | `${number}${DurationUnit}`;
type DurationUnit = 'ms' | 's' | 'm' | 'h' | 'd';

const UNIT_MS: Record<DurationUnit, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PATTERN = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/;

/** Parses a {@link Duration} into milliseconds; throws a RangeError that quotes the bad value. */
export function parseDuration(value: unknown): number {
  if (typeof value === 'number') {
    if (Number.isFinite(value) && value >= 0) return value;
  } else if (typeof value === 'string') {
    const match = PATTERN.exec(value);
    if (match) return Math.round(Number(match[1]) * UNIT_MS[(match[2] ?? 'ms') as DurationUnit]);
  }
  throw new RangeError(`${JSON.stringify(value)} is not a duration (use milliseconds, e.g. 1500, or a string such as "30s", "5m", "2h", "14d")`);
}

/** The shortest exact spelling of a duration: `1500ms`, `30s`, `5m`, `14d`. */
export function durationText(ms: number): string {
  for (const unit of ['d', 'h', 'm', 's'] as const) if (ms >= UNIT_MS[unit] && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  return `${ms}ms`;
}

/** Formats milliseconds for people: `850ms`, `12.3s`, `4m05s`, `3h12m`, `2d04h`. */
export function formatDuration(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1_000).toFixed(1)}s`;
  const pad = (n: number) => String(n).padStart(2, '0');
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m${pad(Math.floor(ms / 1_000) % 60)}s`;
  if (ms < 86_400_000) return `${Math.floor(ms / 3_600_000)}h${pad(Math.floor(ms / 60_000) % 60)}m`;
  return `${Math.floor(ms / 86_400_000)}d${pad(Math.floor(ms / 3_600_000) % 24)}h`;
}

/**
 * The whole number `value` spells, if it is one from `min` to `max`; else undefined. A number,
 * or a string of digits (how the environment and command-line flags spell one: not `''`, `1e3`
 * or `0x50`). The one check of whole numbers for configuration, definitions and flags.
 */
export function parseWholeNumber(value: unknown, min: number, max = Infinity): number | undefined {
  const n = typeof value === 'number' ? value : typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
  return Number.isInteger(n) && n >= min && n <= max ? n : undefined;
}
