/**
 * `reconciler failures`: what is failing. Passes whose scan throws come first (no item shows
 * them), then the failing and dead items, or their error groups under `--group`. With a key,
 * one item in full: see item.ts.
 */
import { ExitCode } from '../../errors.js';
import { failingItems, failureGroups, passErrors, type PassError } from '../../operator/views.js';
import { withContext, type CommandContext } from '../../context.js';
import { ago, clip, plural, printJson, printable, shownOf, table, when } from '../table.js';
import { checkName, laneLabel } from './operating.js';
import { itemCommand } from './item.js';

export interface FailuresFlags {
  dead?: boolean;
  group?: boolean;
  limit: number;
  json?: boolean;
}

export async function failuresCommand(name: string | undefined, key: string | undefined, flags: FailuresFlags): Promise<number> {
  return withContext({ jobs: true, defaultLogLevel: 'warn' }, async (context) => {
    const db = context.database.db;
    if (name !== undefined) await checkName(context, name, async () => (await failingItems(db, { reconciler: name, limit: 1 })).total > 0);
    if (name !== undefined && key !== undefined) return itemCommand(context, name, key, flags);
    const broken = await passErrors(db, name);
    if (flags.group) await printGroups(context, name, broken, flags);
    else await printItems(context, name, broken, flags);
    return ExitCode.ok;
  });
}

/** `settle-returns partition 2: pass failing since 12m00s ago (5 passes): <error>`, one line per lane whose passes end in `error`. */
export function passErrorLines(context: Pick<CommandContext, 'reconcilers'>, errors: readonly PassError[], now = new Date()): string {
  return errors
    .map((e) => `${laneLabel(context, e.reconciler, e.partition)}: pass failing since ${ago(e.failingSince, now)} (${plural(e.passes, 'pass', 'passes')}): ${printable(clip(e.error, 100, 100))}\n`)
    .join('');
}

async function printItems(context: CommandContext, name: string | undefined, broken: PassError[], flags: FailuresFlags): Promise<void> {
  const { items, total } = await failingItems(context.database.db, { ...(name !== undefined ? { reconciler: name } : {}), deadOnly: Boolean(flags.dead), limit: flags.limit });
  if (flags.json) {
    printJson({ passErrors: broken, failures: items.map((r) => ({ ...r, dead: r.deadAt !== null })), total });
    return;
  }
  const now = new Date();
  process.stdout.write(passErrorLines(context, broken, now));
  if (items.length === 0) {
    process.stdout.write(`no ${flags.dead ? 'dead' : 'failing'} items${name ? ` for ${name}` : ''}\n`);
    return;
  }
  if (broken.length > 0) process.stdout.write('\n');
  const rows = items.map((r) => [r.reconciler, r.key, String(r.attempts), r.deadAt ? `dead ${when(r.deadAt, now)}` : `retry ${when(r.nextAttemptAt, now)}`, when(r.firstFailedAt, now), r.group, clip(r.lastError)]);
  process.stdout.write(`${table(['RECONCILER', 'KEY', 'ATTEMPTS', 'STATE', 'FIRST FAILED', 'GROUP', 'LAST ERROR'], rows)}\n`);
  process.stdout.write(shownOf(items.length, total));
  process.stdout.write('the whole error of an item: reconciler failures <name> <key>; the items by error: reconciler failures --group\n');
}

async function printGroups(context: CommandContext, name: string | undefined, broken: PassError[], flags: FailuresFlags): Promise<void> {
  const { groups, total } = await failureGroups(context.database.db, { ...(name !== undefined ? { reconciler: name } : {}), deadOnly: Boolean(flags.dead), limit: flags.limit });
  if (flags.json) {
    printJson({ passErrors: broken, groups, total });
    return;
  }
  const now = new Date();
  process.stdout.write(passErrorLines(context, broken, now));
  if (groups.length === 0) {
    process.stdout.write(`no ${flags.dead ? 'dead' : 'failing'} items${name ? ` for ${name}` : ''}\n`);
    return;
  }
  if (broken.length > 0) process.stdout.write('\n');
  const rows = groups.map((g) => [
    g.id, g.reconciler, String(g.count), String(g.dead), when(g.firstSeen, now), when(g.lastSeen, now),
    `${g.sampleKeys.slice(0, 3).join(', ')}${g.count > 3 ? ', …' : ''}`, clip(g.error),
  ]);
  process.stdout.write(`${table(['GROUP', 'RECONCILER', 'ITEMS', 'DEAD', 'FIRST SEEN', 'LAST SEEN', 'SAMPLE KEYS', 'ERROR'], rows)}\n`);
  process.stdout.write(shownOf(groups.length, total));
  process.stdout.write('act on a group: reconciler retry <name> --group <id> (or clear), with --note <why>; one item in full: reconciler failures <name> <key>\n');
}
