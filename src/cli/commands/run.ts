/**
 * `reconciler run <name…> | --all`: a manual pass through the same engine the daemon
 * uses. Exit 0 ok, 1 items failed (or the pass broke), 2 usage error, 3 lease held.
 * A job file that did not load only matters if it was asked for: named, nothing runs
 * (exit 2); with --all, the good ones run first (then exit 2). Others get a warning line.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { backoffDelay } from '../../engine/backoff.js';
import { onStopSignals } from '../../signals.js';
import { ExitCode, UserError, errorSummary } from '../../errors.js';
import { formatDuration } from '../../duration.js';
import { Engine, type PassAttempt } from '../../engine/engine.js';
import { describeHolder, passLabel, summarize, type PassResult } from '../../engine/result.js';
import { partitionOf, partitionsToRun } from '../../store/partition.js';
import { withContext } from '../../context.js';
import { describeLoadError, formatLoadError, type LoadError } from '../../engine/load.js';
import type { Config } from '../../config.js';
import type { Logger } from 'pino';
import { printJson } from '../table.js';
import { listFailures } from '../../store/failures.js';
import { Progress } from '../progress.js';

export interface RunFlags {
  all?: boolean;
  dryRun?: boolean;
  key?: string;
  partition?: number;
  json?: boolean;
  wait?: boolean;
}

export async function runCommand(names: string[], flags: RunFlags): Promise<number> {
  if (flags.all && names.length > 0) throw new UserError('give reconciler names or --all, not both');
  if (!flags.all && names.length === 0) throw new UserError('name the reconciler(s) to run, or pass --all (see `reconciler list`)');
  if (flags.key !== undefined && (flags.all || names.length !== 1)) throw new UserError('--key needs exactly one reconciler name');
  if (flags.partition !== undefined && (flags.all || names.length !== 1)) throw new UserError('--partition needs exactly one reconciler name');
  if (flags.key !== undefined && flags.key === '') throw new UserError('--key needs a non-empty key (see `reconciler failures` or --dry-run for keys)');
  return withContext({ jobs: true, defaultLogLevel: 'warn', tracing: true }, async ({ config, log, database, reconcilers, loadErrors }) => {
    const engine = new Engine({ db: database.db, control: database.control, reconcilers, log, leaseMs: config.LEASE_TTL });
    return runPasses(engine, names, loadErrors, flags, config, log);
  });
}

async function runPasses(engine: Engine, names: string[], loadErrors: LoadError[], flags: RunFlags, config: Config, log: Logger): Promise<number> {
  const selected = flags.all ? [...engine.reconcilers.keys()] : [...new Set(names)];
  const asked = flags.all ? loadErrors : loadErrors.filter((e) => selected.includes(e.name));
  if (!flags.all && asked.length > 0) throw new UserError(asked.map((e) => `cannot run ${e.name}: ${describeLoadError(e)}`).join('\n'));
  for (const name of selected) engine.get(name); // unknown names fail before any pass runs
  if (flags.partition !== undefined) {
    const reconciler = engine.get(selected[0]!);
    engine.partition(reconciler, flags.partition); // and so does a partition it does not have
    if (flags.key !== undefined && partitionOf(flags.key, reconciler.partitions) !== flags.partition) {
      throw new UserError(`key ${JSON.stringify(flags.key)} is in partition ${partitionOf(flags.key, reconciler.partitions)} of ${reconciler.name}, not ${flags.partition}; leave out --partition (--key finds its partition)`);
    }
  }
  if (selected.length === 0 && loadErrors.length === 0) throw new UserError(`no reconcilers in ${config.JOBS_DIR}: add a file there (see docs/writing-reconcilers.md)`);
  for (const e of loadErrors) process.stderr.write(`reconciler: warning: ${formatLoadError(e)} (not loaded; the other reconcilers are unaffected)\n${e.excerpt ? `${e.excerpt}\n` : ''}`);

  const progress = flags.json ? undefined : Progress.forStderr(engine.events);
  if (flags.dryRun) {
    engine.events.on('item:done', (item) => {
      const line = flags.json ? JSON.stringify({ type: 'item', reconciler: item.reconciler, key: item.key, outcome: item.outcome, note: item.note ?? null }) : dryRunLine(`would be ${item.outcome}`, item.key, item.note);
      progress?.clear();
      process.stdout.write(`${line}\n`);
    });
    engine.events.on('item:failed', (item) => {
      const error = errorSummary(item.error, 200);
      const line = flags.json ? JSON.stringify({ type: 'item', reconciler: item.reconciler, key: item.key, outcome: 'failed', note: error }) : dryRunLine('would fail', item.key, error);
      progress?.clear();
      process.stdout.write(`${line}\n`);
    });
    engine.events.on('item:deferred', (item) => {
      const line = flags.json
        ? JSON.stringify({ type: 'item', reconciler: item.reconciler, key: item.key, outcome: item.reason === 'dead' ? 'dead' : 'deferred', note: null })
        : dryRunLine(`not now (${item.reason})`, item.key, item.reason === 'backoff' ? `next attempt ${item.nextAttemptAt.toISOString()}` : 'dead: waits for a person (`reconciler failures` shows it)');
      progress?.clear();
      process.stdout.write(`${line}\n`);
    });
  }
  // Ctrl-C stops taking new items, lets in-flight ones finish and records the pass as aborted; a second one exits at once.
  // Left installed until the process exits: a signal while the database closes is still a graceful one.
  onStopSignals({
    first: (signal) => {
      progress?.clear();
      process.stderr.write(`reconciler: ${signal}: finishing the items in flight (up to ${formatDuration(config.SHUTDOWN_TIMEOUT)}); press Ctrl-C again to exit at once\n`);
      void engine.stop(config.SHUTDOWN_TIMEOUT);
    },
    again: () => undefined,
  });
  let exitCode: number = ExitCode.ok;
  for (const { name, partition } of selected.flatMap((name) => partitionsToRun(engine.get(name).partitions, flags).map((partition) => ({ name, partition })))) {
    const outcome = await runWithWait(engine, name, partition, flags, (message) => log.warn(message));
    progress?.clear();
    if (!outcome.ran) {
      if (outcome.reason === 'stopping') {
        exitCode = Math.max(exitCode, ExitCode.itemsFailed);
        break;
      }
      if (outcome.reason !== 'held') throw new Error(`pass did not run: ${outcome.reason}`);
      const message = `${passLabel(name, engine.partition(engine.get(name), partition))}: a pass is already running on ${describeHolder(outcome.holder)}; wait for it with --wait`;
      if (flags.json) printJson({ type: 'pass', reconciler: name, partition, status: 'locked', holder: outcome.holder });
      else process.stderr.write(`reconciler: ${message}\n`);
      exitCode = Math.max(exitCode, ExitCode.leaseHeld);
      continue;
    }
    report(outcome.result, flags);
    if (flags.key !== undefined) exitCode = Math.max(exitCode, await explainKey(engine, outcome.result, flags.key));
    if (outcome.result.status !== 'succeeded') exitCode = Math.max(exitCode, ExitCode.itemsFailed);
  }
  progress?.stop();
  return asked.length > 0 ? Math.max(exitCode, ExitCode.usage) : exitCode;
}

/** After a `--key` pass: says plainly when the scan does not find the key, or when it was dead and not attempted. */
async function explainKey(engine: Engine, result: PassResult, key: string): Promise<number> {
  const name = result.reconciler;
  const shown = JSON.stringify(key);
  if (!result.keyFound) {
    const [failure] = (await listFailures(engine.db, { reconciler: name, key, limit: 1 }).catch(() => ({ items: [] }))).items;
    const onRecord = failure
      ? ` It still has a failure on record (${failure.deadAt ? 'dead' : 'in backoff'} after ${failure.attempts} attempt(s)), which the next complete pass forgets: \`reconciler failures ${name} ${shown}\` shows it.`
      : '';
    process.stderr.write(`reconciler: ${name}: the scan does not find ${shown}: nothing needs doing for it now (it is done, or the key is wrong).${onRecord}\n`);
    return ExitCode.ok;
  }
  if (result.counts.dead - (result.died ?? 0) === 0) return ExitCode.ok;
  process.stderr.write(`reconciler: ${name}: ${shown} is dead and was not attempted: \`reconciler failures ${name} ${shown}\` shows its error and what a person can do (retry, clear, a manual action)\n`);
  return ExitCode.itemsFailed;
}

/** One line of `--dry-run` output: what, which item, and the reconciler's note. */
function dryRunLine(label: string, key: string, note: string | undefined): string {
  return `${label.padEnd(19)} ${key}${note ? `  ${note}` : ''}`;
}

function report(result: PassResult, flags: RunFlags): void {
  if (flags.json) printJson({ type: 'pass', ...result, durationMs: Math.round(result.durationMs) });
  else process.stdout.write(`${summarize(result)}\n`);
}

/** How `--wait` looks again at a pass held elsewhere: soon at first, then every second or so. */
const WAIT_POLICY = { initialDelayMs: 250, maxDelayMs: 1_000, maxAttempts: Infinity };

/** One pass; with `--wait`, polls until the holder is done instead of giving up. */
async function runWithWait(engine: Engine, name: string, partition: number, flags: RunFlags, say: (message: string) => void): Promise<PassAttempt> {
  const request = { trigger: 'manual' as const, dryRun: Boolean(flags.dryRun), partition, ...(flags.key !== undefined ? { onlyKey: flags.key } : {}) };
  let announced = false;
  for (let poll = 1; ; poll++) {
    const outcome = await engine.requestPass(name, request);
    if (outcome.ran || !flags.wait || outcome.reason !== 'held') return outcome;
    if (outcome.reason === 'held' && !announced) {
      say(`${passLabel(name, engine.partition(engine.get(name), partition))}: waiting for the pass running on ${describeHolder(outcome.holder)}`);
      announced = true;
    }
    await sleep(backoffDelay(poll, WAIT_POLICY));
  }
}
