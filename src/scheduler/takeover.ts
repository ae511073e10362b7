/**
 * Takeover: a lane another process holds. If that process dies, nobody would pick the work up
 * before the next tick, which may be hours away: look again once its lease could have lapsed,
 * and run only if it never finished. For a partition that is this replica's own, look more often,
 * and run the rest here when the holder lets go with work left (a hand-over that arrives even
 * where its notice cannot). And after giving a partition up, run it again if nobody took it.
 */
import { describeHolder, partitionFields, passLabel, type PassResult, type Trigger } from '../engine/result.js';
import { formatDuration } from '../duration.js';
import { coerceError, errorSummary } from '../errors.js';
import { readStates } from '../store/state.js';
import { holderOfRow, type LeaseHolder } from '../store/lease.js';
import { readRun } from '../store/runs.js';
import { LanePart, type Lane } from './lane.js';
import { budgeted } from './retry.js';

export interface TakeoverOptions {
  /** How often a watch of an own partition looks at its holder again. */
  lookMs: number;
  /** How long after giving a partition up this replica runs it again itself if nobody took it. */
  graceMs: number;
}

/** How many graces a giver waits for a live owner to take a given-up partition before it runs it again itself. */
export const HAND_BACK_GRACES = 5;

export class Takeovers extends LanePart<TakeoverOptions> {

  /**
   * Another process holds the lane (this tick, or an older one): look again when its lease could
   * have lapsed, and run only if it never finished (its last run is still the last). `own`: the
   * partition is this replica's by the membership, and another holds it (one that is giving it
   * up, or swept it up while this one was away): look every `lookMs` (see #lookAgain).
   */
  watch(lane: Lane, holder: LeaseHolder, trigger: Trigger, { own }: { own: boolean }): void {
    if (lane.watching) return;
    const { engine, log } = this.context;
    const { name, partition } = lane;
    own &&= !budgeted(engine.get(name)); // a budget's period is the tick's: no second pass in it
    const leaseWait = Math.max(100, holder.expiresAt.getTime() - Date.now() + 250);
    const wait = own ? Math.min(leaseWait, this.options.lookMs) : leaseWait;
    const at = { index: partition, count: engine.get(name).partitions };
    log.debug(
      { event: 'lease:held', reconciler: name, ...partitionFields(at), holderPid: holder.pid, lookInMs: Math.round(wait) },
      `${passLabel(name, at)}: held by ${describeHolder(holder)}; looking again in ${formatDuration(wait)}${own ? '' : ', when its lease could have lapsed'}`,
    );
    lane.watch(wait, () => {
      if (own) void this.#lookAgain(lane, holder, trigger);
      else lane.request({ kind: 'now', run: { trigger, expectLastRunId: holder.lastRunId }, own: false });
    });
  }

  /**
   * A pass of an own partition found it served by a pass that has ended since this replica
   * looked: one that gave the partition up, before this replica knew it was its own, ends so.
   * Look at once (when the lane is free) whether it left work, and run the rest here: with no
   * notice (a pooler), nothing else would before the giver's hand-back.
   */
  lookAtServed(lane: Lane, trigger: Trigger): void {
    if (lane.watching || budgeted(this.context.engine.get(lane.name))) return;
    lane.watch(0, () => void this.#lookAgain(lane, undefined, trigger));
  }

  /**
   * An own partition another replica held (`holder`, when one was seen): still held, watch on;
   * let go unfinished or with work left, run it here at once.
   */
  async #lookAgain(lane: Lane, holder: LeaseHolder | undefined, trigger: Trigger): Promise<void> {
    const { engine, log } = this.context;
    const { name, partition } = lane;
    try {
      const row = (await readStates(engine.db, name)).find((r) => r.partition === partition);
      if (!this.context.started() || lane.busy) return;
      if (row?.leaseLive) return this.watch(lane, holderOfRow(row), trigger, { own: true });
      const last = row?.lastRunId ?? 0;
      // Its pass never finished (the holder died): take over, as any watcher would.
      if (holder && last === holder.lastRunId) return void lane.request({ kind: 'now', run: { trigger, expectLastRunId: last }, own: true });
      // It finished, but stopped early (it gave the partition up, or stopped): the rest is this replica's.
      if ((await readRun(engine.db, last))?.complete === false && this.context.started()) {
        lane.request({ kind: 'if-idle', run: { trigger: 'handover', expectLastRunId: last }, own: true });
      }
    } catch (error) {
      log.debug({ reconciler: name, partition, err: coerceError(error) }, `${name}: could not look at partition ${partition} again (${errorSummary(coerceError(error), 200)}); the next tick does`);
    }
  }

  /**
   * This replica gave the lane up in run `runId`: if nobody has taken it when the grace is over,
   * run it here after all, without giving it up again. While `ownerAlive` says a live replica
   * owns the partition, wait for it a grace more, up to HAND_BACK_GRACES graces: an owner that
   * finds the partition by looking (every `lookMs`, where its notice cannot arrive) may be late
   * on a loaded machine, and a hand-back then keeps the partition here for a whole pass. One that
   * does not have the reconciler, or went away, is not waited for. Expecting the given-up run to
   * be the last: if the owner took the partition, this starts nothing (or watches the owner's
   * pass, to take over if it dies).
   */
  handBackLater(lane: Lane, runId: number, ownerYetToTakeIt: () => Promise<boolean>): void {
    const { log, timers } = this.context;
    const graceMs = this.options.graceMs;
    const since = performance.now();
    const handedBack = (ran: PassResult) =>
      log.info(
        { reconciler: lane.name, partition: lane.partition, passId: ran.runId },
        `${passLabel(lane.name, ran.partition)}: nobody took it over within ${formatDuration(performance.now() - since)} of the hand-over, so this replica ran it again (pass ${ran.runId})`,
      );
    const handBack = () => lane.request({ kind: 'now', run: { trigger: 'handback', expectLastRunId: runId }, own: false, onRan: handedBack });
    const look = (graces: number) =>
      timers.after(graceMs, () => {
        if (graces >= HAND_BACK_GRACES) return handBack();
        void ownerYetToTakeIt().then(
          (waiting) => this.context.started() && (waiting ? look(graces + 1) : handBack()),
          () => this.context.started() && handBack(),
        );
      });
    look(1);
  }
}
