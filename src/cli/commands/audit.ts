/**
 * `reconciler audit [name] [--key k]`: what people did, newest first: every retry, clear and
 * manual action, from the console or the CLI, with who, when, on which items, and why.
 */
import { ExitCode } from '../../errors.js';
import { auditLog, type AuditRow } from '../../operator/views.js';
import { withContext } from '../../context.js';
import { clip, printJson, shownOf, table, when } from '../table.js';
import { checkName } from './operating.js';

/** `1 (return:16)` for one item, `3` for more. */
function items(keys: readonly string[]): string {
  return keys.length === 1 ? `1 (${keys[0]})` : String(keys.length);
}

export function auditTable(entries: readonly AuditRow[], now = new Date()): string {
  return table(
    ['WHEN', 'ACTOR', 'VIA', 'RECONCILER', 'ACTION', 'TARGET', 'ITEMS', 'NOTE', 'RESULT'],
    entries.map((e) => [when(e.at, now), e.actor, e.via, e.reconciler, e.action, e.target, items(e.keys), clip(e.note ?? '-', 40, 30), clip(e.result, 60, 30)]),
  );
}

export async function auditCommand(name: string | undefined, flags: { key?: string; limit: number; json?: boolean }): Promise<number> {
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async (context) => {
    const db = context.database.db;
    if (name !== undefined) await checkName(context, name, async () => (await auditLog(db, { reconciler: name, limit: 1 })).total > 0, 'audit records');
    const { entries, total } = await auditLog(db, { ...(name !== undefined ? { reconciler: name } : {}), ...(flags.key !== undefined ? { key: flags.key } : {}), limit: flags.limit });
    if (flags.json) {
      printJson({ entries, total });
      return ExitCode.ok;
    }
    if (entries.length === 0) {
      const what = [name, flags.key !== undefined ? `key ${JSON.stringify(flags.key)}` : undefined].filter(Boolean).join(', ');
      process.stdout.write(`no audit records${what ? ` for ${what}` : ''}: nobody has retried, cleared or acted on an item yet\n`);
      return ExitCode.ok;
    }
    process.stdout.write(`${auditTable(entries)}\n${shownOf(entries.length, total)}`);
    return ExitCode.ok;
  });
}
