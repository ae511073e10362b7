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
 * it up runs it again itself (trigger `handback`), without giving it up: a hand-over can
 * delay a partition by seconds, never strand it. Both passes expect the given-up run to be
 * the partition's last, so the lease decides which one runs, never the timing.
 */
import { sql } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from '../store/database.js';
import { engineSchema } from '../store/schema.js';

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
