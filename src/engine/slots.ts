/**
 * A counting semaphore: the items one reconciler may have in flight in this process. The
 * passes of its partitions that run here share it, so `concurrency` is per process, however
 * many partitions this process holds (the figure a provider's rate limit is sized against).
 */
export class Slots {
  #free: number;
  readonly #waiting: (() => void)[] = [];

  constructor(size: number) {
    this.#free = size;
  }

  /**
   * Resolves true once a slot is free, having taken it; false, taking none, as soon as
   * `signal` aborts first (a pass told to stop must not wait for another partition's items).
   */
  async take(signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return false;
    if (this.#free > 0) {
      this.#free--;
      return true;
    }
    return new Promise<boolean>((resolve) => {
      const granted = () => {
        signal.removeEventListener('abort', gaveUp);
        resolve(true);
      };
      const gaveUp = () => {
        this.#waiting.splice(this.#waiting.indexOf(granted), 1);
        resolve(false);
      };
      this.#waiting.push(granted);
      signal.addEventListener('abort', gaveUp, { once: true });
    });
  }

  /** Takes a slot if one is free and nobody waits for one (no promise); false otherwise. */
  tryTake(): boolean {
    if (this.#free === 0 || this.#waiting.length > 0) return false;
    this.#free--;
    return true;
  }

  /** Gives a slot back: to the longest waiter, if any. */
  give(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}
