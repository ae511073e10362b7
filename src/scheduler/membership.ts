/**
 * Membership: which partitions are this replica's own. A replica claims every count-th partition
 * from its rank among the replicas that run the reconciler (presence.ts counts them). The ranks
 * move when replicas join or leave, so a pass of an own partition asks, before each item, whether
 * it is still its own, and gives it up when it is not (see handover.ts).
 */
import { ALONE, type Membership } from '../store/database.js';
import type { Reconciler } from '../reconciler.js';
import { budgeted } from './retry.js';
import { allPartitions } from '../store/partition.js';

/** Where this daemon stands among the replicas that run a reconciler. */
export type MembershipSource = (reconciler: string) => Promise<Membership>;

/**
 * The partitions a replica claims at once: every `count`-th from its `rank`, so that replicas
 * that wake together split the partitions evenly without racing (rank 0 of 2 takes 0 and 2 of
 * 4, rank 1 takes 1 and 3). A lone replica takes them all.
 */
export function ownPartitions(partitions: number, membership: Membership): number[] {
  return allPartitions(partitions).filter((p) => p % membership.count === membership.rank);
}

/** The membership last seen, when (performance.now()), and whether a look is under way. */
interface Seen {
  value: Membership;
  at: number;
  asking: boolean;
}

/** The membership of each reconciler as last seen: asked afresh at each claim, and in the background by passes that may give their partition up. */
export class MembershipCache {
  readonly #source: MembershipSource | undefined;
  readonly #lookMs: number;
  readonly #seen = new Map<string, Seen>();

  /** `source`: alone when undefined. `lookMs`: how often a pass that may give its partition up looks again. */
  constructor(source: MembershipSource | undefined, lookMs: number) {
    this.#source = source;
    this.#lookMs = lookMs;
  }

  /** This replica's own partitions of `reconciler`, asked afresh (one cheap query): a replica that just started or left counts at once. */
  async own(reconciler: Reconciler): Promise<number[]> {
    if (reconciler.partitions === 1) return [0];
    const membership = this.#source ? await this.#source(reconciler.name).catch(() => ALONE) : ALONE;
    this.#seen.set(reconciler.name, { asking: false, ...this.#seen.get(reconciler.name), value: membership, at: performance.now() });
    return ownPartitions(reconciler.partitions, membership);
  }

  /**
   * For a pass of a partition this replica claimed as its own: a reason to give it up when the
   * membership (looked at every `lookMs`, in the background) says another replica owns it.
   */
  handOverCheck(reconciler: Reconciler, partition: number): (() => string | undefined) | undefined {
    const source = this.#source;
    if (reconciler.partitions === 1 || !source) return undefined;
    // A budget caps the work per period; a hand-over starts another pass in it, which would go past the cap.
    if (budgeted(reconciler)) return undefined;
    const name = reconciler.name;
    return () => {
      const seen = this.#seen.get(name) ?? { value: ALONE, at: -Infinity, asking: false };
      if (!seen.asking && performance.now() - seen.at >= this.#lookMs) {
        this.#seen.set(name, { ...seen, asking: true });
        void source(name)
          .catch(() => ALONE)
          .then((value) => this.#seen.set(name, { value, at: performance.now(), asking: false }));
      }
      const { rank, count } = seen.value;
      if (count <= 1 || ownPartitions(reconciler.partitions, seen.value).includes(partition)) return undefined;
      return `${count} replicas share the partitions now, and partition ${partition} is the one ranked ${partition % count}'s (this one is ranked ${rank})`;
    };
  }
}
