/**
 * Waiting with a bound: the one place that races a promise against a timer or an AbortSignal.
 * - `settlesWithin`: wait up to `ms` for something, and learn whether it came;
 * - `within`: the promise's value, or an error when it takes longer than `ms`;
 * - `abortable`: the promise's value, or the signal's reason as soon as it aborts.
 */

export interface TimerOptions {
  /** Let the process exit while the timer runs (for a bound that must not keep it alive). */
  unref?: boolean;
}

/** Races `promise` against a timer of `ms` that settles as `onTimeout` says; the timer is cleared either way. */
function raceTimer<T>(promise: Promise<T>, ms: number, onTimeout: () => T, options: TimerOptions = {}): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<T>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(onTimeout());
      } catch (error) {
        reject(error);
      }
    }, ms);
    if (options.unref) timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** True if `promise` fulfils within `ms`; false if the time runs out first. A rejection within `ms` is passed on. */
export function settlesWithin(promise: Promise<unknown>, ms: number, options?: TimerOptions): Promise<boolean> {
  return raceTimer(promise.then(() => true), ms, () => false, options);
}

/**
 * `promise`'s value, or a rejection when it takes longer than `ms`: with `what` a string, the
 * error says "<what>: no answer within <ms> ms"; else `what` makes the error.
 */
export function within<T>(promise: Promise<T>, ms: number, what: string | (() => Error), options?: TimerOptions): Promise<T> {
  return raceTimer(
    promise,
    ms,
    () => {
      throw typeof what === 'string' ? new Error(`${what}: no answer within ${ms} ms`) : what();
    },
    options,
  );
}

/** Resolves or rejects with `work`, or rejects with the signal's reason as soon as it aborts (at once if it already has). */
export function abortable<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
