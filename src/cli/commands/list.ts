/** `reconciler list`: every reconciler with its schedule, next run, last pass, holder, backoff and dead items, and load errors. */
import { ExitCode } from '../../errors.js';
import { describeLoadError } from '../../engine/load.js';
import { describeHolder, laneOf } from '../../engine/engine.js';
import { nextTick } from '../../scheduler/cron.js';
import { countFailures } from '../../store/failures.js';
import { holderOfRow, readStates, type StateRow } from '../../store/state.js';
import { withContext } from '../context.js';
import { printJson, table, when } from '../table.js';

export async function listCommand(flags: { json?: boolean }): Promise<number> {
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async ({ database, reconcilers, loadErrors, config }) => {
    const now = new Date();
    const states = new Map((await readStates(database.db)).map((s) => [laneOf(s.reconciler, s.partition), s]));
    const failures = await countFailures(database.db);
    const passOf = (state: StateRow | undefined) => {
      const held = state?.leaseLive ? state : undefined;
      return {
        lastStartedAt: state?.lastStartedAt ?? null,
        lastStatus: state?.lastStatus ?? null,
        lastSucceededAt: state?.lastSucceededAt ?? null,
        runningOn: held ? holderOfRow(held) : null,
        skippedTicks: state?.skippedTicks ?? 0,
      };
    };
    const rows = reconcilers.map((r) => {
      const partitions = Array.from({ length: r.partitions }, (_, partition) => ({ partition, ...passOf(states.get(laneOf(r.name, partition))) }));
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
        inBackoff: failures.get(r.name)?.backoff ?? 0,
        dead: failures.get(r.name)?.dead ?? 0,
        partitions: r.partitions > 1 ? partitions : undefined,
      };
    });
    if (flags.json) {
      printJson({ reconcilers: rows, errors: loadErrors });
    } else {
      if (rows.length === 0 && loadErrors.length === 0) process.stdout.write(`no reconcilers in ${config.JOBS_DIR} yet: add a file there (see README "Writing a reconciler")\n`);
      if (rows.length > 0) {
        process.stdout.write(
          `${table(
            ['NAME', 'SCHEDULE', 'NEXT RUN', 'LAST PASS', 'RUNNING ON', 'BACKOFF', 'DEAD', 'SKIPPED TICKS', 'DESCRIPTION'],
            rows.flatMap((r) => {
              const lastPass = (p: { lastStartedAt: Date | null; lastStatus: string | null }) => (p.lastStartedAt ? `${p.lastStatus ?? 'running'} ${when(p.lastStartedAt, now)}` : 'never');
              const running = r.partitions?.filter((p) => p.runningOn).length ?? 0;
              return [
                [
                  r.name,
                  r.timezone === 'UTC' ? r.schedule : `${r.schedule} (${r.timezone})`,
                  when(r.nextRun, now),
                  r.partitions ? `${lastPass(r)} (stalest of ${r.partitions.length})` : lastPass(r),
                  r.partitions ? `${running} of ${r.partitions.length} partitions` : r.runningOn ? describeHolder(r.runningOn) : '-',
                  String(r.inBackoff),
                  String(r.dead),
                  String(r.skippedTicks),
                  r.description,
                ],
                ...(r.partitions ?? []).map((p) => [`  partition ${p.partition}`, '', '', lastPass(p), p.runningOn ? describeHolder(p.runningOn) : '-', '', '', String(p.skippedTicks), '']),
              ];
            }),
          )}\n`,
        );
      }
      if (loadErrors.length > 0) process.stderr.write(`${loadErrors.map((e) => `reconciler: ${describeLoadError(e)}`).join('\n')}\n`);
    }
    return loadErrors.length > 0 ? ExitCode.usage : ExitCode.ok;
  });
}
