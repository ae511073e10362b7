/**
 * Which items a pass takes: at most `concurrency` in flight (items, or a set-based reconciler's
 * batches), within its budget (`maxItemsPerPass`, `maxPassDuration`), sharing the process's
 * slots with the other partitions' passes, until it is told to stop.
 */
import type { Reconciler } from '../reconciler.js';
import type { PassSignals } from './pass.js';
import type { Slots } from './slots.js';

export class Admission {
  readonly #running = new Set<Promise<void>>();
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

  /**
   * Waits for room (this pass's concurrency, then a slot shared with the other partitions'
   * passes, but not past a stop) and looks again after each wait; false when the pass must
   * stop. `items` counts toward the budget (a batch's, taken one by one before, does not).
   */
  async admit(items = 1): Promise<boolean> {
    while (this.#running.size >= this.reconciler.concurrency) await Promise.race(this.#running);
    const refused = () => (items > 0 ? this.closed() : this.#mustStop());
    if (refused()) return false;
    if (this.slots) {
      const took = await this.slots.take(this.#stopped);
      if (!took || refused()) {
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

  /** Runs admitted work (an item, or a batch); its slot and keys are given back when it settles. */
  start(keys: readonly string[], work: () => Promise<void>): void {
    for (const key of keys) this.keys.add(key);
    const running = work().finally(() => {
      this.slots?.give();
      this.#running.delete(running);
      for (const key of keys) this.keys.delete(key);
    });
    this.#running.add(running);
  }

  /** Gathered keys that will not run after all (the pass stopped before their batch was admitted). */
  release(keys: readonly string[]): void {
    for (const key of keys) this.keys.delete(key);
  }

  async drain(): Promise<void> {
    await Promise.all(this.#running);
  }
}

