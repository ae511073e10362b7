/**
 * The clock: node-cron fires each reconciler's ticks (and says when it could not, after an
 * event-loop stall), and at start `dueForCatchUp` says which partitions need a catch-up pass.
 * What a tick runs is the scheduler's to decide.
 */
import nodeCron, { type ScheduledTask } from 'node-cron';
import { laneOf } from '../engine/engine.js';
import type { Reconciler } from '../reconciler.js';
import type { StateRow } from '../store/state.js';
import { previousTick } from './cron.js';

/** A tick rounded down to the second, as every replica computes it. */
export const toTick = (date: Date) => new Date(Math.floor(date.getTime() / 1_000) * 1_000);

export interface CatchUp {
  name: string;
  partition: number;
  tick: Date;
  /** The last finished run when we looked; the catch-up runs only if it is still the last. */
  expectLastRunId: number;
  reason: string;
}

export type StateSummary = Pick<StateRow, 'lastTickAt' | 'lastStartedAt' | 'lastStatus' | 'lastRunId' | 'holderId'>;

/**
 * Which reconciler partitions need a catch-up pass at start, the tick each serves, and why.
 * `states` is keyed by lane (`laneOf(name, partition)`).
 */
export function dueForCatchUp(reconcilers: Iterable<Reconciler>, states: ReadonlyMap<string, StateSummary>, now: Date): CatchUp[] {
  const due: CatchUp[] = [];
  for (const reconciler of reconcilers) {
    const latestTick = previousTick(reconciler.schedule, reconciler.timezone, now);
    const tick = latestTick ?? toTick(now);
    for (let partition = 0; partition < reconciler.partitions; partition++) {
      const state = states.get(laneOf(reconciler.name, partition));
      const expectLastRunId = state?.lastRunId ?? 0;
      const add = (reason: string) => due.push({ name: reconciler.name, partition, tick, expectLastRunId, reason });
      if (!state || (!state.lastStartedAt && !state.lastTickAt)) add('it never ran');
      else if (state.holderId) add('a pass was left unfinished by a process that stopped');
      else if (state.lastStatus === 'aborted' || state.lastStatus === 'error') add(`its last pass ${state.lastStatus === 'aborted' ? 'was aborted' : 'broke off'}`);
      else if (latestTick && Math.max(state.lastTickAt?.getTime() ?? 0, state.lastStartedAt?.getTime() ?? 0) < latestTick.getTime()) {
        add(`its last pass is older than its latest scheduled tick, ${latestTick.toISOString()}`);
      }
    }
  }
  return due;
}

export interface ClockListener {
  /** A scheduled tick of the reconciler. */
  tick(name: string, tick: Date): void;
  /** node-cron noticed it could not fire on time (an event-loop stall); `tick` is the one it missed. */
  missed(name: string, tick: Date): void;
}

/** One node-cron task per reconciler. */
export class Clock {
  readonly #tasks: ScheduledTask[] = [];

  async start(reconcilers: Iterable<Reconciler>, listener: ClockListener): Promise<void> {
    for (const reconciler of reconcilers) {
      const task = nodeCron.createTask(reconciler.schedule, (context) => listener.tick(reconciler.name, toTick(context.date)), {
        timezone: reconciler.timezone,
        name: reconciler.name,
      });
      task.on('execution:missed', (context) => listener.missed(reconciler.name, toTick(context.date)));
      this.#tasks.push(task);
      await task.start();
    }
  }

  async stop(): Promise<void> {
    for (const task of this.#tasks.splice(0)) await task.destroy();
  }
}
