/**
 * One pass of one reconciler: scan in keyset pages (one page ahead), look up failure memory once per page,
 * reconcile the due items with at most `concurrency` in flight, each under its timeout,
 * and count every outcome. The pass never lets one item's failure or hang stop the rest.
 * Leases and history rows are the engine's job (engine.ts); this file does the work.
 */
import { setMaxListeners } from 'node:events';
import type { Logger } from 'pino';
import { partitionOf, type Db, type Outcome, type Partition, type Reconciler, type ReconcileResult } from '../reconciler.js';
import { coerceError, errorSummary, isDatabaseUnavailable, isTerminalError } from '../errors.js';
import { formatDuration } from '../duration.js';
import { abortable } from '../timeout.js';
import { inPartitionText } from '../store/partition.js';
import { forgetFailure, lookupFailures, recordFailure, type FailureMemory } from '../store/failures.js';
import { databaseAnswers } from '../store/database.js';
import { emptyCounts, type PassResult, type PassStatus, type Trigger } from './result.js';
import { retryDelay } from './backoff.js';
import { FailureDigest } from './failure-digest.js';
import type { EngineEvents } from './events.js';
import type { Slots } from './slots.js';

/** Longest key accepted; longer keys could not be indexed by failure memory. */
export const MAX_KEY_LENGTH = 1_024;
const OUTCOMES: readonly Outcome[] = ['changed', 'unchanged', 'skipped'];

export interface PassOptions {
  trigger: Trigger;
  dryRun: boolean;
  /** Reconcile only the item with this key (ignoring its backoff); `reconciler run --key`. */
  onlyKey?: string;
  partition: Partition;
}

export interface PassControl {
  /** Aborted to stop taking new items (shutdown began); in-flight items go on. */
  stop: AbortSignal;
  /** Aborted to abort in-flight items too (shutdown timeout, lease lost). */
  abort: AbortSignal;
  /**
   * Asked before each item is taken: a reason when the partition now belongs to another
   * replica (one joined), so the pass stops taking items, lets those in flight finish, and
   * ends incomplete. Must answer at once (from what it last learnt), not query per item.
   */
  handOver?: () => string | undefined;
}

export interface PassDeps {
  db: Db;
  log: Logger;
  events: EngineEvents;
  runId: number | null;
  /**
   * Keys of this reconciler whose `reconcile` is still running in this process, across
   * passes: an item that timed out but ignores its signal keeps its key here until it
   * settles, so that no later pass starts the same item beside it.
   */
  busyKeys: Set<string>;
  /** This reconciler's items in flight in this process, shared by the passes of its partitions. */
  slots?: Slots;
  random?: () => number;
}

class ItemTimeoutError extends Error {
  override name = 'TimeoutError';
}

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as AsyncIterable<unknown>)[Symbol.asyncIterator] === 'function';
}

/** The scan's items in pages of at most `pageSize`, whether `scan` returns pages or an async iterable. */
async function* pagesOf(reconciler: Reconciler, db: Db, signal: AbortSignal, partition: Partition): AsyncGenerator<unknown[]> {
  let after: unknown = undefined;
  for (;;) {
    const result = reconciler.scan({ db, after, limit: reconciler.pageSize, signal, partition });
    if (isAsyncIterable(result)) {
      let page: unknown[] = [];
      for await (const item of result) {
        page.push(item);
        if (page.length >= reconciler.pageSize) {
          yield page;
          page = [];
        }
      }
      if (page.length > 0) yield page;
      return;
    }
    const items: unknown = await result;
    if (!Array.isArray(items)) {
      throw new TypeError(`scan() must return an array of items (one page) or an async iterable, but it returned ${items === null ? 'null' : typeof items}`);
    }
    if (items.length > 0) yield items;
    if (items.length < reconciler.pageSize) return;
    after = items[items.length - 1];
  }
}

/** A scanned page, keyed, with the failure memory of its keys (stamped as seen unless read-only). */
interface PreparedPage {
  page: unknown[];
  keys: ReturnType<typeof keyOf>[];
  memories: Map<string, FailureMemory>;
}

/**
 * The scan's pages, each keyed and with its failure memory looked up one page ahead of the
 * pass: while the items of one page are being started, the next page's scan and lookup run,
 * so the items in flight never wait for them (at high concurrency that wait, a stall per
 * page, cost a tenth of the throughput). An early stop waits for the page being prepared,
 * so that no query outlives the pass.
 */
async function* preparedPages(reconciler: Reconciler, db: Db, signal: AbortSignal, options: PassOptions, foreign: string[]): AsyncGenerator<PreparedPage> {
  const source = pagesOf(reconciler, db, signal, options.partition);
  const { index, count } = options.partition;
  const prepare = async (): Promise<PreparedPage | undefined> => {
    const next = await source.next();
    if (next.done) return undefined;
    let page = next.value;
    let keys = page.map((item) => keyOf(reconciler, item));
    if (count > 1) {
      // An item of another partition is that partition's holder's to work: two holders must never work one item.
      const mine = keys.map((k) => !('key' in k) || partitionOf(k.key, count) === index);
      if (mine.includes(false)) {
        keys.forEach((k, i) => !mine[i] && 'key' in k && foreign.push(k.key));
        page = page.filter((_, i) => mine[i]);
        keys = keys.filter((_, i) => mine[i]);
      }
    }
    const lookup = new Set<string>();
    for (const k of keys) if ('key' in k && (options.onlyKey === undefined || k.key === options.onlyKey)) lookup.add(k.key);
    return { page, keys, memories: await lookupFailures(db, reconciler.name, [...lookup], options.dryRun) };
  };
  let upcoming = prepare();
  try {
    for (;;) {
      const current = await upcoming;
      if (!current) return;
      upcoming = prepare();
      upcoming.catch(() => undefined); // its error is thrown when the pass asks for that page
      yield current;
    }
  } finally {
    await upcoming.catch(() => undefined);
    await source.return(undefined);
  }
}

function normalizeResult(result: ReconcileResult): { outcome: Outcome; note: string | undefined } {
  const outcome = typeof result === 'string' ? result : (result as { outcome?: unknown } | null)?.outcome;
  if (typeof outcome === 'string' && (OUTCOMES as readonly string[]).includes(outcome)) {
    const note = typeof result === 'object' && result !== null && typeof result.note === 'string' ? result.note : undefined;
    return { outcome: outcome as Outcome, note };
  }
  throw new TypeError(`reconcile() returned ${JSON.stringify(result) ?? String(result)}; expected 'changed', 'unchanged', 'skipped' or { outcome, note }`);
}

function keyOf(reconciler: Reconciler, item: unknown): { key: string } | { problem: string } {
  let key: unknown;
  try {
    key = reconciler.key(item);
  } catch (error) {
    return { problem: `key() threw: ${errorSummary(coerceError(error), 300)}` };
  }
  if (typeof key !== 'string' || key === '') return { problem: `key() returned ${JSON.stringify(key) ?? String(key)}; it must return a non-empty string` };
  if (key.includes('\u0000')) return { problem: `key() returned a key with a NUL character (${JSON.stringify(key.slice(0, 80))}); PostgreSQL text cannot store it` };
  if (key.length > MAX_KEY_LENGTH) return { problem: `key() returned a key of ${key.length} characters; keys must be at most ${MAX_KEY_LENGTH}` };
  return { key };
}

/** Runs one pass. Never throws: a broken pass comes back with status `error`. */
export async function runPass(reconciler: Reconciler, options: PassOptions, deps: PassDeps, control: PassControl): Promise<PassResult> {
  const { db, events } = deps;
  const log = deps.log.child({ reconciler: reconciler.name, passId: deps.runId ?? 'dry-run' });
  const started = performance.now();
  const counts = emptyCounts();
  const failures = new FailureDigest();
  const inFlight = new Set<Promise<void>>();
  const keysInFlight = new Set<string>();
  let complete = false;
  let taken = 0;
  let error: string | null = null;
  let keyFound = false;
  let oldestItemAt: Date | null = null;
  let sinceBroken = false;
  /**
   * Set when one of the engine's own queries finds the database gone (a restart, a failover):
   * the pass takes no more items, does not spend their attempts, and says so once, in its
   * summary line, instead of once per item.
   */
  let unavailable: Error | undefined;
  let nextRetryAt: Date | null = null;
  let handedOver: string | undefined;
  /** Items aborted mid-reconcile (shutdown timeout, lost lease): named once, after the pass, not a line each. */
  const abortedKeys: string[] = [];
  /** Keys the scan returned that belong to other partitions: skipped, and named once after the pass. */
  const foreign: string[] = [];
  const noteRetry = (at: Date) => {
    if (nextRetryAt === null || at < nextRetryAt) nextRetryAt = at;
  };
  const noteSince = (item: unknown) => {
    if (!reconciler.since || sinceBroken) return;
    try {
      const since = reconciler.since(item);
      if (since instanceof Date && !Number.isNaN(since.getTime()) && (oldestItemAt === null || since < oldestItemAt)) oldestItemAt = since;
    } catch (error) {
      sinceBroken = true;
      log.warn({ err: coerceError(error) }, 'since() threw; staleness is not measured for this pass');
    }
  };
  const elapsed = () => performance.now() - started;
  /** Aborted when the pass must take no more items: a stop (shutdown) or an abort (lost lease, shutdown timeout). */
  const stopped = AbortSignal.any([control.stop, control.abort]);
  setMaxListeners(reconciler.concurrency + 10, control.abort); // one abort listener per item in flight
  const overBudget = () =>
    (reconciler.maxItemsPerPass !== undefined && taken >= reconciler.maxItemsPerPass) ||
    (reconciler.maxPassDurationMs !== undefined && elapsed() >= reconciler.maxPassDurationMs);
  /** The pass must take no more items: stopped, aborted, the database gone, over budget, or its partition handed over. */
  const takeNoMore = () =>
    control.stop.aborted || control.abort.aborted || unavailable || overBudget() || (handedOver = control.handOver?.()) !== undefined;

  const reconcileItem = async (item: unknown, key: string, memory: FailureMemory | undefined): Promise<void> => {
    const attempt = (memory?.attempts ?? 0) + 1;
    const controller = new AbortController();
    const abortItem = () => controller.abort(control.abort.reason);
    control.abort.addEventListener('abort', abortItem, { once: true });
    const timer = setTimeout(() => controller.abort(new ItemTimeoutError(`timed out after ${formatDuration(reconciler.timeoutMs)}`)), reconciler.timeoutMs);
    const itemLog = log.child({ key });
    const itemStarted = performance.now();
    try {
      deps.busyKeys.add(key);
      const work = Promise.resolve().then(() =>
        reconciler.reconcile(item, { db, log: itemLog, signal: controller.signal, attempt, dryRun: options.dryRun, idempotencyKey: `${reconciler.name}:${key}`, key }),
      );
      void work.then(
        () => deps.busyKeys.delete(key),
        () => deps.busyKeys.delete(key),
      );
      const { outcome, note } = normalizeResult(await abortable(work, controller.signal));
      counts[outcome]++;
      if (memory && !options.dryRun) {
        try {
          await forgetFailure(db, reconciler.name, key);
        } catch (forgetError) {
          if (isDatabaseUnavailable(forgetError)) unavailable ??= coerceError(forgetError);
          else itemLog.warn({ err: coerceError(forgetError) }, 'done, but could not clear its failure record; the next pass will clear it');
        }
      }
      const durationMs = performance.now() - itemStarted;
      itemLog.debug({ outcome, note, durationMs: Math.round(durationMs), attempt }, note ? `${outcome}: ${note}` : outcome);
      events.emit('item:done', { reconciler: reconciler.name, key, outcome, note, durationMs, dryRun: options.dryRun });
    } catch (thrown) {
      const failure = coerceError(thrown);
      if (control.abort.aborted && !(failure instanceof ItemTimeoutError)) {
        counts.skipped++; // aborted by shutdown or a lost lease: not the item's fault, no attempt spent; the pass summary says why
        abortedKeys.push(key);
        itemLog.debug({ attempt }, `aborted in flight: ${errorSummary(coerceError(control.abort.reason), 200)}`);
        return;
      }
      const terminal = isTerminalError(failure);
      let dead = terminal || attempt >= reconciler.retry.maxAttempts;
      let attempts = attempt;
      const { delayMs, askedMs } = retryDelay(failure, attempt, reconciler.retry, deps.random);
      const message = errorSummary(failure);
      if (!options.dryRun) {
        try {
          ({ attempts, dead } = await recordFailure(db, { reconciler: reconciler.name, partition: options.partition.index, key, error: message, delayMs, terminal, maxAttempts: reconciler.retry.maxAttempts }));
        } catch (recordError) {
          if (isDatabaseUnavailable(recordError)) {
            unavailable ??= coerceError(recordError);
            counts.skipped++; // not recorded, no attempt spent: the next pass finds it again
            itemLog.debug({ err: failure }, 'failed while the database is unavailable; not recorded');
            return;
          }
          itemLog.error({ err: coerceError(recordError) }, 'could not record the failure; the item will be found again by the next pass');
        }
      }
      counts.failed++;
      if (!dead && !options.dryRun) noteRetry(new Date(Date.now() + delayMs));
      // The first failure of a kind is a warning; the same again in this pass is summed up at its end.
      const level = dead ? 'error' : failures.note(key, message) ? 'warn' : 'debug';
      const next = dead
        ? terminal
          ? 'dead (TerminalError): skipped until `reconciler retry`'
          : `dead after ${attempts} attempt${attempts === 1 ? '' : 's'}: skipped until \`reconciler retry\``
        : `retry in ${formatDuration(delayMs)}${askedMs === undefined ? '' : askedMs > delayMs ? ` (its error asked for ${formatDuration(askedMs)}; retry.backoff.max caps the wait)` : ' (as its error asked)'}`;
      itemLog[level]({ attempt: attempts, dead, error: message }, `failed: ${errorSummary(failure, 300)}; ${options.dryRun ? 'dry run, not recorded' : next}`);
      events.emit('item:failed', { reconciler: reconciler.name, key, error: failure, attempt: attempts, dead, dryRun: options.dryRun });
    } finally {
      clearTimeout(timer);
      control.abort.removeEventListener('abort', abortItem);
    }
  };

  try {
    let previousFirstKey: string | undefined;
    complete = true;
    pages: for await (const { page, keys, memories } of preparedPages(reconciler, db, control.abort, options, foreign)) {
      events.emit('page:scanned', { reconciler: reconciler.name, items: page.length });
      const keyed: { item: unknown; key: string }[] = [];
      const pageKeys = new Set<string>();
      page.forEach((item, i) => {
        const result = keys[i]!;
        if ('problem' in result) {
          counts.found++;
          counts.failed++;
          log.error({ item: typeof item === 'object' ? undefined : item }, `scan yielded an item without a usable key: ${result.problem}`);
          return;
        }
        if (options.onlyKey !== undefined && result.key !== options.onlyKey) return;
        if (deps.busyKeys.has(result.key) && !keysInFlight.has(result.key)) {
          counts.found++;
          counts.skipped++;
          pageKeys.add(result.key); // seen (its failure memory was stamped with the page): a later duplicate is skipped too
          log.warn({ key: result.key }, 'skipped: an earlier attempt that timed out is still running in this process (its reconcile ignores ctx.signal)');
          return;
        }
        if (pageKeys.has(result.key) || keysInFlight.has(result.key)) {
          counts.found++;
          counts.skipped++;
          log.warn({ key: result.key }, 'scan yielded the same key twice; reconciling it once');
          return;
        }
        pageKeys.add(result.key);
        keyed.push({ item, key: result.key });
      });
      const firstKey = keyed[0]?.key;
      if (firstKey !== undefined && firstKey === previousFirstKey && options.onlyKey === undefined) {
        throw new Error('scan() returned the same page twice: it must return the items after `after` (keyset paging), or the pass would never end');
      }
      previousFirstKey = firstKey ?? previousFirstKey;
      for (const { item, key } of keyed) {
        if (takeNoMore()) {
          complete = false;
          break pages;
        }
        counts.found++;
        noteSince(item);
        const memory = memories.get(key);
        if (memory?.dead) {
          counts.dead++;
          events.emit('item:deferred', { reconciler: reconciler.name, key, reason: 'dead', nextAttemptAt: memory.nextAttemptAt });
          continue;
        }
        if (memory?.inBackoff && options.onlyKey === undefined) {
          counts.deferred++;
          noteRetry(memory.nextAttemptAt);
          events.emit('item:deferred', { reconciler: reconciler.name, key, reason: 'backoff', nextAttemptAt: memory.nextAttemptAt });
          continue;
        }
        while (inFlight.size >= reconciler.concurrency) await Promise.race(inFlight);
        if (takeNoMore()) {
          counts.found--;
          complete = false;
          break pages;
        }
        // Shared with the other partitions' passes in this process: wait for a slot, but not past a stop,
        // and look again after the wait (the budget, a hand-over).
        if (deps.slots) {
          const took = await deps.slots.take(stopped);
          if (!took || takeNoMore()) {
            if (took) deps.slots.give();
            counts.found--;
            complete = false;
            break pages;
          }
        }
        taken++;
        keysInFlight.add(key);
        const running = reconcileItem(item, key, memory).finally(() => {
          deps.slots?.give();
          inFlight.delete(running);
          keysInFlight.delete(key);
        });
        inFlight.add(running);
      }
      if (options.onlyKey !== undefined && keyed.length > 0) {
        keyFound = true;
        complete = false;
        break;
      }
    }
  } catch (thrown) {
    complete = false;
    const failure = coerceError(thrown);
    error = control.abort.aborted ? errorSummary(coerceError(control.abort.reason)) : errorSummary(failure);
    // The scan is the job's code and may call other services: its connection error means our
    // database is gone only if the database does not answer either.
    if (!control.abort.aborted && isDatabaseUnavailable(failure) && !(await databaseAnswers(db))) unavailable ??= failure;
    else if (!control.abort.aborted) log.error({ err: failure }, `pass broke off: ${error}`);
  }
  await Promise.all(inFlight);
  failures.summarise(log);
  if (abortedKeys.length > 0) {
    const shown = abortedKeys.slice(0, 10).join(', ');
    log.info({ keys: abortedKeys.slice(0, 100), count: abortedKeys.length }, `${abortedKeys.length} item(s) aborted in flight, no attempt spent; the next pass finds them again: ${shown}${abortedKeys.length > 10 ? ', …' : ''}`);
  }
  if (foreign.length > 0) {
    const { index, count } = options.partition;
    log.error(
      { keys: foreign.slice(0, 100), count: foreign.length, partition: index, partitions: count },
      `the scan of partition ${index} of ${count} returned ${foreign.length} item(s) of other partitions (e.g. ${foreign[0]}); they were left to their own partition's pass. ` +
        `Filter the scan on its partition: WHERE ${inPartitionText(count, index)}`,
    );
  }
  if (unavailable && !control.abort.aborted) {
    complete = false;
    error = `the database is unavailable (${errorSummary(unavailable, 300)}): the pass stopped taking items; the next pass resumes`;
  }

  let status: PassStatus;
  if (control.abort.aborted || (control.stop.aborted && !complete)) {
    status = 'aborted';
    error ??= errorSummary(coerceError(control.abort.reason ?? control.stop.reason ?? 'stopped'));
    // In the run's record, where history shows it: which items were cut off (no attempt spent).
    if (abortedKeys.length > 0) error += `; ${abortedKeys.length} item(s) aborted in flight, no attempt spent: ${abortedKeys.slice(0, 20).join(', ')}${abortedKeys.length > 20 ? ', …' : ''}`;
  } else if (error !== null) status = 'error';
  else if (counts.failed > 0) status = 'failed';
  else status = 'succeeded';

  const result: PassResult = {
    reconciler: reconciler.name,
    partition: options.partition,
    runId: deps.runId,
    trigger: options.trigger,
    dryRun: options.dryRun,
    status,
    counts,
    complete,
    durationMs: elapsed(),
    error,
    ...(options.onlyKey !== undefined ? { keyFound } : {}),
    oldestItemAt,
    nextRetryAt,
    ...(handedOver !== undefined ? { handedOver } : {}),
  };
  return result;
}
