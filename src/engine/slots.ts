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

  /** Resolves once a slot is free, and takes it. */
  async take(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  /** Gives a slot back: to the longest waiter, if any. */
  give(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}
