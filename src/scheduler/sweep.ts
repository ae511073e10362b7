/**
 * Sweep: a second after a replica claims its own partitions, it looks at the others. It watches
 * those another replica holds, to take them over if it dies. When the sweep comes from a tick or
 * catch-up, it runs those nobody is running, a few seconds later still (`graceMs`) and only if
 * nobody served the tick meanwhile: their owner is alive by its heartbeat (else they would be
 * this replica's), and may only be late to start on a loaded machine. Its tick comes on another
 * schedule (a rolling deploy), or it died a moment ago: then this replica runs them.
 */
import type { RunRequest } from '../engine/engine.js';
import { coerceError, errorSummary } from '../errors.js';
import { formatDuration } from '../duration.js';
import { readStates, type StateRow } from '../store/state.js';
import { holderOfRow } from '../store/lease.js';
import { LanePart } from './lane.js';
import type { Takeovers } from './takeover.js';

/** What a sweep runs in a free partition (nothing: it only watches). */
export type SweepRequest = (partition: number) => RunRequest | undefined;

interface PendingSweep {
  request: SweepRequest;
  /** A tick or catch-up sweep runs free partitions; a wake's only watches held ones. */
  runs: boolean;
}

export interface SweepOptions {
  delayMs: number;
  /** How long after the sweep a free partition's owner has to start its pass before this replica runs it. */
  graceMs: number;
  takeovers: Takeovers;
  /** The sweep looked: the reconciler's tick is answered. */
  answered(name: string): void;
}

export class Sweeps extends LanePart<SweepOptions> {
  /** Partitioned reconcilers with a sweep scheduled, and what it runs. */
  readonly #pending = new Map<string, PendingSweep>();

  /** One sweep per reconciler at a time; a later tick's (which runs free partitions) replaces what is pending, a wake's (which only watches) joins it. */
  later(name: string, request: SweepRequest, { runsFree }: { runsFree: boolean }): void {
    if (this.#pending.has(name)) {
      if (runsFree) this.#pending.set(name, { request, runs: true });
      return;
    }
    this.#pending.set(name, { request, runs: runsFree });
    this.context.timers.after(this.options.delayMs, () => {
      const sweep = this.#pending.get(name);
      this.#pending.delete(name);
      if (sweep && this.context.started()) void this.#sweep(name, sweep);
    });
  }

  clear(): void {
    this.#pending.clear();
  }

  /** Looks at the partitions not running here: watches those another replica holds; runs free ones, after a grace, when asked to. */
  async #sweep(name: string, sweep: PendingSweep): Promise<void> {
    const { engine, log } = this.context;
    const reconciler = engine.get(name);
    let rows: StateRow[];
    try {
      rows = (await readStates(engine.db, name)).filter((row) => row.partition < reconciler.partitions);
    } catch (error) {
      log.warn({ reconciler: name, err: coerceError(error) }, `${name}: could not look at its partitions (${errorSummary(coerceError(error), 200)}); the next tick looks again`);
      return;
    }
    this.options.answered(name);
    const byPartition = new Map(rows.map((row) => [row.partition, row]));
    for (let partition = 0; partition < reconciler.partitions; partition++) {
      const lane = this.context.lane(name, partition);
      if (lane.busy || !this.context.started()) continue;
      const row = byPartition.get(partition);
      if (row?.leaseLive) this.options.takeovers.watch(lane, holderOfRow(row), sweep.runs ? 'schedule' : 'wake', { own: false });
      else if (sweep.runs && !lane.watching) {
        const request = sweep.request(partition);
        if (!request) continue;
        log.debug(
          { event: 'sweep:free', reconciler: name, partition, graceMs: this.options.graceMs },
          `${name} partition ${partition}: nobody runs it; its owner has ${formatDuration(this.options.graceMs)} to start it, then this replica does`,
        );
        // Its request names the tick (or the run it expects last): if the owner served it meanwhile, it starts nothing.
        lane.watch(this.options.graceMs, () => lane.request({ kind: 'if-idle', run: request, own: false }));
      }
    }
  }
}
