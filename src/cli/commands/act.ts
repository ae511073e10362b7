/**
 * `reconciler act <name> <key> <action> --note <why>`: runs one of a reconciler's manual
 * actions on one item (what a person decides that the reconciler cannot, e.g. "settled by
 * hand"), recorded in the audit log with the note. `reconciler act <name>` lists its actions.
 */
import { ExitCode, UserError } from '../../errors.js';
import { cliActor, runManualAction } from '../../operator/actions.js';
import { didYouMean } from '../../suggest.js';
import { formatLoadError } from '../../engine/load.js';
import { withContext, type CommandContext } from '../../context.js';
import type { Reconciler } from '../../reconciler.js';
import { printable, shellWord, table } from '../table.js';
import { checkName, operatorContext } from './operating.js';

const DOCS = 'docs/writing-reconcilers.md, "Manual actions"';

/** The loaded reconciler `name`: a manual action runs its code, so a job file that did not load cannot act. */
async function loaded(context: CommandContext, name: string): Promise<Reconciler> {
  const reconciler = context.reconcilers.find((r) => r.name === name);
  if (reconciler) return reconciler;
  const broken = context.loadErrors.find((e) => e.name === name);
  if (broken) throw new UserError(`${name} did not load, so its manual actions cannot run: ${formatLoadError(broken)}`);
  await checkName(context, name, async () => false);
  throw new UserError(`unknown reconciler \`${name}\``);
}

const noActions = (reconciler: Reconciler) => `${reconciler.name} declares no manual actions (to add one: ${DOCS})`;

function listActions(reconciler: Reconciler): string {
  const actions = Object.entries(reconciler.actions);
  if (actions.length === 0) return `${noActions(reconciler)}\n`;
  return `${table(['ACTION', 'DESCRIPTION'], actions.map(([name, a]) => [name, a.description]))}\nrun one: reconciler act ${reconciler.name} <key> <action> --note <why>\n`;
}

function checkAction(reconciler: Reconciler, action: string): void {
  const names = Object.keys(reconciler.actions);
  if (names.includes(action)) return;
  throw new UserError(`${reconciler.name} has no manual action \`${action}\`${didYouMean(action, names) || ` (its actions: ${names.join(', ')})`}`);
}

export async function actCommand(name: string, key: string | undefined, action: string | undefined, flags: { note?: string }): Promise<number> {
  if (key !== undefined && action !== undefined && (flags.note === undefined || flags.note.trim() === '')) {
    throw new UserError(`--note is required: say why, e.g. \`reconciler act ${name} ${shellWord(key)} ${shellWord(action)} --note "refunded by phone, ticket 4411"\``);
  }
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async (context) => {
    const reconciler = await loaded(context, name);
    if (key === undefined) {
      process.stdout.write(printable(listActions(reconciler)));
      return ExitCode.ok;
    }
    const names = Object.keys(reconciler.actions);
    if (names.length === 0) throw new UserError(noActions(reconciler));
    if (action === undefined) throw new UserError(`name the action: \`reconciler act ${name} ${shellWord(key)} <action> --note <why>\` (its actions: ${names.join(', ')})`);
    checkAction(reconciler, action);
    const outcome = await runManualAction(operatorContext(context), cliActor(), name, key, action, flags.note!);
    process.stdout.write(printable(`${name} ${key}: ${outcome.result}\nrecorded in the audit log (entry ${outcome.auditId}): reconciler audit ${name} --key ${shellWord(key)}\n`));
    return ExitCode.ok;
  });
}
