/** `reconciler history [name]`: recent passes, newest first. */
import { formatDuration } from '../../duration.js';
import { ExitCode, oneLine } from '../../errors.js';
import { Engine } from '../../engine/engine.js';
import { listRuns } from '../../store/runs.js';
import { withContext } from '../../context.js';
import { printJson, table, when } from '../table.js';

export async function historyCommand(name: string | undefined, flags: { limit: number; json?: boolean }): Promise<number> {
  return withContext({ jobs: name !== undefined, defaultLogLevel: 'warn' }, async ({ database, reconcilers, loadErrors, log, config }) => {
    // The name must be a reconciler (else: did you mean…?) or a job file that did not load: its past passes help fix it.
    if (name !== undefined && !loadErrors.some((e) => e.name === name)) new Engine({ db: database.db, reconcilers, log, leaseMs: config.LEASE_TTL }).get(name);
    const { runs } = await listRuns(database.db, { ...(name !== undefined ? { reconciler: name } : {}), limit: flags.limit });
    if (flags.json) {
      printJson({ runs });
      return ExitCode.ok;
    }
    if (runs.length === 0) {
      process.stdout.write(`no passes recorded${name ? ` for ${name}` : ''} yet\n`);
      return ExitCode.ok;
    }
    process.stdout.write(
      `${table(
        ['RUN', 'RECONCILER', 'TRIGGER', 'STATUS', 'STARTED', 'TOOK', 'FOUND', 'CHANGED', 'UNCHANGED', 'SKIPPED', 'FAILED', 'DEFERRED', 'DEAD', 'HOST', 'ERROR'],
        runs.map((r) => [
          String(r.id), r.reconciler, r.trigger, r.complete || r.status === 'running' ? r.status : `${r.status} (partial)`, when(r.startedAt),
          r.durationMs === null ? '-' : formatDuration(r.durationMs),
          String(r.found), String(r.changed), String(r.unchanged), String(r.skipped), String(r.failed), String(r.deferred), String(r.dead),
          `${r.host}:${r.pid}`, oneLine(r.error, 120),
        ]),
      )}\n`,
    );
    return ExitCode.ok;
  });
}
