/**
 * The engine's vocabulary for a pass and its end: what started it, how it ended, what it
 * counted, and the lines that describe it to people (the summary, the label, the holder).
 * The store records these (runs, state); it takes the types from here.
 */
import type { Partition } from '../reconciler.js';
import { formatDuration } from '../duration.js';

/**
 * What started a pass. `retry`: an early pass the daemon starts when failed items fall due
 * before the next tick; `wake`: one it starts on a notification (`wakeOn`); `handover`: a pass
 * of a partition another replica gave up to this one, which owns it now; `handback`: the pass
 * of the replica that gave it up, when nobody took it within the grace (see handover.ts).
 */
export type Trigger = 'schedule' | 'manual' | 'startup' | 'retry' | 'wake' | 'handover' | 'handback';

/**
 * How a pass ended:
 * - `succeeded`: every item it took was reconciled (or deferred by backoff);
 * - `failed`: it finished, but some items threw (they are in failure memory);
 * - `error`: the pass itself broke (its scan threw, the database went away);
 * - `aborted`: stopped early by shutdown or a lost lease;
 * - `abandoned`: its process died; set by the process that took the lease over.
 */
export type PassStatus = 'succeeded' | 'failed' | 'error' | 'aborted' | 'abandoned';

/** Per-pass item counts. `found` = every item the pass considered = the sum of the others. */
export interface PassCounts {
  found: number;
  changed: number;
  unchanged: number;
  skipped: number;
  failed: number;
  /** Items in backoff: their next attempt is later. */
  deferred: number;
  /**
   * Dead items: those the scan still finds dead, waiting for a person (`retry`, `clear` or a
   * manual action), and those that died in this pass (their last attempt failed; see PassResult.died).
   */
  dead: number;
}

export function emptyCounts(): PassCounts {
  return { found: 0, changed: 0, unchanged: 0, skipped: 0, failed: 0, deferred: 0, dead: 0 };
}

export interface PassResult {
  reconciler: string;
  partition: Partition;
  /** The pass's id (its row in `runs`; logged as `passId`); null for a dry run. Named `runId` in `run --json` output. */
  runId: number | null;
  trigger: Trigger;
  dryRun: boolean;
  status: PassStatus;
  counts: PassCounts;
  /** False when the pass stopped before its scan ended (budget, `--key`, abort); the rest waits for the next pass. */
  complete: boolean;
  durationMs: number;
  error: string | null;
  /** Of `counts.dead`, the items that died in this pass (a failure that used up their attempts, or a TerminalError); absent when none. */
  died?: number;
  /** With `onlyKey`: whether the scan found that item. */
  keyFound?: boolean;
  /** The oldest `since(item)` among the items found, when the reconciler defines `since`; null when it found none. */
  oldestItemAt: Date | null;
  /** When the first item this pass left in backoff falls due again (approximate, local clock); null when none. */
  nextRetryAt: Date | null;
  /** Why the pass stopped taking items and gave its partition up to another replica (see PassSignals.handOver); absent when it did not. */
  handedOver?: string;
}

/** Who holds a lease, as far as people are told (the store's LeaseHolder has these and more). */
export interface HolderDescription {
  host: string;
  pid: number;
  since: Date;
  runId: number | null;
  partition?: Partition;
}

/** Log fields naming the partition of a partitioned reconciler's pass (none for an unpartitioned one). */
export function partitionFields(partition: Partition): { partition?: number } {
  return partition.count > 1 ? { partition: partition.index } : {};
}

/** "settle-returns", or "settle-returns partition 2" for one partition of a partitioned reconciler. */
export function passLabel(name: string, partition: Partition): string {
  return partition.count > 1 ? `${name} partition ${partition.index}` : name;
}

/** "web-1 pid 4242 since 12:00:01Z (run 17)", or "(run 17, partition 1 of 4)" for a partition's pass. */
export function describeHolder(holder: HolderDescription): string {
  const what = [...(holder.runId === null ? [] : [`run ${holder.runId}`]), ...(holder.partition ? [`partition ${holder.partition.index} of ${holder.partition.count}`] : [])];
  return `${holder.host} pid ${holder.pid} since ${holder.since.toISOString()}${what.length > 0 ? ` (${what.join(', ')})` : ''}`;
}

/** Why a pass that ran ended before its scan did, as the summary says it; empty when it did not (or broke). */
function endNote(result: PassResult): string {
  if (result.keyFound === false) return ' (by --key: the scan does not find that key)';
  if (result.keyFound !== undefined) return ' (one item, by --key)';
  if (result.handedOver !== undefined) return ` (handed over: ${result.handedOver})`;
  return result.complete || result.status === 'error' ? '' : ' (stopped early; the rest waits for the next pass)';
}

/** The pass's one-line summary: `settle-returns: pass 17 succeeded in 1.2s: 40 found, …`. */
export function summarize(result: PassResult): string {
  const c = result.counts;
  const what = result.dryRun ? 'dry run' : `pass ${result.runId}`;
  return (
    `${passLabel(result.reconciler, result.partition)}: ${what} ${result.status} in ${formatDuration(result.durationMs)}: ` +
    `${c.found} found, ${c.changed} changed, ${c.unchanged} unchanged, ${c.skipped} skipped, ${c.failed} failed, ${c.deferred} deferred, ${c.dead} dead` +
    `${result.died ? ` (${result.died === c.dead ? 'all' : result.died} died in this pass)` : ''}` +
    `${endNote(result)}${result.error ? `: ${result.error}` : ''}`
  );
}
