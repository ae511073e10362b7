/**
 * Hand-over: how a replica gives a partition up to the replica that owns it now.
 *
 * A replica claims its partitions by rank among the daemons it can count (see
 * `ownPartitions`). The ranks move whenever the replicas change: one joins, one leaves, a
 * listen session reconnects under a new backend pid. One that started alone, or before the
 * others, claims them all; with a backlog, its passes would keep every partition for as long
 * as the backlog lasts while the newcomers idle. So a pass of a partition claimed as its own
 * asks, before each item, whether the partition is still its own. When it is not, the pass stops taking items, lets those in
 * flight finish, releases its lease and says so on this channel; the owner starts a pass of
 * that partition at once. If nobody has taken it a few seconds later, the replica that gave
 * it up runs it again itself (trigger `handback`), without giving it up; it waits longer while
 * the owner's heartbeat says it is alive, since an owner behind a pooler finds the partition by
 * looking, not by the notice. A hand-over can delay a partition by seconds, never strand it. Both passes expect the given-up run to be
 * the partition's last, so the lease decides which one runs, never the timing.
 *
 * The path, all through this module: a pass gives up (`HandOvers.gaveUp`, told by the
 * scheduler), the notice goes out (`announceHandOver`), the wake listener's session hears it and
 * passes the payload on (`deliverHandOver`), and the owner's scheduler starts the pass
 * (`HandOvers.receive`, through the lane).
 */
import { sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../reconciler.js';
import { queryRows } from '../store/database.js';
import { readStates } from '../store/state.js';
import { engineSchema } from '../store/schema.js';
import { passLabel, type PassResult } from '../engine/result.js';
import { coerceError, errorSummary } from '../errors.js';
import { LanePart } from './lane.js';
import type { MembershipCache } from './membership.js';
import type { Takeovers } from './takeover.js';

/** The notification channel every daemon with a partitioned reconciler listens on: `reconciler_handover` (`<schema>_handover`). */
export const handoverChannel = (): string => engineSchema().handoverChannel;

export interface HandOver {
  reconciler: string;
  partition: number;
  /** The partition count of the replica that gave it up: a replica with another count ignores it. */
  partitions: number;
  /** The run that gave it up: the owner's pass runs only if it is still the partition's last. */
  runId: number;
}

export async function announceHandOver(db: Db, handOver: HandOver): Promise<void> {
  await queryRows(db, sql`SELECT pg_notify(${handoverChannel()}, ${JSON.stringify(handOver)})`);
}

/** The hand-over a payload announces; undefined for one that is not (sent by hand, or by another version). */
export function parseHandOver(payload: string): HandOver | undefined {
  try {
    const value = JSON.parse(payload) as Partial<HandOver>;
    const whole = (n: unknown): n is number => Number.isInteger(n) && (n as number) >= 0;
    if (typeof value.reconciler === 'string' && whole(value.partition) && whole(value.partitions) && whole(value.runId)) {
      return { reconciler: value.reconciler, partition: value.partition, partitions: value.partitions, runId: value.runId };
    }
  } catch {
    // not ours
  }
  return undefined;
}

/** Who acts on a hand-over notice: the scheduler. */
export interface HandOverTarget {
  /** Another replica gave a partition up: run it if it is this one's. */
  handOver(handOver: HandOver): void | Promise<void>;
}

/** A notice on the hand-over channel, as the wake listener's session heard it: passed to `target`, not debounced (one notice per partition given up, each naming its own run). */
export function deliverHandOver(payload: string, target: HandOverTarget, log: Logger): void {
  const handOver = parseHandOver(payload);
  if (!handOver) return;
  void Promise.resolve(target.handOver(handOver)).catch((error: unknown) => {
    log.warn({ err: coerceError(error), ...handOver }, `could not act on the hand-over of ${handOver.reconciler} partition ${handOver.partition} (${errorSummary(coerceError(error), 200)}); the giver runs it again after its grace`);
  });
}

export interface HandOverOptions {
  membership: MembershipCache;
  takeovers: Takeovers;
  /** Keeps a promise for drain() to wait on: the pool must not close under it. */
  track(work: Promise<void>): void;
}

/** Both ends of a hand-over, for one scheduler. */
export class HandOvers extends LanePart<HandOverOptions> {

  /**
   * This replica gave a partition up: tell the owner, and if nobody has taken it when the grace
   * is over, run it here after all (see Takeovers.handBackLater).
   */
  gaveUp(result: PassResult): void {
    const { engine, log } = this.context;
    const name = result.reconciler;
    const { index: partition, count: partitions } = result.partition;
    if (result.runId === null) return;
    const runId = result.runId;
    const lane = this.context.lane(name, partition);
    // A retry of the partition due later is the owner's now: run here, it would take the partition back for a whole pass.
    lane.cancelRetry();
    const announced = announceHandOver(engine.db, { reconciler: name, partition, partitions, runId }).catch((error: unknown) => {
      const then = this.context.started() ? 'running it here again shortly' : 'its owner finds it at its next tick';
      log.warn({ reconciler: name, partition, err: coerceError(error) }, `${passLabel(name, result.partition)}: could not announce the hand-over (${errorSummary(coerceError(error), 200)}); ${then}`);
    });
    this.options.track(announced);
    if (!this.context.started()) return; // stopping: the owner is told, and this replica runs nothing more
    this.options.takeovers.handBackLater(lane, runId, () => this.#ownerYetToTakeIt(name, partition, runId));
  }

  /** True while the partition given up in `runId` is untouched and a live replica owns it: the giver waits for it. */
  async #ownerYetToTakeIt(name: string, partition: number, runId: number): Promise<boolean> {
    const { engine } = this.context;
    const row = (await readStates(engine.db, name)).find((r) => r.partition === partition);
    if ((row?.lastRunId ?? 0) !== runId || row?.leaseLive) return false; // taken, or held: the hand-back request sees to it
    const reconciler = engine.reconcilers.get(name);
    return reconciler !== undefined && !(await this.options.membership.own(reconciler)).includes(partition);
  }

  /**
   * Another replica gave up a partition: run it now if it is this replica's by the membership,
   * or right after the pass of it this process is running. The pass expects the given-up run to
   * be the partition's last, so a late or repeated notice, or one the giver's own fallback beat,
   * starts nothing.
   */
  async receive({ reconciler: name, partition, partitions, runId }: HandOver): Promise<void> {
    if (!this.context.started()) return;
    const reconciler = this.context.engine.reconcilers.get(name);
    if (!reconciler || reconciler.partitions !== partitions || partition >= partitions) return;
    const own = await this.options.membership.own(reconciler);
    if (!this.context.started() || !own.includes(partition)) return;
    this.context.lane(name, partition).request({ kind: 'handover', runId });
  }
}
