/**
 * `reconciler list`: every reconciler with its schedule, next run, last pass, since when its
 * passes end in `error` (the operator layer's `passErrors`), holder, backoff and dead items, and
 * how its scan reaches its rows (an index, or a whole table). A job file
 * that did not load is a row too, with its problem: the command needs nothing a job file
 * needs, so it works whatever is wrong with one.
 */
import { ExitCode } from '../../errors.js';
import { formatLoadError, type LoadError } from '../../engine/load.js';
import type { Reconciler } from '../../reconciler.js';
import type { Database } from '../../store/database.js';
import { planScan } from '../../engine/scan-plan.js';
import { laneOf } from '../../engine/engine.js';
import { describeHolder } from '../../engine/result.js';
import { nextTick } from '../../scheduler/cron.js';
import { countFailures } from '../../store/failures.js';
import { passErrors, type PassError } from '../../operator/views.js';
import { readStates, type StateRow } from '../../store/state.js';
import { holderOfRow } from '../../store/lease.js';
import { withContext } from '../../context.js';
import { ago, plural, printJson, table, when } from '../table.js';

type States = Map<string, StateRow>;
/** Per lane (`laneOf`): since when its passes end in `error` (a scan that throws), from `passErrors`. */
type Failing = Map<string, PassError>;
type Failures = Awaited<ReturnType<typeof countFailures>>;

/** A lane's last pass and holder, as the list shows them. */
function passOf(state: StateRow | undefined, failing: PassError | undefined) {
  const held = state?.leaseLive ? state : undefined;
  return {
    failingSince: failing?.failingSince ?? null,
    failingPasses: failing?.passes ?? 0,
    lastStartedAt: state?.lastStartedAt ?? null,
    lastStatus: state?.lastStatus ?? null,
    lastSucceededAt: state?.lastSucceededAt ?? null,
    runningOn: held ? holderOfRow(held) : null,
    skippedTicks: state?.skippedTicks ?? 0,
  };
}

async function rowOf(database: Database, r: Reconciler, states: States, failures: Failures, failing: Failing, now: Date) {
  const partitions = Array.from({ length: r.partitions }, (_, partition) => ({ partition, ...passOf(states.get(laneOf(r.name, partition)), failing.get(laneOf(r.name, partition))) }));
  // Failing since the earliest of its partitions' failing streaks; its passes, all of theirs.
  const streaks = partitions.filter((p) => p.failingSince !== null);
  const earliest = streaks.reduce<Date | null>((a, p) => (a === null || p.failingSince! < a ? p.failingSince : a), null);
  // A partitioned reconciler is as fresh as its stalest partition: its row shows that one's last pass.
  const stalest = partitions.reduce((a, b) => ((a.lastStartedAt?.getTime() ?? -Infinity) <= (b.lastStartedAt?.getTime() ?? -Infinity) ? a : b));
  return {
    name: r.name,
    file: r.file,
    description: r.description,
    schedule: r.schedule,
    timezone: r.timezone,
    nextRun: nextTick(r.schedule, r.timezone, now),
    ...stalest,
    partition: undefined,
    skippedTicks: partitions.reduce((sum, p) => sum + p.skippedTicks, 0),
    failingSince: earliest,
    failingPasses: streaks.reduce((sum, p) => sum + p.failingPasses, 0),
    inBackoff: failures.get(r.name)?.backoff ?? 0,
    dead: failures.get(r.name)?.dead ?? 0,
    partitions: r.partitions > 1 ? partitions : undefined,
    scan: await planScan(database, r),
  };
}

/** A job file that did not load: what the database remembers of it, and why it did not load. */
function brokenRowOf(e: LoadError, states: States, failures: Failures, failing: Failing) {
  return {
    name: e.name,
    file: e.file,
    error: formatLoadError(e),
    ...passOf(states.get(laneOf(e.name, 0)), failing.get(laneOf(e.name, 0))),
    inBackoff: failures.get(e.name)?.backoff ?? 0,
    dead: failures.get(e.name)?.dead ?? 0,
  };
}

export async function listCommand(flags: { json?: boolean }): Promise<number> {
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async ({ database, reconcilers, loadErrors, config }) => {
    const now = new Date();
    const states: States = new Map((await readStates(database.db)).map((s) => [laneOf(s.reconciler, s.partition), s]));
    const failures = await countFailures(database.db);
    const failing: Failing = new Map((await passErrors(database.db)).map((e) => [laneOf(e.reconciler, e.partition), e]));
    const rows = [];
    for (const r of reconcilers) rows.push(await rowOf(database, r, states, failures, failing, now));
    const broken = loadErrors.map((e) => brokenRowOf(e, states, failures, failing));
    if (flags.json) {
      printJson({ reconcilers: rows, errors: loadErrors.map((e, i) => ({ ...e, ...broken[i] })) });
    } else {
      if (rows.length === 0 && loadErrors.length === 0) process.stdout.write(`no reconcilers in ${config.JOBS_DIR} yet: add a file there (see docs/writing-reconcilers.md)\n`);
      if (rows.length > 0 || broken.length > 0) process.stdout.write(`${listTable(rows, broken, now)}\n`);
    }
    return ExitCode.ok;
  });
}

function listTable(rows: Awaited<ReturnType<typeof rowOf>>[], broken: ReturnType<typeof brokenRowOf>[], now: Date): string {
  const lastPass = (p: { lastStartedAt: Date | null; lastStatus: string | null }) => (p.lastStartedAt ? `${p.lastStatus ?? 'running'} ${when(p.lastStartedAt, now)}` : 'never');
  const failingSince = (p: { failingSince: Date | null; failingPasses: number }) => (p.failingSince ? `${ago(p.failingSince, now)} (${plural(p.failingPasses, 'pass', 'passes')})` : '-');
  return table(
    ['NAME', 'SCHEDULE', 'NEXT RUN', 'LAST PASS', 'FAILING SINCE', 'RUNNING ON', 'BACKOFF', 'DEAD', 'SKIPPED TICKS', 'SCAN', 'DESCRIPTION'],
    [...rows.flatMap((r) => {
      const running = r.partitions?.filter((p) => p.runningOn).length ?? 0;
      return [
        [
          r.name,
          r.timezone === 'UTC' ? r.schedule : `${r.schedule} (${r.timezone})`,
          when(r.nextRun, now),
          r.partitions ? `${lastPass(r)} (stalest of ${r.partitions.length})` : lastPass(r),
          failingSince(r),
          r.partitions ? `${running} of ${r.partitions.length} partitions` : r.runningOn ? describeHolder(r.runningOn) : '-',
          String(r.inBackoff),
          String(r.dead),
          String(r.skippedTicks),
          r.scan.access === 'table-scan' ? `TABLE SCAN: ${r.scan.detail}` : r.scan.access === 'filtered-index' ? `FILTERS ROWS: ${r.scan.detail}` : r.scan.detail,
          r.description,
        ],
        ...(r.partitions ?? []).map((p) => [`  partition ${p.partition}`, '', '', lastPass(p), failingSince(p), p.runningOn ? describeHolder(p.runningOn) : '-', '', '', String(p.skippedTicks), '', '']),
      ];
    }),
    ...broken.map((b) => [b.name, '-', '-', lastPass(b), failingSince(b), b.runningOn ? describeHolder(b.runningOn) : '-', String(b.inBackoff), String(b.dead), String(b.skippedTicks), '-', `DID NOT LOAD: ${b.error}`])],
  );
}
