/**
 * Wake-on-change: one dedicated LISTEN session for every channel the reconcilers name in
 * `wakeOn`. A notification starts an early pass of each reconciler listening on its channel;
 * the payload is ignored (the pass scans state, as always). The first notification wakes at
 * once; those within the debounce window after it are coalesced into one wake at its end, and
 * the scheduler folds wakes that meet a running pass into one pass after it: a burst of
 * 10,000 costs a handful of passes.
 *
 * NOTIFY is not durable: a notification sent while the session is down is gone. So when the
 * session breaks, it is opened again with backoff and every listening reconciler gets one
 * pass, and the cron schedule stays the safety net. A lost signal costs latency, never work.
 *
 * The same session hears other replicas hand a partition over: it only passes those notices on
 * to handover.ts, and is opened when a reconciler is partitioned, even if none listens on a channel.
 *
 * A session can be open and hear nothing: behind a pooler in transaction mode (PgBouncer's
 * usual setting) LISTEN goes to a server connection the pooler hands to others, while NOTIFY
 * still goes through. So each time it opens, the session proves itself with a NOTIFY to its
 * own probe channel, sent through the pool as the application's notifications are. If it does
 * not arrive within a few seconds, the daemon says so once (LISTEN_DATABASE_URL is the cure),
 * reports `reconciler_wake_listening` 0, and tries again every half minute; the schedule
 * carries on either way.
 */
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Reconciler } from '../reconciler.js';
import { type Database, type ListenSession } from '../store/database.js';
import { engineSchema } from '../store/schema.js';
import { coerceError, errorSummary } from '../errors.js';
import { formatDuration } from '../duration.js';
import { backoffDelay } from '../engine/backoff.js';
import { deliverHandOver, handoverChannel, type HandOverTarget } from './handover.js';
import type { WakeCounters } from './counters.js';
import { settlesWithin } from '../timeout.js';

export type { WakeCounters } from './counters.js';

/** How long the session waits before it is opened again: the engine's backoff, with jitter, from 1 s to 30 s. */
const RECONNECT_BACKOFF = { initialDelayMs: 1_000, maxDelayMs: 30_000, maxAttempts: Infinity };
/** How long the session's own probe notification may take before the session counts as deaf. */
const PROBE_TIMEOUT_MS = 5_000;
/** While the session is deaf, how often it is probed again. */
const REPROBE_MS = 30_000;

/** Who the listener delivers to: wakes, and hand-over notices (which handover.ts acts on). */
export interface WakeTarget extends HandOverTarget {
  /** Starts an early pass of each named reconciler (or one right after the pass it is running). */
  wake(names: readonly string[]): void;
}

export interface WakeListenerOptions {
  /** `db` sends the probe notification: through the pool, as the application's notifications go. */
  database: Pick<Database, 'listen' | 'db'>;
  reconcilers: readonly Reconciler[];
  target: WakeTarget;
  log: Logger;
  /** Notifications this long after the first of a burst are folded into one wake. */
  debounceMs: number;
  counters?: WakeCounters;
}

export class WakeListener {
  readonly #options: WakeListenerOptions;
  /** Channel → reconcilers that listen on it. */
  readonly #byChannel = new Map<string, string[]>();
  readonly #pending = new Set<string>();
  #flushTimer: NodeJS.Timeout | undefined;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #session: ListenSession | undefined;
  #failures = 0;
  #stopped = false;
  /** The probe in flight: its token, and what to call when it arrives. */
  #probe: { token: string; arrived(): void } | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  /** Whether the current session heard its own probe; undefined until it answered. */
  #hears: boolean | undefined;
  #warnedDeaf = false;

  constructor(options: WakeListenerOptions) {
    this.#options = options;
    for (const reconciler of options.reconcilers) {
      for (const channel of reconciler.wakeOn) this.#byChannel.set(channel, [...(this.#byChannel.get(channel) ?? []), reconciler.name]);
    }
  }

  get channels(): string[] {
    return [...this.#byChannel.keys()];
  }

  /** Opens the session (if any reconciler listens, or is partitioned). Never throws: a session that cannot be opened is retried with backoff. */
  async start(): Promise<void> {
    if (this.#byChannel.size === 0 && !this.#partitioned) return;
    await this.#connect();
  }

  get #partitioned(): boolean {
    return this.#options.reconcilers.some((r) => r.partitions > 1);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#probeTimer);
    this.#probe?.arrived();
    this.#pending.clear();
    const session = this.#session;
    this.#session = undefined;
    await session?.close().catch(() => undefined);
  }

  async #connect(): Promise<void> {
    const { database, counters } = this.#options;
    const channels = this.channels;
    try {
      let session: ListenSession | undefined;
      const internal = [engineSchema().probeChannel, ...(this.#partitioned ? [handoverChannel()] : [])];
      session = await database.listen([...channels, ...internal], (channel, payload) => this.#notified(channel, payload), (error) => {
        if (this.#session === session) this.#lost(error); // only the current session's break counts
      });
      if (this.#stopped) return void (await session.close().catch(() => undefined));
      this.#session = session;
      const reconnected = this.#failures > 0;
      const failedAttempts = this.#failures;
      this.#failures = 0;
      if (reconnected) counters?.reconnected();
      void this.#prove(session, reconnected ? failedAttempts : undefined);
    } catch (error) {
      this.#retryLater(coerceError(error), 'could not LISTEN');
    }
  }

  /** The channels notifications arrive on now: all of them while the session is proven to hear, else none. */
  get hearing(): readonly string[] {
    return this.#hears === true ? this.channels : [];
  }

  /**
   * Sends a NOTIFY to this session's probe channel through the pool and waits for it. Heard:
   * the session is listening (said once, with what a reconnect may have missed). Not heard:
   * warned about once, and probed again every REPROBE_MS while this session lasts.
   */
  async #prove(session: ListenSession, reconnectedAfter?: number): Promise<void> {
    const { log, counters } = this.#options;
    const heard = await this.#probeOnce();
    if (this.#session !== session || this.#stopped) return;
    const deafBefore = this.#hears === false;
    this.#hears = heard;
    counters?.listening(heard);
    const channels = this.channels;
    const names = [...new Set(channels.flatMap((channel) => this.#byChannel.get(channel)!))];
    if (heard) {
      if (reconnectedAfter !== undefined || deafBefore) {
        // Notifications sent while the session was down (or deaf) are gone: look once, as if notified on every channel.
        const why = deafBefore ? 'notifications arrive now' : channels.length > 0 ? `listening again on ${channels.join(', ')}` : 'the listen session is back';
        log.info({ event: 'wake:restored', channels, ...(reconnectedAfter !== undefined ? { failedAttempts: reconnectedAfter } : {}) }, names.length > 0 ? `${why}; one pass of ${names.join(', ')} for the notifications that may have been missed` : why);
        if (names.length > 0) this.#options.target.wake(names);
      } else if (channels.length > 0) {
        log.info({ event: 'wake:listening', channels }, `listening for notifications on ${channels.join(', ')}: an early pass follows each (the schedule stays the safety net)`);
      }
      return;
    }
    const message =
      `notifications do not arrive: a NOTIFY this daemon sent through its pool (DATABASE_URL) did not reach its LISTEN session within ${formatDuration(PROBE_TIMEOUT_MS)}. ` +
      'A pooler in transaction mode (PgBouncer, most managed poolers) passes NOTIFY on but not LISTEN: set LISTEN_DATABASE_URL to a direct connection to the database. ' +
      `Until then ${channels.length > 0 ? `wake-on-change (${channels.join(', ')}) and ` : ''}partition hand-over notices are off; the schedule runs every reconciler as usual`;
    if (!this.#warnedDeaf) log.warn({ event: 'wake:deaf', channels, probeTimeoutMs: PROBE_TIMEOUT_MS }, message);
    else log.debug({ channels }, message);
    this.#warnedDeaf = true;
    clearTimeout(this.#probeTimer);
    this.#probeTimer = setTimeout(() => {
      if (this.#session === session && !this.#stopped) void this.#prove(session);
    }, REPROBE_MS);
    this.#probeTimer.unref();
  }

  /** One probe: true if the notification came back within PROBE_TIMEOUT_MS. */
  async #probeOnce(): Promise<boolean> {
    const token = randomUUID();
    let arrived!: () => void;
    const heard = settlesWithin(new Promise<void>((resolve) => (arrived = resolve)), PROBE_TIMEOUT_MS);
    this.#probe = { token, arrived };
    try {
      await this.#options.database.db.execute(sql`SELECT pg_notify(${engineSchema().probeChannel}, ${token})`);
      return await heard;
    } catch {
      return false; // the database did not take the NOTIFY: not proven (probed again later)
    } finally {
      arrived(); // settles the wait, so its timer does not outlive the probe
      if (this.#probe?.token === token) this.#probe = undefined;
    }
  }

  #lost(error: Error): void {
    this.#session = undefined;
    this.#hears = undefined;
    clearTimeout(this.#probeTimer);
    if (this.#stopped) return;
    this.#retryLater(error, 'lost the LISTEN connection');
  }

  #retryLater(error: Error, what: string): void {
    this.#options.counters?.listening(false);
    if (this.#stopped) return;
    this.#failures++;
    const delay = backoffDelay(this.#failures, RECONNECT_BACKOFF);
    const message = `${what} (${errorSummary(error, 200)}): notifications are missed until it is back, the schedule still runs; trying again in ${formatDuration(delay)}`;
    // Once at warn, then at debug while it stays down: an outage is not a line per attempt.
    if (this.#failures === 1) this.#options.log.warn({ event: 'wake:down', err: error, channels: this.channels }, message);
    else this.#options.log.debug({ err: error, attempt: this.#failures }, message);
    clearTimeout(this.#reconnectTimer); // one reconnect loop, whatever reported the failure
    this.#reconnectTimer = setTimeout(() => void this.#connect(), delay);
  }

  /**
   * The first notification after a quiet spell wakes at once (no latency added), and opens a
   * window of `debounceMs`: what arrives within it is folded into one wake when it closes,
   * which opens the next window. A storm costs at most one wake per window.
   */
  #notified(channel: string, payload: string): void {
    if (this.#stopped) return;
    if (channel === engineSchema().probeChannel) {
      if (payload === this.#probe?.token) this.#probe.arrived(); // another replica's probe is not ours
      return;
    }
    if (channel === handoverChannel()) return deliverHandOver(payload, this.#options.target, this.#options.log);
    if (!this.#byChannel.has(channel)) return;
    this.#options.counters?.notification(channel);
    this.#pending.add(channel);
    if (this.#flushTimer === undefined) this.#flush();
  }

  #flush(): void {
    const names = new Set<string>();
    for (const channel of this.#pending) for (const name of this.#byChannel.get(channel) ?? []) names.add(name);
    this.#pending.clear();
    if (names.size === 0 || this.#stopped) {
      this.#flushTimer = undefined; // a quiet window: the next notification wakes at once again
      return;
    }
    this.#options.target.wake([...names]);
    this.#flushTimer = setTimeout(() => this.#flush(), this.#options.debounceMs);
  }
}
