/**
 * SIGTERM and SIGINT, handled one way by the daemon and by `reconciler run`: the first asks for a
 * graceful stop (in-flight items finish, up to SHUTDOWN_TIMEOUT), a second exits at once with
 * the signal's conventional code (130 for SIGINT, 143 for SIGTERM).
 */

/** The exit code of a process ended by `signal`, as a shell reports it (128 + the signal number). */
export const exitCodeOf = (signal: NodeJS.Signals): number => (signal === 'SIGINT' ? 130 : 143);

export interface StopSignals {
  /** Settles with the first signal (or `raise`). */
  readonly first: Promise<NodeJS.Signals>;
  /** How many signals came so far. */
  readonly received: number;
  /** Acts as if `signal` had arrived (the parent process went away, say). */
  raise(signal: NodeJS.Signals): void;
  /** Takes the handlers off the process again: an application that embeds us keeps its own. */
  dispose(): void;
}

export interface StopHandlers {
  /** The first signal: begin a graceful stop. */
  first(signal: NodeJS.Signals): void;
  /** A later one: say so; the process then exits at once. */
  again(signal: NodeJS.Signals): void;
}

export function onStopSignals(handlers: StopHandlers): StopSignals {
  let resolveFirst!: (signal: NodeJS.Signals) => void;
  const first = new Promise<NodeJS.Signals>((resolve) => (resolveFirst = resolve));
  let received = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    if (++received === 1) {
      handlers.first(signal);
      resolveFirst(signal);
      return;
    }
    handlers.again(signal);
    process.exit(exitCodeOf(signal));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return {
    first,
    get received() {
      return received;
    },
    raise: onSignal,
    dispose() {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    },
  };
}

/**
 * Raises SIGTERM on `signals` when the parent process goes away (`said` first tells why): npm
 * does not pass SIGTERM on to its child, so a daemon started by `npm start` would otherwise run
 * on as an orphan. Returns the function that stops watching.
 */
export function stopWithParent(signals: StopSignals, said: (parent: number) => void): () => void {
  const parent = process.ppid;
  const check = setInterval(() => {
    if (process.ppid !== parent && signals.received === 0) {
      said(parent);
      signals.raise('SIGTERM');
    }
  }, 1_000);
  check.unref();
  return () => clearInterval(check);
}
