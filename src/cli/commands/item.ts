/**
 * `reconciler failures <name> <key>`: one item in full. The whole error (every line: the hint
 * is often at its end), its attempts and state, its error group, the manual actions it offers,
 * and what people did to it (the audit log).
 */
import { ExitCode } from '../../errors.js';
import { itemView, type ItemView } from '../../operator/views.js';
import type { CommandContext } from '../../context.js';
import { printJson, printable, shellWord, table, when } from '../table.js';
import { auditTable } from './audit.js';
import { operatorContext } from './operating.js';

/** Exit 0 whether or not the item is failing: a key with no failure on record is an answer, not an error. */
export async function itemCommand(context: CommandContext, name: string, key: string, flags: { json?: boolean }): Promise<number> {
  const view = await itemView(operatorContext(context), name, key);
  if (flags.json) printJson({ item: view });
  else process.stdout.write(printable(describeItem(view)));
  return ExitCode.ok;
}

const indent = (text: string) => text.replace(/^/gm, '  ');

function describeItem(view: ItemView, now = new Date()): string {
  const { failure } = view;
  const key = view.key.replace(/[\n\r\t]/g, '\ufffd');
  const item = `${view.reconciler} ${shellWord(key)}`;
  const out: string[] = [];
  if (!failure) {
    out.push(`${view.reconciler} has no failure on record for key ${JSON.stringify(view.key)}: it is not failing (or it was retried or cleared, or its scan no longer finds it)`);
  } else {
    out.push(
      item,
      `  state         ${failure.deadAt ? `dead since ${when(failure.deadAt, now)}` : `in backoff, next attempt ${when(failure.nextAttemptAt, now)}`}`,
      `  attempts      ${failure.attempts}`,
      `  first failed  ${when(failure.firstFailedAt, now)}`,
      `  last failed   ${when(failure.lastFailedAt, now)}`,
      `  error group   ${failure.group} (the items with the same error: reconciler failures ${view.reconciler} --group)`,
      '  error:',
      ...failure.lastError.split('\n').map((line) => `    ${line}`),
    );
  }
  const actions = [
    ...(failure
      ? [
          [`reconciler retry ${item} [--note <why>]`, 'due now, with a fresh attempt budget'],
          [`reconciler clear ${item} [--note <why>]`, 'forget its failure; the scan finds it again as new'],
        ]
      : []),
    ...view.actions.map((a) => [`reconciler act ${item} ${a.name} --note <why>`, a.description]),
  ];
  if (actions.length > 0) out.push('', failure ? 'what you can do:' : 'manual actions:', indent(table(['COMMAND', 'WHAT IT DOES'], actions)));
  out.push('');
  out.push(view.audit.length === 0 ? 'no audit records for this item' : `audit records (reconciler audit ${view.reconciler} --key ${shellWord(key)}):`);
  if (view.audit.length > 0) out.push(indent(auditTable(view.audit, now)));
  return `${out.join('\n')}\n`;
}
