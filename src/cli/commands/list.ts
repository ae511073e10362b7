/** `reconciler list`: every reconciler with its schedule, next run, last pass, holder, backoff and dead items, and load errors. */
import { ExitCode } from '../../errors.js';
import { formatLoadError } from '../../engine/load.js';
import { describeHolder } from '../../engine/engine.js';
import { nextTick } from '../../scheduler/cron.js';
import { countFailures } from '../../store/failures.js';
import { readStates } from '../../store/state.js';
import { withContext } from '../context.js';
import { printJson, table, when } from '../table.js';

export async function listCommand(flags: { json?: boolean }): Promise<number> {
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async ({ database, reconcilers, loadErrors, config }) => {
    const now = new Date();
    const states = new Map((await readStates(database.db)).filter((s) => s.partition === 0).map((s) => [s.reconciler, s]));
    const failures = await countFailures(database.db);
    const rows = reconcilers.map((r) => {
      const state = states.get(r.name);
      const held = state?.leaseLive ? state : undefined;
      return {
        name: r.name,
        file: r.file,
        description: r.description,
        schedule: r.schedule,
        timezone: r.timezone,
        nextRun: nextTick(r.schedule, r.timezone, now),
        lastStartedAt: state?.lastStartedAt ?? null,
        lastStatus: state?.lastStatus ?? null,
        lastSucceededAt: state?.lastSucceededAt ?? null,
        runningOn: held ? { host: held.holderHost ?? '?', pid: held.holderPid ?? 0, since: held.holderSince ?? now, expiresAt: held.leaseExpiresAt ?? now, runId: held.currentRunId } : null,
        skippedTicks: state?.skippedTicks ?? 0,
        inBackoff: failures.get(r.name)?.backoff ?? 0,
        dead: failures.get(r.name)?.dead ?? 0,
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
            rows.map((r) => [
              r.name,
              r.timezone === 'UTC' ? r.schedule : `${r.schedule} (${r.timezone})`,
              when(r.nextRun, now),
              r.lastStartedAt ? `${r.lastStatus ?? 'running'} ${when(r.lastStartedAt, now)}` : 'never',
              r.runningOn ? describeHolder(r.runningOn) : '-',
              String(r.inBackoff),
              String(r.dead),
              String(r.skippedTicks),
              r.description,
            ]),
          )}\n`,
        );
      }
      if (loadErrors.length > 0) process.stderr.write(`${loadErrors.map((e) => `reconciler: ${formatLoadError(e)}`).join('\n')}\n`);
    }
    return loadErrors.length > 0 ? ExitCode.usage : ExitCode.ok;
  });
}
