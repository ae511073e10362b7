/**
 * This daemon's presence among the replicas: a row in `replicas`, written at start and kept
 * fresh by a heartbeat, deleted at shutdown (see store/replicas.ts). It is how replicas split
 * the partitions of a partitioned reconciler and hand them over when one joins or leaves,
 * through a direct connection or any pooler alike.
 *
 * A row lives twice the lease length (LEASE_TTL) and is refreshed four times in that span: a
 * replica killed with -9 stops counting within that bound, while its partitions are taken
 * over sooner, when their leases lapse.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Db } from '../reconciler.js';
import { ALONE, type Membership } from '../store/database.js';
import { heartbeat, leave, membershipOf, type Replica } from '../store/replicas.js';
import { coerceError, errorSummary } from '../errors.js';
import { within } from '../timeout.js';

/** Shutdown does not wait longer than this to delete the row: it expires anyway. */
const LEAVE_TIMEOUT_MS = 1_000;

export interface PresenceOptions {
  db: Db;
  reconcilers: readonly string[];
  /** The lease length: a row lives twice as long. */
  leaseMs: number;
  log: Logger;
  /** The notification channels the wake listener hears now, written with each heartbeat (for the console). */
  listening?: () => readonly string[];
}

export class Presence {
  readonly #options: PresenceOptions;
  readonly replica: Replica;
  readonly #ttlMs: number;
  #timer: NodeJS.Timeout | undefined;
  #failing = false;

  constructor(options: PresenceOptions) {
    this.#options = options;
    this.replica = { id: randomUUID(), host: hostname(), pid: process.pid, reconcilers: options.reconcilers };
    this.#ttlMs = 2 * options.leaseMs;
  }

  /** Writes the row (a failure is logged and retried at the next beat), then keeps it fresh. */
  async start(): Promise<void> {
    await this.#beat();
    this.#timer = setInterval(() => void this.#beat(), Math.max(250, this.#ttlMs / 4));
    this.#timer.unref();
  }

  /** Where this daemon stands among the live replicas that run `reconciler`; alone when the database does not answer. */
  async membership(reconciler: string): Promise<Membership> {
    try {
      return await membershipOf(this.#options.db, this.replica.id, reconciler);
    } catch {
      return ALONE;
    }
  }

  /** Stops the heartbeat and deletes the row, so that the others rebalance at once. Never throws. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await within(leave(this.#options.db, this.replica.id), LEAVE_TIMEOUT_MS, 'leaving').catch(() => undefined);
  }

  async #beat(): Promise<void> {
    const { db, log } = this.#options;
    try {
      await heartbeat(db, this.replica, this.#ttlMs, this.#options.listening?.() ?? []);
      if (this.#failing) log.info('the replica heartbeat is written again: this daemon counts among the replicas again');
      this.#failing = false;
    } catch (error) {
      if (!this.#failing) {
        log.warn({ err: coerceError(error) }, `could not write the replica heartbeat (${errorSummary(coerceError(error), 200)}): other replicas stop counting this one after ${this.#ttlMs / 1000}s, and take its share of the partitions; trying again`);
      }
      this.#failing = true;
    }
  }
}
