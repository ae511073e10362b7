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
    const filter = { ...(name !== undefined ? { reconciler: name } : {}), deadOnly: Boolean(flags.dead), limit: flags.limit };
    const listing = flags.group ? groupListing(await failureGroups(db, filter)) : itemListing(await failingItems(db, filter));
    if (flags.json) printJson({ passErrors: broken, ...listing.json });
    else process.stdout.write(printable(describeListing(context, broken, listing, `no ${flags.dead ? 'dead' : 'failing'} items${name ? ` for ${name}` : ''}`)));
    return ExitCode.ok;
  });
}

/** `settle-returns partition 2: pass failing since 12m00s ago (5 passes): <error>`, one line per lane whose passes end in `error`. */
export function passErrorLines(context: Pick<CommandContext, 'reconcilers'>, errors: readonly PassError[], now = new Date()): string {
  return errors
    .map((e) => `${laneLabel(context, e.reconciler, e.partition)}: pass failing since ${ago(e.failingSince, now)} (${plural(e.passes, 'pass', 'passes')}): ${clip(e.error, 100, 100)}\n`)
    .join('');
}

/** Failing items, or their groups, as `failures` prints them: a table, how many of how many, and what to do next. */
interface Listing {
  json: Record<string, unknown>;
  total: number;
  header: string[];
  rows: string[][];
  next: string;
}

function describeListing(context: CommandContext, broken: readonly PassError[], listing: Listing, none: string): string {
  const errors = passErrorLines(context, broken);
  if (listing.rows.length === 0) return `${errors}${none}\n`;
  return `${errors}${errors ? '\n' : ''}${table(listing.header, listing.rows)}\n${shownOf(listing.rows.length, listing.total)}${listing.next}\n`;
}

/** `dead <since>`, `retry <when>`, or `retry at the next pass` once its backoff is over. */
function stateOf(r: { deadAt: Date | null; nextAttemptAt: Date }, now: Date): string {
  if (r.deadAt) return `dead ${when(r.deadAt, now)}`;
  return r.nextAttemptAt > now ? `retry ${when(r.nextAttemptAt, now)}` : 'retry at the next pass';
}

function itemListing({ items, total }: Awaited<ReturnType<typeof failingItems>>, now = new Date()): Listing {
  return {
    json: { failures: items.map((r) => ({ ...r, dead: r.deadAt !== null })), total },
    total,
    header: ['RECONCILER', 'KEY', 'ATTEMPTS', 'STATE', 'FIRST FAILED', 'GROUP', 'LAST ERROR'],
    rows: items.map((r) => [r.reconciler, r.key, String(r.attempts), stateOf(r, now), when(r.firstFailedAt, now), r.group, clip(r.lastError)]),
    next: 'the whole error of an item: reconciler failures <name> <key>; the items by error: reconciler failures --group',
  };
}

function groupListing({ groups, total }: Awaited<ReturnType<typeof failureGroups>>, now = new Date()): Listing {
  return {
    json: { groups, total },
    total,
    header: ['GROUP', 'RECONCILER', 'ITEMS', 'DEAD', 'FIRST SEEN', 'LAST SEEN', 'SAMPLE KEYS', 'ERROR'],
    rows: groups.map((g) => [
      g.id, g.reconciler, String(g.count), String(g.dead), when(g.firstSeen, now), when(g.lastSeen, now),
      `${g.sampleKeys.join(', ')}${g.count > g.sampleKeys.length ? ', …' : ''}`, clip(g.error),
    ]),
    next: 'act on a group: reconciler retry <name> --group <id> (or clear), with --note <why>; one item in full: reconciler failures <name> <key>',
  };
}
