/**
 * The scan of one pass as candidates: its items, page by page (one page looked ahead, with the
 * failure memory of its keys), each classified exactly once:
 * - not this partition (foreign): left to its own partition's pass, named once at the end;
 * - rejected: its key is unusable, still busy from an earlier attempt, or repeated;
 * - offered: due (reconcile it now), in backoff, or dead.
 * `--key` (onlyKey) is a filter here: only that key's items are candidates, and the page that
 * holds it is the last one scanned.
 */
import type { Logger } from 'pino';
import type { Db, Reconciler } from '../reconciler.js';
import { partitionOf, type Partition } from '../store/partition.js';
import { coerceError, errorSummary } from '../errors.js';
import { lookupFailures, type FailureMemory } from '../store/failures.js';
import type { EngineEvents } from './events.js';
import type { EngineTracer } from '../tracing/index.js';
import { recording } from './item.js';

/** Longest key accepted; longer keys could not be indexed by failure memory. */
export const MAX_KEY_LENGTH = 1_024;

/** An item the pass counts as soon as it reaches its page, whatever happens next. */
export type Rejected = { kind: 'unusable' } | { kind: 'busy'; key: string } | { kind: 'duplicate'; key: string };

/** An item the pass takes up in order, until it stops taking items. */
export type Offered = { kind: 'due'; item: unknown; key: string; memory: FailureMemory | undefined } | { kind: 'backoff' | 'dead'; item: unknown; key: string; memory: FailureMemory };

export type Candidate = Rejected | Offered;

export interface CandidateScan {
  reconciler: Reconciler;
  /** See ItemScope.tracer: each page's scan and lookup is a `scan page` span. */
  tracer?: EngineTracer;
  db: Db;
  /** The pass's log: rejected items are logged where they are classified. */
  log: Logger;
  events: EngineEvents;
  /** Aborts the scan (the pass's abort). */
  signal: AbortSignal;
  partition: Partition;
  /** Look failure memory up without stamping it as seen. */
  dryRun: boolean;
  onlyKey?: string;
  /** Keys whose reconcile is still running in this process, from any pass (see PassDeps.busyKeys). */
  busyKeys: ReadonlySet<string>;
  /** Keys this pass has in flight. */
  inFlight: ReadonlySet<string>;
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

/** A scanned page of this partition's items, keyed, with the failure memory of its keys (stamped as seen unless read-only). */
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
 * so that no query outlives the pass. Items of other partitions are dropped here (their keys
 * noted in `foreign`): two holders must never work one item.
 */
async function* preparedPages(scan: CandidateScan, foreign: string[]): AsyncGenerator<PreparedPage> {
  const { reconciler, db } = scan;
  const source = pagesOf(reconciler, db, scan.signal, scan.partition);
  const { index, count } = scan.partition;
  const { tracer } = scan;
  // The scan's query and the failure memory's lookup: one `scan page` span while tracing is on.
  const prepare = (): Promise<PreparedPage | undefined> => recording(tracer, 'scan page', reconciler.name, preparePage);
  const preparePage = async (): Promise<PreparedPage | undefined> => {
    const next = await source.next();
    if (next.done) return undefined;
    let page = next.value;
    let keys = page.map((item) => keyOf(reconciler, item));
    if (count > 1) {
      const mine = keys.map((k) => !('key' in k) || partitionOf(k.key, count) === index);
      if (mine.includes(false)) {
        keys.forEach((k, i) => !mine[i] && 'key' in k && foreign.push(k.key));
        page = page.filter((_, i) => mine[i]);
        keys = keys.filter((_, i) => mine[i]);
      }
    }
    const lookup = new Set<string>();
    for (const k of keys) if ('key' in k && (scan.onlyKey === undefined || k.key === scan.onlyKey)) lookup.add(k.key);
    return { page, keys, memories: await lookupFailures(db, reconciler.name, [...lookup], scan.dryRun) };
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

/** Due, in backoff or dead, by its failure memory; `--key` ignores the backoff. */
function offer(scan: CandidateScan, item: unknown, key: string, memory: FailureMemory | undefined): Offered {
  if (memory?.dead) return { kind: 'dead', item, key, memory };
  if (memory?.inBackoff && scan.onlyKey === undefined) return { kind: 'backoff', item, key, memory };
  return { kind: 'due', item, key, memory };
}

/** Classifies a page when the pass reaches it (so "in flight" means in flight then), logging each rejected item. */
function classifyPage(scan: CandidateScan, { page, keys, memories }: PreparedPage): { rejected: Rejected[]; offered: Offered[] } {
  const { log } = scan;
  const rejected: Rejected[] = [];
  const offered: Offered[] = [];
  const seen = new Set<string>();
  page.forEach((item, i) => {
    const result = keys[i]!;
    if ('problem' in result) {
      rejected.push({ kind: 'unusable' });
      log.error({ event: 'scan:bad-key', item: typeof item === 'object' ? undefined : item }, `scan yielded an item without a usable key: ${result.problem}`);
      return;
    }
    const { key } = result;
    if (scan.onlyKey !== undefined && key !== scan.onlyKey) return;
    if (scan.busyKeys.has(key) && !scan.inFlight.has(key)) {
      rejected.push({ kind: 'busy', key });
      seen.add(key); // seen (its failure memory was stamped with the page): a later duplicate is skipped too
      log.warn({ key }, 'skipped: an earlier attempt that timed out is still running in this process (its reconcile ignores ctx.signal)');
      return;
    }
    if (seen.has(key) || scan.inFlight.has(key)) {
      rejected.push({ kind: 'duplicate', key });
      log.warn({ event: 'scan:duplicate-key', key }, 'scan yielded the same key twice; reconciling it once');
      return;
    }
    seen.add(key);
    offered.push(offer(scan, item, key, memories.get(key)));
  });
  return { rejected, offered };
}

/**
 * Page by page, each page's rejected items first (counted whatever follows), then its offered
 * ones in scan order: a page at a time, so that the pass pays one await per page, not per item.
 */
async function* candidatesOf(scan: CandidateScan, pages: AsyncGenerator<PreparedPage>): AsyncGenerator<readonly Candidate[]> {
  let previousFirstKey: string | undefined;
  for await (const prepared of pages) {
    scan.events.emit('page:scanned', { reconciler: scan.reconciler.name, items: prepared.page.length });
    const { rejected, offered } = classifyPage(scan, prepared);
    if (rejected.length > 0) yield rejected;
    const firstKey = offered[0]?.key;
    if (firstKey !== undefined && firstKey === previousFirstKey && scan.onlyKey === undefined) {
      throw new Error('scan() returned the same page twice: it must return the items after `after` (keyset paging), or the pass would never end');
    }
    previousFirstKey = firstKey ?? previousFirstKey;
    if (offered.length > 0) yield offered;
    if (scan.onlyKey !== undefined && offered.length > 0) return; // `--key`: found; the rest of the scan is not needed
  }
}

/** The pass's candidates, and the keys of other partitions' items the scan returned (filled as pages are prepared). */
export function scanCandidates(scan: CandidateScan): { candidates: AsyncGenerator<readonly Candidate[]>; foreign: string[] } {
  const foreign: string[] = [];
  return { candidates: candidatesOf(scan, preparedPages(scan, foreign)), foreign };
}
