/**
 * What a reconciler is: the definition a job file default-exports (the contract between an
 * author and the engine), and its defaults. Every definition is checked once, when the file is
 * loaded (definition-schema.ts), so that a bad file fails start-up with a message naming the
 * file, never a pass at 3 a.m.
 */
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import type { Logger } from 'pino';
import type { Partition } from './store/partition.js';
import { parseDuration, type Duration } from './duration.js';
import { validateDefinition } from './definition-schema.js';
import type { ManualAction } from './actions.js';

export type { ActionContext, ManualAction } from './actions.js';

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
 * What each does to failure memory, the pass's counts and a dry run: see `ReconcilerDefinition.reconcile`.
 */
export type Outcome = 'changed' | 'unchanged' | 'skipped';
export type ReconcileResult = Outcome | { outcome: Outcome; note?: string };

// A partition of a reconciler, as its scan receives it; the hash that places keys in one is store/partition.ts's alone.
export type { Partition } from './store/partition.js';

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

/** What `reconcileBatch` gets besides the items: as {@link ReconcileContext}, for a batch. */
export interface BatchContext {
  db: Db;
  /** A child logger carrying reconciler and pass id (and `keys` count). */
  log: Logger;
  /** Aborted when the batch's `timeout` elapses, when the pass loses its lease, or when SHUTDOWN_TIMEOUT has passed. */
  signal: AbortSignal;
  /** True under `reconciler run --dry-run`: decide and describe, but change nothing. */
  dryRun: boolean;
  /** Each item's attempt, by key: 1 on its first try (as `ctx.attempt` of a per-item reconcile). */
  attempts: ReadonlyMap<string, number>;
  /** The items' keys, in the order of the items. */
  keys: readonly string[];
}

/**
 * What `reconcileBatch` returns: each item's outcome by its key, as a Map or a plain object. An
 * outcome is what `reconcile` returns (`'changed'`, `'unchanged'`, `'skipped'`, `{ outcome, note }`),
 * or an Error: that item failed (a `TerminalError` kills it). A key it does not mention failed.
 */
export type BatchOutcomes = ReadonlyMap<string, ReconcileResult | Error> | Readonly<Record<string, ReconcileResult | Error>>;

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
   * twice has the effect of doing it once. What it returns or throws decides three things:
   * the item's failure memory (its attempts, backoff and dead state in `reconciler.failures`),
   * the count it adds to in the pass's counts (history, `reconciler_items_total`), and its
   * line under `--dry-run`.
   *
   * - `'changed'` / `'unchanged'` (or `{ outcome, note }`): counted as that outcome. The item's
   *   failure memory, if any, is deleted: the work is done, so the next failure starts again at
   *   attempt 1 with a fresh budget.
   * - `'skipped'`: counted as skipped. Failure memory is kept as it is (attempts, last error,
   *   dead or not): a skip is not a success, and the work it says is missing is still missing.
   *   No attempt is spent and no backoff added; a later pass reconciles the item again, with
   *   `ctx.attempt` one above the failures so far. Return `'unchanged'` when nothing needs
   *   doing: that forgets the failure.
   * - throws: counted as failed, and the pass ends `failed`. Failure memory records one more
   *   attempt and the error; the item is in backoff until `initial × 2^(attempt-1)` (capped at
   *   `retry.backoff.max`, with jitter) has passed, or until its `retryAfter` says; passes in
   *   between count it as deferred and leave it alone (`reconciler run --key` does not wait).
   *   At `retry.maxAttempts` failed attempts it is dead.
   * - throws a `TerminalError`: as a throw, but dead at once.
   *   A dead item is counted as dead by every later pass and never reconciled until
   *   `reconciler retry` (due now, fresh budget) or `reconciler clear` (forgotten).
   * - runs past `timeout`: `ctx.signal` aborts, and it counts as a throw (`timed out after …`).
   * - returns anything else: a TypeError naming the value, counted as a throw.
   * - is aborted by a shutdown or a lost lease: counted as skipped, nothing recorded, no
   *   attempt spent.
   *
   * Under `dryRun` (`reconciler run --dry-run`) nothing is recorded: failure memory is neither
   * written nor deleted, and no history is kept. Each outcome prints as `would be <outcome>`
   * with its note, a throw as `would fail` with its error, and the counts are the same as a
   * real pass would report for the same answers. Items in backoff and dead items are shown as
   * `not now` and not reconciled, as in a real pass.
   */
  reconcile?(item: Item, ctx: ReconcileContext): Promise<ReconcileResult>;
  /**
   * Instead of `reconcile` (exactly one of the two): does the work of up to `batchSize` due items
   * at once, e.g. one `UPDATE … WHERE id = ANY(…)`, and returns each item's outcome by key
   * ({@link BatchOutcomes}), which counts as `reconcile`'s would. Idempotent, like `reconcile`.
   * When it throws, the engine splits the batch in halves, down to single items: only the items
   * that fail alone are recorded as failed (docs/writing-reconcilers.md, "Set-based reconcilers").
   */
  reconcileBatch?(items: readonly Item[], ctx: BatchContext): Promise<BatchOutcomes>;
  /** Items per `reconcileBatch` call, at most. Default: `pageSize`. */
  batchSize?: number;
  /**
   * When the item started needing work (a return's `received_at`). Optional; with it, the
   * `reconciler_staleness_seconds` metric shows the age of the oldest item the last scan
   * found: the number an operator actually cares about.
   */
  since?(item: Item): Date | undefined;
  /** Items reconciled at once (with `reconcileBatch`: batches). Default 5. */
  concurrency?: number;
  /** Per-item (with `reconcileBatch`: per-batch) time limit; `ctx.signal` aborts when it elapses and the item counts as failed. Default 30s. */
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
   * `WHERE ${inPartition(sql\`'return:' || id::text\`, partition)}`, with an index on the expression
   * `partitionIndexExpression(sql\`'return:' || id::text\`, <count>)` writes. Default 1 (no partitions). See
   * docs/operations.md, "Changing the partition count", before changing it on a running system.
   */
  partitions?: number;
  /**
   * Manual actions, by name (kebab-case): what an operator may decide for one item, from the
   * console or `reconciler act`, with a note, recorded in the audit log. See {@link ManualAction}.
   */
  actions?: Readonly<Record<string, ManualAction>>;
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
  /** Exactly one of `reconcile` and `reconcileBatch` is set. */
  reconcile: ReconcilerDefinition<Item>['reconcile'];
  reconcileBatch: ReconcilerDefinition<Item>['reconcileBatch'];
  /** Items per `reconcileBatch` call (the page size when not set). */
  batchSize: number;
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
  /** Its manual actions, by name; empty when it declares none. */
  actions: Readonly<Record<string, ManualAction>>;
}

const DEFINED = Symbol.for('reconciler.definition');

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
    reconcile: definition.reconcile?.bind(definition),
    reconcileBatch: definition.reconcileBatch?.bind(definition),
    batchSize: definition.batchSize ?? definition.pageSize ?? 500,
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
    actions: definition.actions ?? {},
  };
}
