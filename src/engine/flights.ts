/**
 * The work a pass has in flight (an item's `reconcile`, or one `reconcileBatch` call), each
 * under the reconciler's `timeout` and the pass's abort, for the price of a list: one timer per
 * pass, not one per item, and one abort listener per pass, not one per item. Every flight of a
 * pass has the same time limit, so the list is in deadline order by construction: the timer
 * waits for the first, and a flight that ends is unlinked in O(1). A flight makes its
 * AbortSignal only when its work asks for one (`ctx.signal`), since most database-only work never does.
 */

/** The error a flight that outlived its time limit fails with. */
export class FlightTimeoutError extends Error {
  override name = 'TimeoutError';
}

export class Flight {
  /** @internal the list's links; undefined when not linked. */
  prev: Flight | undefined;
  next: Flight | undefined;
  linked = false;
  #controller: AbortController | undefined;
  #aborted = false;
  #reason: unknown;
  #reject: ((reason: unknown) => void) | undefined;

  constructor(readonly deadline: number) {}

  /** Aborted when the flight times out or the pass aborts (made on first use). */
  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#aborted) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  get aborted(): boolean {
    return this.#aborted;
  }

  /** Aborts the flight: its signal, and the promise `race` returned, reject with `reason`. The first reason wins. */
  abort(reason: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
    this.#reject?.(reason);
  }

  /** `work`'s value, or the flight's abort reason as soon as it aborts (the work may go on; it is not waited for). */
  race<T>(work: Promise<T>): Promise<T> {
    if (this.#aborted) return Promise.reject(this.#reason);
    return new Promise<T>((resolve, reject) => {
      this.#reject = reject;
      work.then(resolve, reject);
    });
  }
}

export class Flights {
  #head: Flight | undefined;
  #tail: Flight | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  /** @param timedOut the error a flight fails with when it outlives `limitMs`. */
  constructor(
    private readonly limitMs: number,
    private readonly timedOut: () => Error,
  ) {}

  /** A new flight, due to time out `limitMs` from now. */
  start(): Flight {
    const flight = new Flight(performance.now() + this.limitMs);
    flight.prev = this.#tail;
    if (this.#tail) this.#tail.next = flight;
    else this.#head = flight;
    this.#tail = flight;
    flight.linked = true;
    this.#arm();
    return flight;
  }

  /** The flight's work settled: no time limit any more. */
  end(flight: Flight): void {
    if (!flight.linked) return;
    flight.linked = false;
    if (flight.prev) flight.prev.next = flight.next;
    else this.#head = flight.next;
    if (flight.next) flight.next.prev = flight.prev;
    else this.#tail = flight.prev;
    flight.prev = flight.next = undefined;
  }

  /** Aborts every flight (the pass's abort: a shutdown timeout, a lost lease). */
  abortAll(reason: unknown): void {
    for (let flight = this.#head; flight; flight = flight.next) flight.abort(reason);
  }

  /** Clears the timer (the pass ended); flights started after this have no time limit. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** One timer, for the first deadline; a timer set for a flight that already ended fires early and is set again. */
  #arm(): void {
    if (this.#timer !== undefined || !this.#head || this.#closed) return;
    this.#timer = setTimeout(() => this.#expire(), Math.max(0, this.#head.deadline - performance.now()));
  }

  #expire(): void {
    this.#timer = undefined;
    const now = performance.now();
    while (this.#head && this.#head.deadline <= now) {
      const flight = this.#head;
      this.end(flight);
      flight.abort(this.timedOut());
    }
    this.#arm();
  }
}
