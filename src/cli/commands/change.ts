/**
 * `reconciler retry|clear <name> (<key> | --group <id> | --all) [--note <why>]`: changes to
 * failure memory, through the operator layer, each recorded in the audit log with the actor
 * `cli:<user>@<host>`. `retry` makes items due now with a fresh attempt budget; `clear`
 * forgets them (the scan finds them again as new).
 */
import { ExitCode, UserError } from '../../errors.js';
import { clearItems, cliActor, retryItems, type Target } from '../../operator/actions.js';
import { withContext } from '../../context.js';
import { printable, shellWord } from '../table.js';
import { operatorContext } from './operating.js';

export interface ChangeFlags {
  group?: string;
  all?: boolean;
  note?: string;
}

/** Exactly one of a key, `--group <id>` and `--all`. */
function targetOf(verb: 'retry' | 'clear', name: string, key: string | undefined, flags: ChangeFlags): Target {
  const given = [key !== undefined && 'a key', flags.group !== undefined && '--group', flags.all && '--all'].filter((g): g is string => Boolean(g));
  if (given.length > 1) throw new UserError(`give one target: a key, --group <id> or --all, not ${given.join(' and ')}`);
  if (key !== undefined) return { key };
  if (flags.group !== undefined) return { group: flags.group };
  if (flags.all) return { all: true };
  throw new UserError(`name the items: \`reconciler ${verb} ${name} <key>\`, \`--group <id>\` (see \`reconciler failures ${name} --group\`), or \`--all\` for every failed item of ${name}`);
}

async function changeFailures(verb: 'retry' | 'clear', name: string, key: string | undefined, flags: ChangeFlags): Promise<number> {
  const target = targetOf(verb, name, key, flags);
  if (flags.note !== undefined && flags.note.trim() === '') throw new UserError('--note is empty: say why, or leave --note out');
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async (context) => {
    const outcome = await (verb === 'retry' ? retryItems : clearItems)(operatorContext(context), cliActor(), name, target, flags.note);
    const lines = [
      outcome.result,
      ...(verb === 'retry' && outcome.keys.length > 0 ? [`or run now: reconciler run ${name}${key !== undefined ? ` --key ${shellWord(key)}` : ''}`] : []),
      ...(outcome.auditId === null ? [] : [`recorded in the audit log (entry ${outcome.auditId}): reconciler audit ${name}`]),
    ];
    process.stdout.write(printable(`${lines.join('\n')}\n`));
    return ExitCode.ok;
  });
}

export const retryCommand = (name: string, key: string | undefined, flags: ChangeFlags) => changeFailures('retry', name, key, flags);
export const clearCommand = (name: string, key: string | undefined, flags: ChangeFlags) => changeFailures('clear', name, key, flags);
