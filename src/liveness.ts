/**
 * Liveness that means progress: /healthz fails when the daemon cannot do its own work for
 * longer than HEALTH_MAX_STALL while its database answers. It looks at two things:
 *
 * - its connection pools: each is asked for a connection every few seconds (a `SELECT 1`),
 *   and one that has handed none out for the whole bound while asked is stuck (connections
 *   leaked, or waiting for answers that will never come);
 * - its scheduler: a tick that nothing answered for the whole bound (no pass started, no
 *   lease statement said why not) means it starts nothing it is due to start.
 *
 * A database outage is not this process's fault, and restarting every replica during one makes
 * it worse: when a fresh connection of its own gets no answer either, the daemon is waiting,
 * not stuck (readiness says so), and the clock starts again once the database is back.
 */
import type { Logger } from 'pino';
import { sql } from 'drizzle-orm';
import { queryRows, type PoolProgress } from './store/database.js';
import { formatDuration } from './duration.js';

export interface LivenessOptions {
  maxStallMs: number;
  log: Logger;
  pools: readonly PoolProgress[];
  /** The reconciler whose tick has waited longest for an answer, and since when (performance.now()). */
  overdue: () => { reconciler: string; since: number } | undefined;
  /** True when a fresh connection gets an answer: the database is up, whatever the pools do. */
  databaseAnswers: () => Promise<boolean>;
}

export interface LivenessStatus {
  ok: boolean;
  /** Why it is not progressing, for /healthz and the log. */
  reason?: string;
}

export class Liveness {
  readonly #options: LivenessOptions;
  #timer: NodeJS.Timeout | undefined;
  #checking = false;
  #failing: string | undefined;
  /** A round found the database not answering, and no round has found it answering since. */
  #outage = false;
  /** The first round that found it answering after an outage (performance.now()): nothing before counts as a stall. */
  #backAt = -Infinity;

  constructor(options: LivenessOptions) {
    this.#options = options;
  }

  /** How often the pools are asked, and the verdict taken again. */
  get intervalMs(): number {
    return Math.min(5_000, Math.max(250, this.#options.maxStallMs / 4));
  }

  start(): void {
    this.#timer = setInterval(() => void this.check(), this.intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  status(): LivenessStatus {
    return this.#failing ? { ok: false, reason: this.#failing } : { ok: true };
  }

  /** One round: ask each pool for a connection, then judge. Exposed for tests. */
  async check(): Promise<void> {
    if (this.#checking) return;
    this.#checking = true;
    try {
      const { pools, log } = this.#options;
      // Not awaited: a pool that is stuck would hold the round up. The ask itself shows in lastHandedOut when it gets through.
      for (const pool of pools) void queryRows(pool.db, sql`SELECT 1`).catch(() => undefined);
      // Suspected after a few rounds without progress; then every round asks the database itself, so that the
      // stall is counted only while it answers: from the last progress, or from its return after an outage.
      let reason: string | undefined;
      if (this.#stalledFor(this.intervalMs * 2)) {
        if (await this.#options.databaseAnswers()) {
          if (this.#outage) this.#backAt = performance.now();
          this.#outage = false;
          reason = this.#stalledFor(this.#options.maxStallMs);
        } else this.#outage = true; // an outage: waiting, not stuck (readiness says so)
      } else this.#outage = false; // progressing: whatever outage there was is over

      if (reason && !this.#failing) log.error({ event: 'liveness:stalled', reason }, `not progressing: ${reason}; /healthz fails until it does (HEALTH_MAX_STALL ${formatDuration(this.#options.maxStallMs)})`);
      if (!reason && this.#failing) log.info({ event: 'liveness:recovered', was: this.#failing }, 'progressing again: /healthz passes');
      this.#failing = reason;
    } finally {
      this.#checking = false;
    }
  }

  /** Why the daemon has made no progress for `ms` (not counting before the database came back), or undefined. */
  #stalledFor(ms: number): string | undefined {
    const { pools, overdue } = this.#options;
    const now = performance.now();
    for (const pool of pools) {
      const idleFor = now - Math.max(pool.lastHandedOut(), this.#backAt);
      if (idleFor < ms) continue;
      const { total, idle, waiting } = pool.counts();
      return `the ${pool.name} pool has handed out no connection for ${formatDuration(idleFor)} (${total} open, ${idle} idle, ${waiting} waiting), while the database answers a fresh connection`;
    }
    const late = overdue();
    const lateFor = late ? now - Math.max(late.since, this.#backAt) : 0;
    if (late && lateFor >= ms) {
      return `${late.reconciler} was due ${formatDuration(now - late.since)} ago and nothing has started or answered since, while the database answers a fresh connection`;
    }
    return undefined;
  }
}
