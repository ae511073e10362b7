/** `reconciler history [name] [--status s] [--trigger t] [--partition n]`: recent passes, newest first. */
import { formatDuration } from '../../duration.js';
import { ExitCode, UserError, oneLine } from '../../errors.js';
import { Engine } from '../../engine/engine.js';
import { passHistory } from '../../operator/views.js';
import { withContext } from '../../context.js';
import { printJson, shownOf, table, when } from '../table.js';
import { STATUSES, TRIGGERS } from './choices.js';


export interface HistoryFlags {
  status?: string;
  trigger?: string;
  partition?: number;
  limit: number;
  json?: boolean;
}

function checkChoice(flag: string, value: string | undefined, choices: readonly string[]): void {
  if (value !== undefined && !choices.includes(value)) throw new UserError(`unknown ${flag} \`${value}\` (one of: ${choices.join(', ')})`);
}

export async function historyCommand(name: string | undefined, flags: HistoryFlags): Promise<number> {
  checkChoice('--status', flags.status, STATUSES);
  checkChoice('--trigger', flags.trigger, TRIGGERS);
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async ({ database, reconcilers, loadErrors, log, config }) => {
    // The name must be a reconciler (else: did you mean…?) or a job file that did not load: its past passes help fix it.
    if (name !== undefined && !loadErrors.some((e) => e.name === name)) {
      const reconciler = new Engine({ db: database.db, reconcilers, log, leaseMs: config.LEASE_TTL }).get(name);
      if (flags.partition !== undefined && flags.partition >= reconciler.partitions) {
        throw new UserError(`${name} has ${reconciler.partitions === 1 ? 'no partitions' : `partitions 0 to ${reconciler.partitions - 1}`}, not ${flags.partition}`);
      }
    }
    const filters = { status: flags.status, trigger: flags.trigger, partition: flags.partition };
    const { runs, total } = await passHistory(database.db, { ...(name !== undefined ? { reconciler: name } : {}), ...definedOnly(filters), limit: flags.limit });
    if (flags.json) {
      printJson({ runs, total });
      return ExitCode.ok;
    }
    if (runs.length === 0) {
      process.stdout.write(`no passes recorded${name ? ` for ${name}` : ''}${Object.keys(definedOnly(filters)).length ? ' that match' : ' yet'}\n`);
      return ExitCode.ok;
    }
    const partitioned = (reconciler: string, partition: number) => partition > 0 || (reconcilers.find((r) => r.name === reconciler)?.partitions ?? 1) > 1;
    process.stdout.write(
      `${table(
        ['RUN', 'RECONCILER', 'PARTITION', 'TRIGGER', 'STATUS', 'STARTED', 'TOOK', 'FOUND', 'CHANGED', 'UNCHANGED', 'SKIPPED', 'FAILED', 'DEFERRED', 'DEAD', 'HOST', 'ERROR'],
        runs.map((r) => [
          String(r.id), r.reconciler, partitioned(r.reconciler, r.partition) ? String(r.partition) : '-', r.trigger,
          r.complete || r.status === 'running' ? r.status : `${r.status} (partial)`, when(r.startedAt),
          r.durationMs === null ? '-' : formatDuration(r.durationMs),
          String(r.found), String(r.changed), String(r.unchanged), String(r.skipped), String(r.failed), String(r.deferred), String(r.dead),
          `${r.host}:${r.pid}`, oneLine(r.error, 120),
        ]),
      )}\n${shownOf(runs.length, total)}`,
    );
    return ExitCode.ok;
  });
}

/** The filters that were given. */
function definedOnly<T extends Record<string, unknown>>(filters: T): Partial<T> {
  return Object.fromEntries(Object.entries(filters).filter(([, v]) => v !== undefined)) as Partial<T>;
}
