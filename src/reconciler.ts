/**
 * What a reconciler is: the definition a job file default-exports, its validation, and
 * its defaults. Everything here is checked once, when the file is loaded, so that a bad
 * file fails start-up with a message naming the file, never a pass at 3 a.m.
 */
import { createHash } from 'node:crypto';
import nodeCron from 'node-cron';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import type { Logger } from 'pino';
import { parseDuration, type Duration } from './duration.js';
import { didYouMean } from './suggest.js';

/** The database handle reconcilers get: drizzle over `pg` (or over PGlite in the embedded default). */
export type Db = PgDatabase<PgQueryResultHKT>;

/**
 * What `reconcile` did to one item:
 * - `changed`: the missing work was done now;
 * - `unchanged`: on a closer look nothing was missing (someone else did it, or it was already done);
 * - `skipped`: not this time, on purpose (not ready yet; the next pass will see it again).
 *
 * Return `{ outcome, note }` to say what was (or, under `dryRun`, would be) done;
 * the note shows in `reconciler run --dry-run` and in debug logs.
 * To fail, throw: any error means "retry later, with backoff"; a `TerminalError` means "do not retry".
 * An error with a `retryAfter` ({@link RetryAfter}) says when: that wait replaces the backoff for this attempt.
 */
export type Outcome = 'changed' | 'unchanged' | 'skipped';
export type ReconcileResult = Outcome | { outcome: Outcome; note?: string };

/**
 * Which slice of the items a pass covers: the items whose key `k` has
 * `partitionOf(k, count) === index`. In SQL that is `inPartition(sql\`<key>\`, partition)`, which
 * calls the engine's function `reconciler.partition_of(k, count)` (index that expression). An unpartitioned
 * reconciler always gets `{ index: 0, count: 1 }`: every item.
 */
export interface Partition {
  index: number;
  count: number;
}

/** The most partitions a reconciler may declare. */
export const MAX_PARTITIONS = 1_024;

/**
 * The partition of a key: the first 32 bits of its MD5, modulo `count`. Stable across
 * processes, versions and machines; the engine's SQL function `reconciler.partition_of(key, count)`
 * computes the same number, so a scan can filter on it through an index.
 */
export function partitionOf(key: string, count: number): number {
  if (count <= 1) return 0;
  return Number.parseInt(createHash('md5').update(key, 'utf8').digest('hex').slice(0, 8), 16) % count;
}

/** The arguments of one `scan` call: one keyset page. */
export interface ScanRequest<Item> {
  db: Db;
  /**
   * The last item of the previous page, or undefined for the first page. Filter on it
   * (`WHERE id > ${after.id} ORDER BY id`), never with OFFSET: keyset pages cost the same
   * at the millionth row as at the first.
   */
  after: Item | undefined;
  /** Return at most this many items. A page with fewer items ends the scan. */
  limit: number;
  signal: AbortSignal;
  partition: Partition;
}

/** What `reconcile` gets besides the item. */
export interface ReconcileContext {
  db: Db;
  /** A child logger carrying reconciler, pass id and item key. */
  log: Logger;
  /**
   * Aborted when the item's `timeout` elapses, when the pass loses its lease, or when
   * SHUTDOWN_TIMEOUT has passed after a shutdown began. Pass it to every I/O call: an item
   * that ignores it keeps its key busy in this process until it settles.
   */
  signal: AbortSignal;
  /** 1 on the first try; failure memory counts the tries before this one. */
  attempt: number;
  /** True under `reconciler run --dry-run`: decide and describe, but change nothing. */
  dryRun: boolean;
  /**
   * `"{reconciler}:{key}"`: stable for this item across attempts, passes and processes.
   * Derive the idempotency keys you send to other systems from it (add a version suffix
   * if the meaning of the effect ever changes).
   */
  idempotencyKey: string;
  /** The item's key, as `key(item)` returned it. */
  key: string;
}

/**
 * When to try a failed item again, as its error says (`error.retryAfter`, e.g. from a 429's
 * `Retry-After`): a wait (milliseconds, or `'30s'`) or a time. It replaces the computed backoff
 * for that attempt, capped at `retry.backoff.max`; a time in the past means at once. The
 * attempt still counts toward `retry.maxAttempts`.
 */
export type RetryAfter = Duration | Date;

/** The retry policy for items whose `reconcile` throws. */
export interface RetryPolicy {
  /** After this many failed attempts the item is dead. Default 10. */
  maxAttempts?: number;
  /** Exponential backoff with jitter: `initial × 2^(attempt-1)`, capped at `max`. Defaults 10s and 1h. */
  backoff?: { initial?: Duration; max?: Duration };
}

/**
 * A reconciler: a schedule, a `scan` that finds the items still needing work, a `key`
 * that names each one, and a `reconcile` that does the missing work idempotently.
 * Default-export `defineReconciler({...})` from a file directly under `jobs/`; the file's
 * stem is the reconciler's name.
 */
export interface ReconcilerDefinition<Item> {
  /** Cron expression of 5 fields (minute precision) or 6 fields (seconds first). */
  schedule: string;
  /** IANA time zone the schedule is read in. Default `UTC`. */
  timezone?: string;
  /** One line for `reconciler list`. */
  description?: string;
  /**
   * Finds the items that still need work, in keyset pages: return at most `limit` items
   * after `after`. Or return an async iterable (an `async function*`) and the engine pages it.
   */
  scan(request: ScanRequest<Item>): Promise<readonly Item[]> | AsyncIterable<Item>;
  /** The item's stable identity. Failure memory and `ctx.idempotencyKey` derive from it. */
  key(item: Item): string;
  /**
   * Does the missing work for one item; an `async` function. Must be idempotent: doing it
   * twice has the effect of doing it once.
   */
  reconcile(item: Item, ctx: ReconcileContext): Promise<ReconcileResult>;
  /**
   * When the item started needing work (a return's `received_at`). Optional; with it, the
   * `reconciler_staleness_seconds` metric shows the age of the oldest item the last scan
   * found: the number an operator actually cares about.
   */
  since?(item: Item): Date | undefined;
  /** Items reconciled at once. Default 5. */
  concurrency?: number;
  /** Per-item time limit; `ctx.signal` aborts when it elapses and the item counts as failed. Default 30s. */
  timeout?: Duration;
  /** Items per scan page. Default 500. */
  pageSize?: number;
  retry?: RetryPolicy;
  /** Stop taking new items after this many in one pass; the rest waits for the next pass. */
  maxItemsPerPass?: number;
  /** Stop taking new items after this long; in-flight items still finish. */
  maxPassDuration?: Duration;
  /**
   * PostgreSQL notification channels that start an early pass (the daemon LISTENs on them;
   * bursts are coalesced into a few passes). The payload is ignored: the pass still scans.
   * The schedule stays the safety net: a notification that is lost costs latency, never
   * work. `notifyTrigger()` writes the trigger that sends one for a table.
   */
  wakeOn?: readonly string[];
  /**
   * Split the items into this many partitions by a stable hash of their key, each with its
   * own pass lease, so that up to this many replicas drain the reconciler in parallel. The
   * scan gets `partition` and must filter on it:
   * `WHERE ${inPartition(sql\`'return:' || id::text\`, partition)}`, with an index on
   * `reconciler.partition_of('return:' || id::text, <count>)`. Default 1 (no partitions). See
   * docs/operations.md, "Changing the partition count", before changing it on a running system.
   */
  partitions?: number;
}

/** A definition after validation, with every default filled in. Built by the loader. */
export interface Reconciler<Item = unknown> {
  name: string;
  /** The job file it came from, for error messages. */
  file: string;
  schedule: string;
  timezone: string;
  description: string;
  scan: ReconcilerDefinition<Item>['scan'];
  key: ReconcilerDefinition<Item>['key'];
  reconcile: ReconcilerDefinition<Item>['reconcile'];
  since: ReconcilerDefinition<Item>['since'];
  concurrency: number;
  timeoutMs: number;
  pageSize: number;
  retry: { maxAttempts: number; initialDelayMs: number; maxDelayMs: number };
  maxItemsPerPass: number | undefined;
  maxPassDurationMs: number | undefined;
  /** Notification channels that start an early pass; empty when it runs on its schedule only. */
  wakeOn: readonly string[];
  /** 1 when unpartitioned. */
  partitions: number;
}

const DEFINED = Symbol.for('reconciler.definition');
/** Node's timers hold at most 2^31-1 ms (24.8 days). */
const MAX_TIMER_MS = 24 * 86_400_000;
const KNOWN_OPTIONS = [
  'schedule', 'timezone', 'description', 'scan', 'key', 'reconcile', 'since', 'concurrency',
  'timeout', 'pageSize', 'retry', 'maxItemsPerPass', 'maxPassDuration', 'wakeOn', 'partitions',
] as const;
/** PostgreSQL truncates identifiers, channel names included, to 63 bytes. */
const MAX_CHANNEL_BYTES = 63;
const KNOWN_RETRY_OPTIONS = ['maxAttempts', 'backoff'];
const KNOWN_BACKOFF_OPTIONS = ['initial', 'max'];

/** A problem with a definition. The loader prefixes the file name. */
export class DefinitionError extends Error {
  override name = 'DefinitionError';
}

/**
 * Declares a reconciler. The item type flows from `scan` to `key` to `reconcile`.
 * Validates eagerly: an unknown option, a bad cron or time zone throws here, at import.
 */
export function defineReconciler<Item>(definition: ReconcilerDefinition<Item>): ReconcilerDefinition<Item> {
  validateDefinition(definition);
  Object.defineProperty(definition, DEFINED, { value: true, enumerable: false });
  return definition;
}

/** True when `value` came from `defineReconciler` (of any copy of this module). */
export function isDefinition(value: unknown): value is ReconcilerDefinition<unknown> {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[DEFINED] === true;
}

function checkKeys(object: object, known: readonly string[], where: string): void {
  for (const option of Object.keys(object)) {
    if (!known.includes(option)) {
      throw new DefinitionError(`unknown option \`${where}${option}\`${didYouMean(option, known) || ` (known options: ${known.join(', ')})`}`);
    }
  }
}

function positiveInteger(value: unknown, option: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new DefinitionError(`\`${option}\` must be a whole number of at least 1, got ${JSON.stringify(value)}`);
  }
  return value;
}

function duration(value: unknown, option: string): number {
  try {
    return parseDuration(value);
  } catch (error) {
    throw new DefinitionError(`\`${option}\`: ${(error as Error).message}`);
  }
}

/** Throws a DefinitionError when the cron expression is not 5 or 6 valid fields. */
export function validateSchedule(schedule: unknown): void {
  if (typeof schedule !== 'string' || schedule.trim() === '') {
    throw new DefinitionError('`schedule` is required: a cron expression such as "*/5 * * * *"');
  }
  const fields = schedule.trim().split(/\s+/).length;
  if (fields !== 5 && fields !== 6) {
    throw new DefinitionError(`invalid cron "${schedule}": it has ${fields} fields; use 5 (minute hour day month weekday) or 6 (seconds first)`);
  }
  const result = nodeCron.validateDetailed(schedule);
  if (!result.valid) {
    const reasons = result.errors.map((e) => `${e.field}: ${e.message}`).join('; ');
    throw new DefinitionError(`invalid cron "${schedule}": ${reasons || 'not a cron expression'}`);
  }
}

/** Throws a DefinitionError when `timezone` is not an IANA zone this Node.js knows. */
export function validateTimezone(timezone: unknown): void {
  try {
    if (typeof timezone !== 'string') throw new RangeError();
    new Intl.DateTimeFormat('en-US', { timeZone: timezone });
  } catch {
    throw new DefinitionError(`invalid timezone ${JSON.stringify(timezone)}: use an IANA name such as "UTC" or "Europe/Berlin"`);
  }
}

function validateDefinition(definition: unknown): asserts definition is ReconcilerDefinition<unknown> {
  if (typeof definition !== 'object' || definition === null) {
    throw new DefinitionError('defineReconciler() needs an object: { schedule, scan, key, reconcile, ... }');
  }
  const d = definition as Record<string, unknown>;
  checkKeys(d, KNOWN_OPTIONS, '');
  validateSchedule(d.schedule);
  if (d.timezone !== undefined) validateTimezone(d.timezone);
  for (const fn of ['scan', 'key', 'reconcile'] as const) {
    if (typeof d[fn] !== 'function') throw new DefinitionError(`\`${fn}\` must be a function, got ${typeof d[fn]}`);
  }
  if (d.since !== undefined && typeof d.since !== 'function') throw new DefinitionError(`\`since\` must be a function (item) => Date, got ${typeof d.since}`);
  if (d.description !== undefined && typeof d.description !== 'string') throw new DefinitionError('`description` must be a string');
  if (d.concurrency !== undefined) positiveInteger(d.concurrency, 'concurrency');
  if (d.pageSize !== undefined) positiveInteger(d.pageSize, 'pageSize');
  if (d.maxItemsPerPass !== undefined) positiveInteger(d.maxItemsPerPass, 'maxItemsPerPass');
  for (const option of ['timeout', 'maxPassDuration'] as const) {
    if (d[option] === undefined) continue;
    const ms = duration(d[option], option);
    if (ms <= 0 || ms > MAX_TIMER_MS) throw new DefinitionError(`\`${option}\` must be above zero and at most 24 days, got ${JSON.stringify(d[option])}`);
  }
  if (d.wakeOn !== undefined) validateChannels(d.wakeOn);
  if (d.partitions !== undefined && positiveInteger(d.partitions, 'partitions') > MAX_PARTITIONS) {
    throw new DefinitionError(`\`partitions\` must be at most ${MAX_PARTITIONS}, got ${d.partitions}: more partitions than replicas only adds passes`);
  }
  if (d.retry !== undefined) {
    if (typeof d.retry !== 'object' || d.retry === null) throw new DefinitionError('`retry` must be an object: { maxAttempts, backoff: { initial, max } }');
    const retry = d.retry as Record<string, unknown>;
    checkKeys(retry, KNOWN_RETRY_OPTIONS, 'retry.');
    if (retry.maxAttempts !== undefined) positiveInteger(retry.maxAttempts, 'retry.maxAttempts');
    if (retry.backoff !== undefined) {
      if (typeof retry.backoff !== 'object' || retry.backoff === null) throw new DefinitionError('`retry.backoff` must be an object: { initial, max }');
      const backoff = retry.backoff as Record<string, unknown>;
      checkKeys(backoff, KNOWN_BACKOFF_OPTIONS, 'retry.backoff.');
      if (backoff.initial !== undefined) duration(backoff.initial, 'retry.backoff.initial');
      if (backoff.max !== undefined) duration(backoff.max, 'retry.backoff.max');
    }
  }
}

function validateChannels(wakeOn: unknown): void {
  if (!Array.isArray(wakeOn)) throw new DefinitionError(`\`wakeOn\` must be a list of notification channels, e.g. ['returns'], got ${JSON.stringify(wakeOn)}`);
  for (const channel of wakeOn) {
    if (typeof channel !== 'string' || channel === '' || channel.includes('\u0000') || Buffer.byteLength(channel) > MAX_CHANNEL_BYTES) {
      throw new DefinitionError(`\`wakeOn\`: ${JSON.stringify(channel)} is not a notification channel: use a non-empty name of at most ${MAX_CHANNEL_BYTES} bytes, as given to pg_notify()`);
    }
  }
}

/** Reconciler names are file stems in kebab-case: `settle-returns`. */
export const NAME_PATTERN = /^[a-z0-9]+(?:-[a-z0-9]+)*$/;

/** Fills in defaults. `definition` must have passed `defineReconciler`. */
export function resolveReconciler<Item>(name: string, file: string, definition: ReconcilerDefinition<Item>): Reconciler<Item> {
  const backoff = definition.retry?.backoff;
  return {
    name,
    file,
    schedule: definition.schedule.trim(),
    timezone: definition.timezone ?? 'UTC',
    description: definition.description ?? '',
    scan: definition.scan.bind(definition),
    key: definition.key.bind(definition),
    reconcile: definition.reconcile.bind(definition),
    since: definition.since?.bind(definition),
    concurrency: definition.concurrency ?? 5,
    timeoutMs: definition.timeout === undefined ? 30_000 : parseDuration(definition.timeout),
    pageSize: definition.pageSize ?? 500,
    retry: {
      maxAttempts: definition.retry?.maxAttempts ?? 10,
      initialDelayMs: backoff?.initial === undefined ? 10_000 : parseDuration(backoff.initial),
      maxDelayMs: backoff?.max === undefined ? 3_600_000 : parseDuration(backoff.max),
    },
    maxItemsPerPass: definition.maxItemsPerPass,
    maxPassDurationMs: definition.maxPassDuration === undefined ? undefined : parseDuration(definition.maxPassDuration),
    wakeOn: [...new Set(definition.wakeOn ?? [])],
    partitions: definition.partitions ?? 1,
  };
}
