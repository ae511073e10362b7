/**
 * Prometheus metrics, fed by the engine's events and, for what is cluster-wide (backoff,
 * dead items, last success), read from PostgreSQL at scrape time (cached for a few seconds);
 * plus the job files this daemon could not load.
 * No label ever carries an item key, a message or a secret: labels are reconciler names,
 * statuses, outcomes and reasons only.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { Db, Reconciler } from '../reconciler.js';
import { laneOf } from '../engine/engine.js';
import type { EngineEvents } from '../engine/events.js';
import { coerceError } from '../errors.js';
import { countFailures } from '../store/failures.js';
import { readStates } from '../store/state.js';
import { replicasByReconciler } from '../store/replicas.js';
import type { WakeCounters } from '../scheduler/counters.js';

const CACHE_MS = 5_000;

interface ClusterState {
  failures: Map<string, { backoff: number; dead: number }>;
  /** Per reconciler: its stalest partition's last success. */
  lastSuccess: Map<string, Date | null>;
  /** Per lane (`laneOf(name, partition)`). */
  lastFinished: Map<string, Date | null>;
  /** Per reconciler: the live replicas that run it. */
  replicas: Map<string, number>;
}

export class Metrics {
  readonly registry = new Registry();
  /** Per lane (reconciler partition), what this process's last pass of it found: the oldest item and when the pass ended. */
  readonly #oldest = new Map<string, { reconciler: string; oldest: Date | null; finishedAt: number }>();
  #cache: Promise<ClusterState> | undefined;
  #cachedAt = 0;
  #last: ClusterState = { failures: new Map(), lastSuccess: new Map(), lastFinished: new Map(), replicas: new Map() };

  constructor(
    private readonly db: Db,
    private readonly reconcilers: readonly Pick<Reconciler, 'name' | 'partitions'>[],
    private readonly log: Logger,
    /** Job files that could not be loaded at start. */
    invalidJobFiles: number,
  ) {
    new Gauge({
      name: 'reconciler_job_files_invalid',
      help: 'Job files that could not be loaded when this daemon started (each is logged at error level and named by /readyz); the other reconcilers run. Alert when above 0.',
      registers: [this.registry],
    }).set(invalidJobFiles);
    // A few process metrics of our own: prom-client's defaults include gauges named *_total, which promtool rejects.
    new Gauge({
      name: 'process_resident_memory_bytes',
      help: 'Resident memory size in bytes.',
      registers: [this.registry],
      collect() {
        this.set(process.memoryUsage.rss());
      },
    });
    new Gauge({
      name: 'process_cpu_seconds',
      help: 'User and system CPU time spent, in seconds (a gauge that only grows; use rate()).',
      registers: [this.registry],
      collect() {
        const { user, system } = process.cpuUsage();
        this.set((user + system) / 1e6);
      },
    });
    new Gauge({
      name: 'process_start_time_seconds',
      help: 'Start time of the process since the Unix epoch, in seconds.',
      registers: [this.registry],
    }).set(Math.round(Date.now() / 1000 - process.uptime()));
  }

  /** Subscribes to the engine's events and registers every metric. */
  attach(events: EngineEvents): void {
    this.#countPasses(events);
    this.#clusterGauges();
  }

  #counter(name: string, help: string, labelNames: string[]): Counter {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  /** What this replica's passes did: counted from the engine's events. */
  #countPasses(events: EngineEvents): void {
    const passes = this.#counter('reconciler_passes_total', 'Passes that ran, by reconciler, status (succeeded, failed, error, aborted) and trigger.', ['reconciler', 'status', 'trigger']);
    const items = this.#counter('reconciler_items_total', 'Items handled by passes, by reconciler and outcome (changed, unchanged, skipped, failed, deferred, dead).', ['reconciler', 'outcome']);
    const duration = new Histogram({
      name: 'reconciler_pass_duration_seconds',
      help: 'Duration of passes, by reconciler.',
      labelNames: ['reconciler'],
      buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800],
      registers: [this.registry],
    });
    const skipped = this.#counter('reconciler_ticks_skipped_total', 'Scheduled ticks skipped because a pass was still running here (running) or elsewhere (held). Counted by the replica that saw it first.', ['reconciler', 'reason']);
    const handedOver = this.#counter('reconciler_partitions_handed_over_total', 'Partitions this replica gave up mid-pass because the replicas changed (one joined or left) and another owns them now. The owner runs them with trigger="handover"; if nobody does within 3 s, this replica runs them again with trigger="handback".', ['reconciler']);
    // Every series exists from the start (at 0), so that rate() and alerts see the first increase.
    for (const { name, partitions } of this.reconcilers) {
      if (partitions > 1) handedOver.labels(name).inc(0);
      for (const status of ['succeeded', 'failed', 'error', 'aborted']) passes.labels(name, status, 'schedule').inc(0);
      for (const outcome of ['changed', 'unchanged', 'skipped', 'failed', 'deferred', 'dead']) items.labels(name, outcome).inc(0);
      for (const reason of ['running', 'held']) skipped.labels(name, reason).inc(0);
    }
    events.on('pass:finish', (result) => {
      if (result.dryRun) return;
      passes.labels(result.reconciler, result.status, result.trigger).inc();
      if (result.handedOver !== undefined) handedOver.labels(result.reconciler).inc();
      duration.labels(result.reconciler).observe(result.durationMs / 1000);
      const { found: _found, ...outcomes } = result.counts;
      for (const [outcome, n] of Object.entries(outcomes)) if (n > 0) items.labels(result.reconciler, outcome).inc(n);
      if (result.complete || result.oldestItemAt !== null) this.#oldest.set(laneOf(result.reconciler, result.partition.index), { reconciler: result.reconciler, oldest: result.oldestItemAt, finishedAt: Date.now() });
    });
    events.on('tick:skipped', (tick) => skipped.labels(tick.reconciler, tick.reason).inc());
  }

  /** What the cluster holds (failure memory, replicas, history): read from the database at scrape time. */
  #clusterGauges(): void {
    const metrics = this;
    /** A per-reconciler gauge whose value is read from the cluster state at scrape time. */
    const clusterGauge = (name: string, help: string, value: (state: ClusterState, reconciler: string) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['reconciler'],
        registers: [this.registry],
        async collect() {
          const state = await metrics.#clusterState();
          for (const { name } of metrics.reconcilers) this.labels(name).set(value(state, name));
        },
      });
    clusterGauge('reconciler_items_in_backoff', 'Items whose reconcile failed and that wait for their next attempt, by reconciler (cluster-wide).', (s, r) => s.failures.get(r)?.backoff ?? 0);
    clusterGauge(
      'reconciler_items_dead',
      'Items that ran out of attempts or threw a TerminalError, waiting for a person (reconciler retry / clear), by reconciler (cluster-wide).',
      (s, r) => s.failures.get(r)?.dead ?? 0,
    );
    clusterGauge(
      'reconciler_replicas',
      'Live daemons (heartbeat rows) that run each reconciler, cluster-wide: alert when it drops below the replicas you deploy.',
      (s, r) => s.replicas.get(r) ?? 0,
    );
    clusterGauge(
      'reconciler_last_success_timestamp_seconds',
      'When the last pass of each reconciler that succeeded ended, anywhere in the cluster (Unix time; 0 = never).',
      (s, r) => (s.lastSuccess.get(r)?.getTime() ?? 0) / 1000,
    );
    new Gauge({
      name: 'reconciler_staleness_seconds',
      help: 'Age of the oldest item the latest scan found still needing work, for reconcilers that define since(item); 0 when it found none. Reported by the replica that ran the latest pass only.',
      labelNames: ['reconciler'],
      registers: [this.registry],
      async collect() {
        const { lastFinished } = await metrics.#clusterState();
        this.reset();
        const staleness = new Map<string, number>();
        for (const [lane, mine] of metrics.#oldest) {
          const latest = lastFinished.get(lane)?.getTime() ?? 0;
          if (latest > mine.finishedAt + 2_000) continue; // another replica ran a later pass: its number, not ours
          const seconds = mine.oldest === null ? 0 : Math.max(0, (Date.now() - mine.oldest.getTime()) / 1000);
          staleness.set(mine.reconciler, Math.max(seconds, staleness.get(mine.reconciler) ?? 0));
        }
        for (const [name, seconds] of staleness) this.labels(name).set(seconds);
      },
    });
  }

  /** Counters of the wake-on-change session, for the channels the reconcilers listen on (series exist from the start). */
  wakeCounters(channels: readonly string[]): WakeCounters {
    const notifications = this.#counter('reconciler_wake_notifications_total', 'Notifications received on the channels reconcilers wake on (wakeOn), by channel; bursts are coalesced into few passes (passes with trigger="wake").', ['channel']);
    const reconnects = new Counter({
      name: 'reconciler_wake_reconnects_total',
      help: 'Times the LISTEN session was opened again after it broke; each is followed by one pass of every listening reconciler (notifications may have been lost).',
      registers: [this.registry],
    });
    const listening = new Gauge({
      name: 'reconciler_wake_listening',
      help: '1 while the LISTEN session for wakeOn is up, 0 while it is down (the schedule still runs; wakes are missed).',
      registers: [this.registry],
    });
    for (const channel of channels) notifications.labels(channel).inc(0);
    reconnects.inc(0);
    return {
      notification: (channel) => notifications.labels(channel).inc(),
      reconnected: () => reconnects.inc(),
      listening: (up) => listening.set(up ? 1 : 0),
    };
  }

  /** Three queries per scrape at most, shared by every collector, cached for a few seconds. */
  #clusterState(): Promise<ClusterState> {
    if (this.#cache && Date.now() - this.#cachedAt < CACHE_MS) return this.#cache;
    this.#cachedAt = Date.now();
    this.#cache = Promise.all([countFailures(this.db), readStates(this.db), replicasByReconciler(this.db)]).then(
      ([failures, states, replicas]) => {
        // A partitioned reconciler is as fresh as its stalest partition (rows of partitions it no longer has are left out).
        const lastSuccess = new Map(
          this.reconcilers.map((r) => {
            const times = states.filter((s) => s.reconciler === r.name && s.partition < r.partitions).map((s) => s.lastSucceededAt);
            return [r.name, times.length < r.partitions || times.includes(null) ? null : new Date(Math.min(...times.map((t) => t!.getTime())))];
          }),
        );
        this.#last = { failures, lastSuccess, lastFinished: new Map(states.map((s) => [laneOf(s.reconciler, s.partition), s.lastFinishedAt])), replicas };
        return this.#last;
      },
      (error: unknown) => {
        this.log.warn({ err: coerceError(error) }, 'metrics: could not read failure counts from the database; serving the last known values');
        this.#cachedAt = 0;
        return this.#last;
      },
    );
    return this.#cache;
  }
}
