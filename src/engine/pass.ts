/**
 * One pass of one reconciler: take its candidates in scan order (candidates.ts), admit the due
 * ones with at most `concurrency` in flight, reconcile each (item.ts), fold what came of it into
 * the tally (tally.ts), and end with a status. The pass never lets one item's failure or hang
 * stop the rest. Leases and history rows are the engine's job (engine.ts); this file does the work.
 */
import type { Logger } from 'pino';
import type { Db, Partition, Reconciler } from '../reconciler.js';
import { coerceError, errorSummary, isDatabaseUnavailable } from '../errors.js';
import { inPartitionText } from '../store/partition.js';
import { databaseAnswers } from '../store/database.js';
import { scanCandidates } from './candidates.js';
import { FailureDigest } from './failure-digest.js';
import { reconcileItem, timedOutAfter, type ItemScope } from './item.js';
import { reconcileBatch, type BatchMember } from './batch.js';
import { Flights } from './flights.js';
import { Tally } from './tally.js';
import type { EngineEvents } from './events.js';
import type { PassResult, PassStatus, Trigger } from './result.js';
import { Admission } from './admission.js';
import type { Slots } from './slots.js';
import { sampledTracer } from '../tracing/index.js';

export interface PassOptions {
  trigger: Trigger;
  dryRun: boolean;
  /** Reconcile only the item with this key (ignoring its backoff); `reconciler run --key`. */
  onlyKey?: string;
  partition: Partition;
}

/** How the engine tells a running pass to stop taking items, or to abort. */
export interface PassSignals {
  /** Aborted to stop taking new items (shutdown began); in-flight items go on. */
  stop: AbortSignal;
  /** Aborted to abort in-flight items too (shutdown timeout, lease lost). */
  abort: AbortSignal;
  /**
   * Asked before each item is taken: a reason when the partition now belongs to another
   * replica (one joined), so the pass stops taking items, lets those in flight finish, and
   * ends incomplete. Must answer at once (from what it last learnt), not query per item.
   */
  handOver?: () => string | undefined;
}

export interface PassDeps {
  db: Db;
  log: Logger;
  events: EngineEvents;
  /** The pass's id (its row in `runs`), null for a dry run. */
  passId: number | null;
  /**
   * Keys of this reconciler whose `reconcile` is still running in this process, across
   * passes: an item that timed out but ignores its signal keeps its key here until it
   * settles, so that no later pass starts the same item beside it.
   */
  busyKeys: Set<string>;
  /** This reconciler's items in flight in this process, shared by the passes of its partitions. */
  slots?: Slots;
  random?: () => number;
}

/** A set-based reconciler's due items, gathered until a batch is full (or the scan ends), then run as one. */
class Batches {
  #batch: BatchMember[] = [];

  constructor(
    private readonly scope: ItemScope,
    private readonly admission: Admission,
    private readonly tally: Tally,
  ) {}

  /** Adds a due item; runs the batch once it is full. False when the pass must stop. */
  async gather({ item, key, memory }: { item: unknown; key: string; memory: BatchMember['memory'] }): Promise<boolean> {
    this.admission.gather(key);
    this.#batch.push({ item, key, memory });
    return this.#batch.length < this.scope.reconciler.batchSize || this.run();
  }

  /** Runs what was gathered, once there is room; false (and nothing run) when the pass must stop first. */
  async run(): Promise<boolean> {
    const members = this.#batch;
    this.#batch = [];
    if (members.length === 0) return true;
    const keys = members.map((m) => m.key);
    if (!(await this.admission.admit(0))) {
      this.admission.release(keys);
      return false;
    }
    for (let i = 0; i < members.length; i++) this.tally.admitted();
    this.admission.startBatch(keys, reconcileBatch(this.scope, members).then((reports) => reports.forEach(({ key, report }) => this.tally.settled(key, report))));
    return true;
  }
}

/** Runs one pass. Never throws: a broken pass comes back with status `error`. */
export async function executePass(reconciler: Reconciler, options: PassOptions, deps: PassDeps, signals: PassSignals): Promise<PassResult> {
  const { db, events } = deps;
  const log = deps.log.child({ reconciler: reconciler.name, passId: deps.passId ?? 'dry-run' });
  const tally = new Tally(reconciler, log);
  const admission = new Admission(reconciler, signals, deps.slots, () => tally.unavailable);
  const { dryRun, partition, onlyKey } = options;
  // One timer and one abort listener for the whole pass, however many items it runs (flights.ts).
  const flights = new Flights(reconciler.timeoutMs, timedOutAfter(reconciler));
  const abortFlights = () => flights.abortAll(signals.abort.reason);
  signals.abort.addEventListener('abort', abortFlights, { once: true });
  const traced = sampledTracer(); // spans for the pass's pages, items and records: only in a sampled pass (this runs inside its span)
  const scope: ItemScope = { reconciler, db, log, events, dryRun, partition, abort: signals.abort, flights, busyKeys: deps.busyKeys, failures: new FailureDigest(), ...traced, ...(deps.random ? { random: deps.random } : {}) };
  const scan = scanCandidates({ reconciler, db, log, events, signal: signals.abort, partition, dryRun, ...(onlyKey !== undefined ? { onlyKey } : {}), busyKeys: deps.busyKeys, inFlight: admission.keys, ...traced });
  let stoppedEarly = false;
  let keyFound = false;
  let error: string | null = null;
  const batches = new Batches(scope, admission, tally);
  try {
    scanning: for await (const page of scan.candidates) {
      for (const candidate of page) {
        if (candidate.kind === 'unusable' || candidate.kind === 'busy' || candidate.kind === 'duplicate') {
          tally.classified(candidate.kind);
          continue;
        }
        if (admission.closed()) {
          stoppedEarly = true;
          break scanning;
        }
        tally.noteSince(candidate.item);
        if (candidate.kind === 'due' && reconciler.reconcileBatch) {
          if (!(await batches.gather(candidate))) {
            stoppedEarly = true;
            break scanning;
          }
        } else if (candidate.kind === 'due') {
          // Admitted at once when there is room (no promise per item); else wait for room.
          if (!(admission.tryAdmit() ?? (await admission.admit()))) {
            stoppedEarly = true;
            break scanning;
          }
          tally.admitted();
          const { key } = candidate;
          admission.startItem(key, reconcileItem(scope, candidate.item, key, candidate.memory).then((report) => tally.settled(key, report)));
        } else {
          tally.classified(candidate.kind);
          if (candidate.kind === 'backoff') tally.noteRetry(candidate.memory.nextAttemptAt);
          events.emit('item:deferred', { reconciler: reconciler.name, key: candidate.key, reason: candidate.kind, nextAttemptAt: candidate.memory.nextAttemptAt });
        }
        keyFound = onlyKey !== undefined; // with `--key` the candidates end after that key's
      }
    }
  } catch (thrown) {
    stoppedEarly = true;
    const failure = coerceError(thrown);
    error = signals.abort.aborted ? errorSummary(coerceError(signals.abort.reason)) : errorSummary(failure);
    // The scan is the job's code and may call other services: its connection error means our
    // database is gone only if the database does not answer either.
    if (!signals.abort.aborted && isDatabaseUnavailable(failure) && !(await databaseAnswers(db))) tally.unavailable ??= failure;
    else if (!signals.abort.aborted) log.error({ err: failure }, `pass broke off: ${error}`);
  }
  // What a set-based reconciler gathered last runs too (it is within the budget), unless the pass must stop.
  if (!(await batches.run())) stoppedEarly = true;
  await admission.drain();
  signals.abort.removeEventListener('abort', abortFlights);
  flights.close();
  scope.failures.summarise(log);
  logLeftOut(log, tally.abortedKeys, scan.foreign, partition);
  let complete = !stoppedEarly && !keyFound;
  if (tally.unavailable && !signals.abort.aborted) {
    complete = false;
    error = `the database is unavailable (${errorSummary(tally.unavailable, 300)}): the pass stopped taking items; the next pass resumes`;
  }
  const ended = passStatus(signals, complete, error, tally);
  return {
    reconciler: reconciler.name, partition, runId: deps.passId, trigger: options.trigger, dryRun, status: ended.status, counts: tally.counts, complete,
    durationMs: admission.elapsed(), error: ended.error, ...(onlyKey !== undefined ? { keyFound } : {}), oldestItemAt: tally.oldestItemAt, nextRetryAt: tally.nextRetryAt,
    ...(tally.died > 0 ? { died: tally.died } : {}),
    ...(admission.handedOver !== undefined ? { handedOver: admission.handedOver } : {}),
  };
}

/** Names, once each, the items aborted in flight and those the scan returned of other partitions. */
function logLeftOut(log: Logger, abortedKeys: string[], foreign: string[], { index, count }: Partition): void {
  if (abortedKeys.length > 0) {
    const shown = abortedKeys.slice(0, 10).join(', ');
    log.info({ keys: abortedKeys.slice(0, 100), count: abortedKeys.length }, `${abortedKeys.length} item(s) aborted in flight, no attempt spent; the next pass finds them again: ${shown}${abortedKeys.length > 10 ? ', …' : ''}`);
  }
  if (foreign.length > 0) {
    log.error(
      { keys: foreign.slice(0, 100), count: foreign.length, partition: index, partitions: count },
      `the scan of partition ${index} of ${count} returned ${foreign.length} item(s) of other partitions (e.g. ${foreign[0]}); they were left to their own partition's pass. ` +
        `Filter the scan on its partition: WHERE ${inPartitionText(count, index)}`,
    );
  }
}

/** How the pass ended, and the error its record keeps. */
function passStatus(signals: PassSignals, complete: boolean, error: string | null, tally: Tally): { status: PassStatus; error: string | null } {
  if (signals.abort.aborted || (signals.stop.aborted && !complete)) {
    let why = error ?? errorSummary(coerceError(signals.abort.reason ?? signals.stop.reason ?? 'stopped'));
    // In the run's record, where history shows it: which items were cut off (no attempt spent).
    const { abortedKeys } = tally;
    if (abortedKeys.length > 0) why += `; ${abortedKeys.length} item(s) aborted in flight, no attempt spent: ${abortedKeys.slice(0, 20).join(', ')}${abortedKeys.length > 20 ? ', …' : ''}`;
    return { status: 'aborted', error: why };
  }
  if (error !== null) return { status: 'error', error };
  return { status: tally.counts.failed > 0 || tally.died > 0 ? 'failed' : 'succeeded', error };
}
