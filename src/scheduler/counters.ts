/**
 * What the wake listener reports for metrics: the interface metrics implement, so that they
 * depend on it rather than on the listener.
 */
export interface WakeCounters {
  notification(channel: string): void;
  /** The session was opened again after it broke, or after it could not be opened at start. */
  reconnected(): void;
  listening(up: boolean): void;
}
