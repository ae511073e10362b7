/**
 * Which items a pass takes: at most `concurrency` in flight (items, or a set-based reconciler's
 * batches), within its budget (`maxItemsPerPass`, `maxPassDuration`), sharing the process's
 * slots with the other partitions' passes, until it is told to stop.
 */
import type { Reconciler } from '../reconciler.js';
import type { PassSignals } from './pass.js';
import type { Slots } from './slots.js';

export class Admission {
  /** Items (or batches) in flight. */
  #inFlight = 0;
  /** The pass's one wait at a time (for room, or for the end of what is in flight), woken as each settles. */
  #wake: (() => void) | undefined;
  /** The keys of the items in flight. */
  readonly keys = new Set<string>();
  readonly #started = performance.now();
  /** Aborted when the pass must take no more items: a stop (shutdown) or an abort (lost lease, shutdown timeout). */
  readonly #stopped: AbortSignal;
  #taken = 0;
  /** Why the pass gave its partition up to another replica, when that stopped it. */
  handedOver: string | undefined;

  constructor(
    private readonly reconciler: Reconciler,
    private readonly signals: PassSignals,
    private readonly slots: Slots | undefined,
    private readonly unavailable: () => Error | undefined,
  ) {
    this.#stopped = AbortSignal.any([signals.stop, signals.abort]);
  }

  elapsed(): number {
    return performance.now() - this.#started;
  }

  #overBudget(): boolean {
    const { maxItemsPerPass, maxPassDurationMs } = this.reconciler;
    return (maxItemsPerPass !== undefined && this.#taken >= maxItemsPerPass) || (maxPassDurationMs !== undefined && this.elapsed() >= maxPassDurationMs);
  }

  /** The pass must stop: stopped, aborted, the database gone, or its partition handed over. */
  #mustStop(): boolean {
    const { stop, abort, handOver } = this.signals;
    return Boolean(stop.aborted || abort.aborted || this.unavailable() || (this.handedOver = handOver?.()) !== undefined);
  }

  /** The pass must take no more items: it must stop, or it is over budget. */
  closed(): boolean {
    return this.#mustStop() || this.#overBudget();
  }

  /** `items` may not start: the pass must stop, or (for items not yet counted) it is over budget. */
  #refused(items: number): boolean {
    return items > 0 ? this.closed() : this.#mustStop();
  }

  /**
   * Admits at once when there is room: true (admitted, its slot taken), false (the pass must
   * stop), or undefined (no room now: `admit` waits for it). The common case costs no promise.
   */
  tryAdmit(items = 1): boolean | undefined {
    if (this.#inFlight >= this.reconciler.concurrency) return undefined;
    if (this.#refused(items)) return false;
    if (this.slots && !this.slots.tryTake()) return undefined;
    this.#taken += items;
    return true;
  }

  /**
   * Waits for room (this pass's concurrency, then a slot shared with the other partitions'
   * passes, but not past a stop) and looks again after each wait; false when the pass must
   * stop. `items` counts toward the budget (a batch's, taken one by one before, does not).
   */
  async admit(items = 1): Promise<boolean> {
    const now = this.tryAdmit(items);
    if (now !== undefined) return now;
    while (this.#inFlight >= this.reconciler.concurrency) await new Promise<void>((resolve) => (this.#wake = resolve));
    if (this.#refused(items)) return false;
    if (this.slots) {
      const took = await this.slots.take(this.#stopped);
      if (!took || this.#refused(items)) {
        if (took) this.slots.give();
        return false;
      }
    }
    this.#taken += items;
    return true;
  }

  /** Counts an item toward the budget as a batch gathers it (the batch is admitted with `admit(0)`). */
  gather(key: string): void {
    this.#taken++;
    this.keys.add(key);
  }

  /** Runs admitted work for one item; its slot and key are given back when it settles (it reports its own failures, and never rejects). */
  startItem(key: string, work: Promise<void>): void {
    this.keys.add(key);
    this.#inFlight++;
    const settled = () => {
      this.keys.delete(key);
      this.#settled();
    };
    void work.then(settled, settled);
  }

  /** Runs an admitted batch; its slot and keys (gathered already) are given back when it settles. */
  startBatch(keys: readonly string[], work: Promise<void>): void {
    this.#inFlight++;
    const settled = () => {
      this.release(keys);
      this.#settled();
    };
    void work.then(settled, settled);
  }

  #settled(): void {
    this.slots?.give();
    this.#inFlight--;
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Gathered keys that will not run after all (the pass stopped before their batch was admitted). */
  release(keys: readonly string[]): void {
    for (const key of keys) this.keys.delete(key);
  }

  async drain(): Promise<void> {
    while (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#wake = resolve));
  }
}
