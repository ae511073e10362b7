/**
 * `reconciler act <name> <key> <action> --note <why>`: runs one of a reconciler's manual
 * actions on one item (what a person decides that the reconciler cannot, e.g. "settled by
 * hand"), recorded in the audit log with the note. `reconciler act <name>` lists its actions.
 * The checks (unknown reconciler or action, a refusal) are the operator layer's
 * (src/operator/actions.ts): the console says the same.
 */
import { ExitCode, UserError } from '../../errors.js';
import { cliActor, runManualAction } from '../../operator/actions.js';
import { actionsOf } from '../../operator/context.js';
import { formatLoadError } from '../../engine/load.js';
import { withContext, type CommandContext } from '../../context.js';
import { printable, shellWord, table } from '../table.js';
import { checkName, operatorContext } from './operating.js';

function listActions(context: CommandContext, name: string): string {
  const actions = actionsOf(operatorContext(context), name);
  if (actions.length === 0) return `${name} declares no manual actions (to add one: docs/writing-reconcilers.md, "Manual actions")\n`;
  return `${table(['ACTION', 'DESCRIPTION'], actions.map((a) => [a.name, a.description]))}\nrun one: reconciler act ${name} <key> <action> --note <why>\n`;
}

export async function actCommand(name: string, key: string | undefined, action: string | undefined, flags: { note?: string }): Promise<number> {
  if (key !== undefined && action === undefined) throw new UserError(`name the action: \`reconciler act ${name} ${shellWord(key)} <action> --note <why>\` (\`reconciler act ${name}\` lists them)`);
  if (action !== undefined && (flags.note === undefined || flags.note.trim() === '')) {
    throw new UserError(`--note is required: say why, e.g. \`reconciler act ${name} ${shellWord(key!)} ${shellWord(action)} --note "refunded by phone, ticket 4411"\``);
  }
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async (context) => {
    if (key === undefined || action === undefined) {
      const broken = context.loadErrors.find((e) => e.name === name);
      if (broken) throw new UserError(`${name} did not load: its manual actions are unavailable until its job file loads: ${formatLoadError(broken)}`);
      await checkName(context, name, async () => false);
      process.stdout.write(printable(listActions(context, name)));
      return ExitCode.ok;
    }
    const outcome = await runManualAction(operatorContext(context), cliActor(), name, key, action, flags.note!);
    process.stdout.write(printable(`${name} ${key}: ${outcome.result}\nrecorded in the audit log (entry ${outcome.auditId}): reconciler audit ${name} --key ${shellWord(key)}\n`));
    return ExitCode.ok;
  });
}
