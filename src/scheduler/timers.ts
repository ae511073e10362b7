/**
 * The scheduler's one set of timers: every delayed step it arms (a sweep, a takeover look, a
 * retry pass, a hand-back) goes through here, so that stopping clears them all at once.
 */
export class TimerSet {
  readonly #armed = new Set<NodeJS.Timeout>();

  /** Calls `fire` after `ms`, unless cancelled or cleared first. */
  after(ms: number, fire: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.#armed.delete(timer);
      fire();
    }, ms);
    this.#armed.add(timer);
    return timer;
  }

  cancel(timer: NodeJS.Timeout): void {
    clearTimeout(timer);
    this.#armed.delete(timer);
  }

  /** Cancels every timer armed here. */
  clear(): void {
    for (const timer of this.#armed) clearTimeout(timer);
    this.#armed.clear();
  }
}
