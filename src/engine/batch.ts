/**
 * One batch of a set-based reconciler (`reconcileBatch`): call it on the batch's items under
 * the reconciler's timeout and the pass's abort, read each item's outcome by key, and record
 * each item as a per-item reconciler's would be (item.ts): done items forget their failure
 * memory in one statement, failed ones are recorded one by one.
 *
 * A batch that throws is split: its halves are tried again, one after the other, down to single
 * items, so that a poison item (a row a constraint rejects) fails alone, with its own error, and
 * every other item's work is done. One poison item in a batch of n costs at most 2·log2(n) calls
 * more (fewer: a half known to throw is split without a call); k of them about 2·k·(log2(n/k) + 1)
 * at most. A timeout or the pass's abort is not split: the
 * whole batch timed out (failed) or was cut off (no attempt spent).
 */
import type { Logger } from 'pino';
import type { BatchContext, BatchOutcomes, Db, Outcome, ReconcileResult } from '../reconciler.js';
import { coerceError, errorSummary } from '../errors.js';
import type { FailureMemory } from '../store/failures.js';
import { FlightTimeoutError } from './flights.js';
import { settleSpan } from '../tracing/index.js';
import { abortedInFlight, busyWhile, done, failed, forget, normalizeResult, tracedItem, type ItemReport, type ItemScope } from './item.js';

/** A due item of a batch. */
export interface BatchMember {
  item: unknown;
  key: string;
  memory: FailureMemory | undefined;
}

/** What came of one member, before it is recorded. */
type Settled = { outcome: Outcome; note: string | undefined } | { error: Error } | { aborted: true };

class BatchRun implements BatchContext {
  #log: Logger | undefined;
  readonly keys: readonly string[];
  readonly attempts: ReadonlyMap<string, number>;

  constructor(
    private readonly scope: ItemScope,
    readonly signal: AbortSignal,
    members: readonly BatchMember[],
  ) {
    this.keys = members.map((m) => m.key);
    this.attempts = new Map(members.map((m) => [m.key, (m.memory?.attempts ?? 0) + 1]));
  }

  get db(): Db {
    return this.scope.db;
  }
  get dryRun(): boolean {
    return this.scope.dryRun;
  }
  get log(): Logger {
    return (this.#log ??= this.scope.log.child({ batch: this.keys.length, firstKey: this.keys[0] }));
  }
}

/** The outcome `outcomes` gives `key`: a result, an Error, or undefined when it does not mention the key. */
function outcomeOf(outcomes: BatchOutcomes, key: string): ReconcileResult | Error | undefined {
  if (outcomes instanceof Map) return outcomes.get(key) as ReconcileResult | Error | undefined;
  return Object.hasOwn(outcomes, key) ? (outcomes as Record<string, ReconcileResult | Error>)[key] : undefined;
}

function settledOf(outcomes: BatchOutcomes, key: string): Settled {
  const outcome = outcomeOf(outcomes, key);
  if (outcome === undefined) return { error: new Error('reconcileBatch() returned no outcome for this item: return one for every key it was given (an Error for an item that failed)') };
  if (outcome instanceof Error) return { error: outcome };
  try {
    return normalizeResult(outcome, `reconcileBatch() returned, for this item,`);
  } catch (error) {
    return { error: coerceError(error) };
  }
}

/**
 * Calls reconcileBatch on `members`, splitting on a throw; each member's settlement lands in
 * `into`. Returns whether this call threw. `knownToThrow`: its parent threw and its left half did
 * not, so this half holds what threw: it is split at once, without a call that would throw
 * again (a quarter fewer calls per poison item). Were the throw transient, splitting costs a few
 * calls more, never a wrong outcome: every item is still settled by a call that returned.
 */
async function settle(scope: ItemScope, members: readonly BatchMember[], into: Map<string, Settled>, knownToThrow = false): Promise<boolean> {
  if (knownToThrow && members.length > 1) {
    await split(scope, members, into);
    return true;
  }
  const { reconciler, flights, abort } = scope;
  const flight = flights.start();
  let thrown: Error;
  try {
    const run = new BatchRun(scope, flight.signal, members);
    const items = members.map((m) => m.item);
    const outcomes = await flight.race(busyWhile(scope.busyKeys, run.keys, () => reconciler.reconcileBatch!(items, run)));
    if (typeof outcomes !== 'object' || outcomes === null) throw new TypeError(`reconcileBatch() returned ${JSON.stringify(outcomes) ?? String(outcomes)}; expected each item's outcome by key (a Map or an object)`);
    for (const m of members) into.set(m.key, settledOf(outcomes, m.key));
    return false;
  } catch (error) {
    thrown = coerceError(error);
  } finally {
    flights.end(flight);
  }
  if (abort.aborted && !(thrown instanceof FlightTimeoutError)) {
    for (const m of members) into.set(m.key, { aborted: true });
  } else if (members.length === 1 || thrown instanceof FlightTimeoutError) {
    for (const m of members) into.set(m.key, { error: thrown });
  } else {
    if (scope.log.isLevelEnabled('debug')) scope.log.debug({ batch: members.length, error: errorSummary(thrown, 300) }, `a batch of ${members.length} threw; trying its halves`);
    await split(scope, members, into);
  }
  return true;
}

/** Settles the halves of a batch that threw, one after the other; the second is known to throw when the first did not. */
async function split(scope: ItemScope, members: readonly BatchMember[], into: Map<string, Settled>): Promise<void> {
  const half = Math.ceil(members.length / 2);
  const leftThrew = await settle(scope, members.slice(0, half), into);
  await settle(scope, members.slice(half), into, !leftThrew);
}

/** Reconciles a batch and records each of its items; returns each item's report, in the batch's order. */
export function reconcileBatch(scope: ItemScope, members: readonly BatchMember[]): Promise<{ key: string; report: ItemReport }[]> {
  const { tracer } = scope;
  if (!tracer) return reconcileUntraced(scope, members);
  // One span for the batch (its calls, split or not), and one per item under it with the item's outcome.
  const span = tracer.item(`batch ${scope.reconciler.name}`, { 'reconciler.name': scope.reconciler.name, 'reconciler.batch.size': members.length });
  return settleSpan(span, tracer.within(span, () => reconcileUntraced(scope, members, (key, attempt, report) => tracedItem(tracer, scope, key, attempt, report))));
}

type Reporting = (key: string, attempt: number, report: () => Promise<ItemReport>) => Promise<ItemReport>;

async function reconcileUntraced(scope: ItemScope, members: readonly BatchMember[], reporting: Reporting = (_key, _attempt, report) => report()): Promise<{ key: string; report: ItemReport }[]> {
  const started = performance.now();
  const settled = new Map<string, Settled>();
  await settle(scope, members, settled);
  const durationMs = performance.now() - started;
  // Done items that had failed before forget their failures in one statement.
  const toForget = scope.dryRun ? [] : members.filter((m) => m.memory && 'outcome' in settled.get(m.key)! && (settled.get(m.key) as { outcome: Outcome }).outcome !== 'skipped').map((m) => m.key);
  const forgotten = toForget.length > 0 ? forget(scope, toForget) : undefined;
  return Promise.all(
    members.map(async ({ key, memory }) => {
      const attempt = (memory?.attempts ?? 0) + 1;
      const s = settled.get(key)!;
      const report = await reporting(key, attempt, async () => {
        if ('aborted' in s) return abortedInFlight(scope, key, attempt);
        if ('error' in s) return failed(scope, key, attempt, s.error);
        return done(scope, key, memory, s.outcome, s.note, durationMs, attempt, forgotten);
      });
      return { key, report };
    }),
  );
}
