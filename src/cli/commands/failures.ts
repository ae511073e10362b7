/**
 * Failure memory for people: `failures` shows failing and dead items; `retry` makes them
 * due now with a fresh attempt budget; `clear` forgets them.
 */
import { ExitCode, UserError, oneLine } from '../../errors.js';
import { clearFailures, listFailures, retryFailures } from '../../store/failures.js';
import { didYouMean } from '../../suggest.js';
import { formatLoadError } from '../../engine/load.js';
import { withContext, type CommandContext } from '../../context.js';
import { printJson, table, when } from '../table.js';

/** Names a person may use: loaded reconcilers, plus any that still have failures on record (a removed job file). */
async function checkName(context: CommandContext, name: string): Promise<void> {
  if (context.reconcilers.some((r) => r.name === name)) return;
  const recorded = await listFailures(context.database.db, { reconciler: name, limit: 1 });
  if (recorded.total > 0) return;
  const broken = context.loadErrors.find((e) => e.name === name);
  if (broken) throw new UserError(`${name} did not load, and has no failures on record: ${formatLoadError(broken)}`);
  const known = context.reconcilers.map((r) => r.name);
  throw new UserError(`unknown reconciler \`${name}\`${didYouMean(name, known) || (known.length ? ` (known: ${known.join(', ')})` : '')}`);
}

export async function failuresCommand(name: string | undefined, flags: { dead?: boolean; limit: number; json?: boolean }): Promise<number> {
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async (context) => {
    if (name !== undefined) await checkName(context, name);
    const { items: rows } = await listFailures(context.database.db, { ...(name !== undefined ? { reconciler: name } : {}), deadOnly: Boolean(flags.dead), limit: flags.limit });
    if (flags.json) {
      printJson({ failures: rows.map((r) => ({ ...r, dead: r.deadAt !== null })) });
      return ExitCode.ok;
    }
    if (rows.length === 0) {
      process.stdout.write(`no ${flags.dead ? 'dead' : 'failing'} items${name ? ` for ${name}` : ''}\n`);
      return ExitCode.ok;
    }
    const now = new Date();
    process.stdout.write(
      `${table(
        ['RECONCILER', 'KEY', 'ATTEMPTS', 'STATE', 'FIRST FAILED', 'LAST ERROR'],
        rows.map((r) => [r.reconciler, r.key, String(r.attempts), r.deadAt ? 'dead' : `retry ${when(r.nextAttemptAt, now)}`, when(r.firstFailedAt, now), oneLine(r.lastError, 100)]),
      )}\n`,
    );
    return ExitCode.ok;
  });
}

async function changeFailures(verb: 'retry' | 'clear', name: string, key: string | undefined, flags: { all?: boolean }): Promise<number> {
  if (key !== undefined && flags.all) throw new UserError(`give a key or --all, not both`);
  if (key === undefined && !flags.all) throw new UserError(`name the item: \`reconciler ${verb} ${name} <key>\`, or pass --all for every failed item of ${name}`);
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async (context) => {
    await checkName(context, name);
    const keys = await (verb === 'retry' ? retryFailures : clearFailures)(context.database.db, name, key === undefined ? { all: true } : { key });
    if (key !== undefined && keys.length === 0) {
      throw new UserError(`${name} has no failure on record for key ${JSON.stringify(key)} (see \`reconciler failures ${name}\`)`);
    }
    const them = keys.length === 1 ? 'it' : 'them';
    const runNow = `reconciler run ${name}${key !== undefined ? ` --key ${JSON.stringify(key)}` : ''}`;
    process.stdout.write(
      verb === 'retry'
        ? `${name}: ${keys.length} item(s) due now with a fresh attempt budget; the next pass retries ${them} (or run now: ${runNow})\n`
        : `${name}: ${keys.length} item(s) forgotten; any the scan still finds start over as new\n`,
    );
    return ExitCode.ok;
  });
}

export const retryCommand = (name: string, key: string | undefined, flags: { all?: boolean }) => changeFailures('retry', name, key, flags);
export const clearCommand = (name: string, key: string | undefined, flags: { all?: boolean }) => changeFailures('clear', name, key, flags);
