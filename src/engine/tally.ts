/**
 * What one pass learnt of its items: its counts, the oldest item it found, when the first item
 * it left in backoff falls due, the items aborted in flight, and whether the database went away.
 * Every item is counted once: `found` and its kind together, when the pass classifies it (a
 * rejected, deferred or dead item) or admits it (a due one, whose outcome is counted when it settles).
 */
import type { Logger } from 'pino';
import type { Reconciler } from '../reconciler.js';
import { coerceError } from '../errors.js';
import type { Candidate } from './candidates.js';
import type { ItemReport } from './item.js';
import { emptyCounts, type PassCounts } from './result.js';

/** The count each kind of candidate adds to, besides `found` (a due item's is its outcome). */
const COUNTED_AS: Record<Exclude<Candidate['kind'], 'due'>, keyof PassCounts> = {
  unusable: 'failed',
  busy: 'skipped',
  duplicate: 'skipped',
  backoff: 'deferred',
  dead: 'dead',
};

export class Tally {
  readonly counts = emptyCounts();
  /** The oldest `since(item)` among the items found (see PassResult.oldestItemAt). */
  oldestItemAt: Date | null = null;
  /** Items that died in this pass (counted as dead, not failed; see PassResult.died). */
  died = 0;
  /** When the first item left in backoff falls due (see PassResult.nextRetryAt). */
  nextRetryAt: Date | null = null;
  /** Items aborted mid-reconcile (shutdown timeout, lost lease): named once, after the pass, not a line each. */
  readonly abortedKeys: string[] = [];
  /**
   * Set when one of the engine's own queries finds the database gone (a restart, a failover):
   * the pass takes no more items, does not spend their attempts, and says so once, in its
   * summary line, instead of once per item.
   */
  unavailable: Error | undefined;
  #sinceBroken = false;

  constructor(
    private readonly reconciler: Reconciler,
    private readonly log: Logger,
  ) {}

  /** A candidate the pass will not reconcile: found, and counted as its kind. */
  classified(kind: Exclude<Candidate['kind'], 'due'>): void {
    this.counts.found++;
    this.counts[COUNTED_AS[kind]]++;
  }

  /** A due item the pass took: found; its outcome comes with its report. */
  admitted(): void {
    this.counts.found++;
  }

  /** Folds in what came of an item the pass took. */
  settled(key: string, report: ItemReport): void {
    this.counts[report.counted]++;
    if (report.counted === 'dead') this.died++;
    if (report.aborted) this.abortedKeys.push(key);
    this.unavailable ??= report.unavailable;
    if (report.retryAt) this.noteRetry(report.retryAt);
  }

  noteRetry(at: Date): void {
    if (this.nextRetryAt === null || at < this.nextRetryAt) this.nextRetryAt = at;
  }

  noteSince(item: unknown): void {
    if (!this.reconciler.since || this.#sinceBroken) return;
    try {
      const since = this.reconciler.since(item);
      if (since instanceof Date && !Number.isNaN(since.getTime()) && (this.oldestItemAt === null || since < this.oldestItemAt)) this.oldestItemAt = since;
    } catch (error) {
      this.#sinceBroken = true;
      this.log.warn({ err: coerceError(error) }, 'since() threw; staleness is not measured for this pass');
    }
  }
}
