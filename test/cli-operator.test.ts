/**
 * The operator's commands, run as a person runs them: a real child process per command against
 * a real PostgreSQL. `failures` (items, groups, one item in full, passes whose scan throws),
 * `retry`/`clear` by key, group or all, `act`, `audit`, and the columns and filters `list` and
 * `history` gained; bad input gives one line and exit 2; every change is in the audit log.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hostname, userInfo } from 'node:os';
import { sql } from 'drizzle-orm';
import { useTestDatabase } from './helpers/db.js';
import { API, jobsDir, tableJob, tableSql, type JobsDir } from './helpers/jobs.js';
import { runCli, type CliResult } from './helpers/processes.js';

const t = useTestDatabase();
const folders: JobsDir[] = [];
afterEach(() => {
  for (const f of folders.splice(0)) f.cleanup();
});
beforeEach(async () => {
  await t.rows(sql`TRUNCATE reconciler.runs, reconciler.failures, reconciler.state, reconciler.audit`);
  await t.rows(sql`DROP TABLE IF EXISTS items`);
  await t.rows(sql.raw(tableSql(6)));
});

const ACTOR = `cli:${userInfo().username}@${hostname()}`;

/** `items` can be marked done by hand; the action refuses item-3. */
const ACTIONS = `
  actions: {
    'mark-done': {
      description: 'marks the item done by hand',
      run: async (key, ctx) => {
        if (key === 'item-3') throw new Error('item-3 is locked by the warehouse');
        if (key === 'item-4') throw new Error('item-4 is \\u001b[31mred\\u001b[0m');
        await ctx.db.execute(sql\`UPDATE items SET done = true WHERE name = \${key}\`);
        return 'marked ' + key + ' done by hand';
      },
    },
  },`;

/** A job whose scan throws: its passes end in `error`, and no item shows it. */
const BROKEN_SCAN = `
import { defineReconciler } from ${JSON.stringify(API)};
export default defineReconciler({
  schedule: '0 0 1 1 *',
  scan: async () => { throw new Error('relation "orders" does not exist: run the migrations'); },
  key: (item) => String(item),
  reconcile: () => 'changed',
});
`;

function env(files: Record<string, string>): Record<string, string> {
  const folder = jobsDir(files);
  folders.push(folder);
  return { DATABASE_URL: t.url, JOBS_DIR: folder.dir };
}

const itemsEnv = (options: Parameters<typeof tableJob>[0] = {}) => env({ 'items.ts': tableJob({ extra: ACTIONS, ...options }) });
const lines = (text: string) => text.split('\n').filter((line) => line.trim() !== '');

/** Failure rows as the engine writes them: `[key, error, dead]`. */
async function failing(rows: [string, string, boolean][], reconciler = 'items'): Promise<void> {
  for (const [key, error, dead] of rows) {
    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at)
                     VALUES (${reconciler}, ${key}, ${dead ? 10 : 2}, ${error}, now() + interval '1 hour', ${dead ? sql`now()` : null})`);
  }
}

/**
 * History as the engine writes it when a scan throws: `orders` succeeded once, then broke twice
 * (its job file's scan throws the same error); `items` failed on item-1, which is in failure memory.
 */
async function brokenPasses(): Promise<void> {
  const error = 'relation "orders" does not exist: run the migrations';
  await t.rows(sql`INSERT INTO reconciler.runs (reconciler, trigger, status, started_at, host, pid, error, complete) VALUES
    ('orders', 'schedule', 'succeeded', now() - interval '20 minutes', 'host', 1, NULL, true),
    ('orders', 'schedule', 'error', now() - interval '15 minutes', 'host', 1, ${error}, false),
    ('orders', 'schedule', 'error', now() - interval '10 minutes', 'host', 1, ${error}, false),
    ('items', 'schedule', 'failed', now() - interval '10 minutes', 'host', 1, NULL, true)`);
  await t.rows(sql`INSERT INTO reconciler.state (reconciler, last_started_at, last_status) VALUES
    ('orders', now() - interval '10 minutes', 'error'), ('items', now() - interval '10 minutes', 'failed')`);
  await failing([['item-1', 'cannot reconcile item-1', false]]);
}

async function ok(args: string[], environment: Record<string, string>): Promise<string> {
  const result = await runCli(args, environment);
  expect(result.code, `${args.join(' ')}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(0);
  expect(result.stderr, args.join(' ')).toBe('');
  return result.stdout;
}

/** A mistake a person can fix: exit 2, one line on stderr, no stack trace, nothing on stdout. */
function expectOneLineError(result: CliResult, pattern: RegExp): void {
  expect(result.code, `stdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(2);
  expect(lines(result.stderr), result.stderr).toHaveLength(1);
  expect(lines(result.stderr)[0]).toMatch(pattern);
  expect(result.stdout).toBe('');
}

const auditRows = () =>
  t.rows<{ actor: string; via: string; action: string; target: string; keys: string[]; note: string | null }>(
    sql`SELECT actor, via, action, target, keys, note FROM reconciler.audit ORDER BY id`,
  );

const LONG = `provider timeout after 30s while settling: ${'upstream said nothing useful; '.repeat(8)}hint: raise PROVIDER_TIMEOUT or check the provider's status page`;

describe('reconciler failures', () => {
  it('shows both ends of a long error, each item\'s group, and says how many of how many it shows', async () => {
    const e = itemsEnv();
    await failing([['item-1', LONG, false], ['item-2', LONG, false], ['item-4', 'card declined', true], ['item-5', 'card declined', true], ['item-6', 'card declined', false]]);
    const out = await ok(['failures', '--limit', '3'], e);
    const [header, ...rest] = lines(out);
    expect(header).toMatch(/^RECONCILER\s+KEY\s+ATTEMPTS\s+STATE\s+FIRST FAILED\s+GROUP\s+LAST ERROR$/);
    expect(rest.filter((l) => /^items\s/.test(l))).toHaveLength(3);
    expect(out).toContain("check the provider's status page");
    expect(out).toContain('provider timeout after 30s');
    expect(out).toMatch(/^items\s+item-1\s+2\s+retry .*\s[0-9a-f]{10}\s+provider timeout/m);
    expect(out).toContain('3 of 5 shown (--limit 5 to see all)');
    expect(out).toContain('reconciler failures <name> <key>');

    const json = JSON.parse(await ok(['failures', '--limit', '3', '--json'], e)) as { failures: { key: string; group: string; dead: boolean }[]; total: number };
    expect(json.total).toBe(5);
    expect(json.failures).toHaveLength(3);
    expect(json.failures[0]!.group).toMatch(/^[0-9a-f]{10}$/);

    const all = await ok(['failures'], e);
    expect(all).not.toMatch(/ of \d+ shown/);
    expect(lines(await ok(['failures', '--dead'], e)).filter((l) => /^items\s/.test(l)).map((l) => l.split(/\s+/)[1])).toEqual(['item-4', 'item-5']);
  });

  it('groups items by error, and says how to act on a group', async () => {
    const e = itemsEnv();
    await failing([['item-1', LONG, false], ['item-2', LONG, false], ['item-4', 'card declined', true], ['item-5', 'card declined', true], ['item-6', 'card declined', false]]);
    const out = await ok(['failures', '--group'], e);
    const [header, ...rest] = lines(out);
    expect(header).toMatch(/^GROUP\s+RECONCILER\s+ITEMS\s+DEAD\s+FIRST SEEN\s+LAST SEEN\s+SAMPLE KEYS\s+ERROR$/);
    expect(rest.find((l) => l.includes('card declined'))).toMatch(/^[0-9a-f]{10}\s+items\s+3\s+2\s/);
    expect(rest.find((l) => l.includes('provider timeout'))).toMatch(/^[0-9a-f]{10}\s+items\s+2\s+0\s.*item-[12], item-[12]\s/);
    expect(out).toContain('reconciler retry <name> --group <id>');

    const json = JSON.parse(await ok(['failures', 'items', '--group', '--json', '--limit', '1'], e)) as { groups: { id: string; count: number }[]; total: number };
    expect(json.total).toBe(2);
    expect(json.groups).toHaveLength(1);
    expect(await ok(['failures', '--group', '--limit', '1'], e)).toContain('1 of 2 shown (--limit 2 to see all)');
  });

  it('shows one item in full: every line of its error, its group, its actions and its audit records', async () => {
    const e = itemsEnv();
    await failing([['item-2', `first line\nsecond line\n${LONG}`, true]]);
    expect(await ok(['retry', 'items', 'item-2', '--note', 'provider is back'], e)).toContain('reconciler audit items');
    await t.rows(sql`UPDATE reconciler.failures SET dead_at = now()`);
    const out = await ok(['failures', 'items', 'item-2'], e);
    expect(out).toContain('    first line\n    second line\n');
    expect(out).toContain(LONG);
    expect(out).toMatch(/state\s+dead since/);
    expect(out).toMatch(/error group\s+[0-9a-f]{10}/);
    expect(out).toContain('reconciler act items item-2 mark-done --note <why>');
    expect(out).toContain('marks the item done by hand');
    expect(out).toMatch(new RegExp(`${ACTOR.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s+cli\\s+items\\s+retry\\s+key item-2\\s+1 \\(item-2\\)\\s+provider is back`));

    const json = JSON.parse(await ok(['failures', 'items', 'item-2', '--json'], e)) as { item: { failure: { lastError: string }; audit: unknown[]; actions: { name: string }[] } };
    expect(json.item.failure.lastError).toBe(`first line\nsecond line\n${LONG}`);
    expect(json.item.audit).toHaveLength(1);
    expect(json.item.actions.map((a) => a.name)).toEqual(['mark-done']);
  });

  it('says plainly when a key has no failure on record, and exits 0', async () => {
    const e = itemsEnv();
    const out = await ok(['failures', 'items', 'item-9'], e);
    expect(out).toMatch(/^items has no failure on record for key "item-9"/);
  });

  it('lists the passes whose scan throws above the items', async () => {
    const e = env({ 'items.ts': tableJob(), 'orders.ts': BROKEN_SCAN });
    await brokenPasses();
    const out = await ok(['failures'], e);
    const [first, ...rest] = lines(out);
    expect(first).toMatch(/^orders: pass failing since .+ ago \(2 passes\): relation "orders" does not exist: run the migrations$/);
    expect(rest.join('\n')).toMatch(/^items\s+item-1\s/m);
    const json = JSON.parse(await ok(['failures', '--json'], e)) as { passErrors: { reconciler: string; passes: number }[] };
    expect(json.passErrors).toEqual([expect.objectContaining({ reconciler: 'orders', passes: 2 })]);
  });

  it('never lets a key or an error steer the terminal', async () => {
    const e = itemsEnv();
    await failing([['item-\u001b[2Jevil', 'boom \u001b]0;owned\u0007 \u202eevil', false]]);
    for (const args of [['failures'], ['failures', '--group'], ['failures', 'items', 'item-\u001b[2Jevil']]) {
      const out = await ok(args, e);
      expect(out, args.join(' ')).not.toMatch(/[\u001b\u0007\u202e]/);
      expect(out).toContain('evil');
    }
  });
});

describe('reconciler list', () => {
  it('shows since when the passes of a reconciler end in error', async () => {
    const e = env({ 'items.ts': tableJob(), 'orders.ts': BROKEN_SCAN });
    await brokenPasses();
    const list = await ok(['list'], e);
    expect(lines(list)[0]).toMatch(/\sLAST PASS\s+FAILING SINCE\s+RUNNING ON\s/);
    expect(list).toMatch(/^orders\s.*error .* ago\)\s+\S+ ago \(2 passes\)\s/m);
    expect(list).toMatch(/^items\s.*failed .* ago\)\s+-\s/m);
    const listed = JSON.parse(await ok(['list', '--json'], e)) as { reconcilers: { name: string; failingSince: string | null }[] };
    expect(listed.reconcilers.find((r) => r.name === 'orders')!.failingSince).toEqual(expect.any(String));
    expect(listed.reconcilers.find((r) => r.name === 'items')!.failingSince).toBeNull();
  });
});

describe('reconciler retry and clear', () => {
  it('retries one error group, clears all, and records both in the audit log with the CLI actor', async () => {
    const e = itemsEnv();
    await failing([['item-1', LONG, true], ['item-2', LONG, true], ['item-4', 'card declined', true]]);
    const { groups } = JSON.parse(await ok(['failures', 'items', '--group', '--json'], e)) as { groups: { id: string; error: string }[] };
    const timeout = groups.find((g) => g.error.includes('provider timeout'))!.id;

    const retried = await ok(['retry', 'items', '--group', timeout, '--note', 'provider is back'], e);
    expect(retried).toMatch(/^2 item\(s\) of items due now with a fresh attempt budget/);
    expect(retried).toContain('reconciler audit items');
    expect(await t.rows(sql`SELECT key, dead_at IS NULL AS alive FROM reconciler.failures ORDER BY key`)).toEqual([
      { key: 'item-1', alive: true }, { key: 'item-2', alive: true }, { key: 'item-4', alive: false },
    ]);
    expect(await ok(['clear', 'items', '--all'], e)).toMatch(/^3 item\(s\) of items forgotten/);
    expect(await t.rows(sql`SELECT key FROM reconciler.failures`)).toEqual([]);
    expect(await auditRows()).toEqual([
      { actor: ACTOR, via: 'cli', action: 'retry', target: `group ${timeout}`, keys: ['item-1', 'item-2'], note: 'provider is back' },
      { actor: ACTOR, via: 'cli', action: 'clear', target: 'all', keys: ['item-1', 'item-2', 'item-4'], note: null },
    ]);
  });

  it('refuses two targets and no target with one line and exit 2', async () => {
    const e = itemsEnv();
    await failing([['item-1', 'card declined', false]]);
    expectOneLineError(await runCli(['retry', 'items', 'item-1', '--all'], e), /^reconciler: give one target: a key, --group <id> or --all, not a key and --all$/);
    expectOneLineError(await runCli(['clear', 'items', '--group', 'abcdef0123', '--all'], e), /not --group and --all/);
    expectOneLineError(await runCli(['retry', 'items'], e), /--group <id>.*--all/);
    expect(await auditRows()).toEqual([]);
  });

  it('refuses an unknown group and an empty note with one line and exit 2, changing nothing', async () => {
    const e = itemsEnv();
    await failing([['item-1', 'card declined', false]]);
    expectOneLineError(await runCli(['retry', 'items', '--group', '0000000000'], e), /items has no failing item for error group 0000000000/);
    expectOneLineError(await runCli(['clear', 'items', 'item-1', '--note', ' '], e), /--note is empty/);
    expect(await auditRows()).toEqual([]);
    expect(await t.rows(sql`SELECT key FROM reconciler.failures`)).toEqual([{ key: 'item-1' }]);
  });
});

describe('reconciler act', () => {
  it("runs a manual action with a note, and records it where `audit` and the item's view show it", async () => {
    const e = itemsEnv();
    await failing([['item-2', 'card declined', true]]);
    const out = await ok(['act', 'items', 'item-2', 'mark-done', '--note', 'refunded by phone, ticket 4411'], e);
    expect(out).toMatch(/^items item-2: marked item-2 done by hand$/m);
    expect(out).toContain('reconciler audit items --key item-2');
    expect(await t.rows(sql`SELECT name FROM items WHERE done`)).toEqual([{ name: 'item-2' }]);
    expect(await auditRows()).toEqual([
      { actor: ACTOR, via: 'cli', action: 'act:mark-done', target: 'key item-2', keys: ['item-2'], note: 'refunded by phone, ticket 4411' },
    ]);

    const audit = await ok(['audit'], e);
    const [header, row] = lines(audit);
    expect(header).toMatch(/^WHEN\s+ACTOR\s+VIA\s+RECONCILER\s+ACTION\s+TARGET\s+ITEMS\s+NOTE\s+RESULT$/);
    expect(row).toContain(ACTOR);
    expect(row).toMatch(/\scli\s+items\s+act:mark-done\s+key item-2\s+1 \(item-2\)\s+refunded by phone, ticket 4411\s+marked item-2 done by hand$/);
    expect(await ok(['failures', 'items', 'item-2'], e)).toContain('act:mark-done');
  });

  it('lists the actions of a reconciler, or says it declares none', async () => {
    const e = env({ 'items.ts': tableJob({ extra: ACTIONS }), 'plain.ts': tableJob() });
    expect(lines(await ok(['act', 'items'], e))).toEqual([
      expect.stringMatching(/^ACTION\s+DESCRIPTION$/),
      expect.stringMatching(/^mark-done\s+marks the item done by hand$/),
      'run one: reconciler act items <key> <action> --note <why>',
    ]);
    expect(await ok(['act', 'plain'], e)).toMatch(/^plain declares no manual actions \(to add one: docs\/writing-reconcilers\.md, "Manual actions"\)$/m);
  });

  it('refuses a missing note, an unknown action and a refusal of the action with one line and exit 2, recording nothing', async () => {
    const e = itemsEnv();
    await failing([['item-2', 'card declined', true], ['item-3', 'card declined', true]]);
    expectOneLineError(await runCli(['act', 'items', 'item-2', 'mark-done'], e), /--note is required/);
    expectOneLineError(await runCli(['act', 'items', 'item-2', 'mark-dne', '--note', 'x'], e), /no manual action `mark-dne`, did you mean `mark-done`\?/);
    expectOneLineError(await runCli(['act', 'itms', 'item-2', 'mark-done', '--note', 'x'], e), /unknown reconciler `itms`, did you mean `items`\?/);
    expectOneLineError(await runCli(['act', 'items', 'item-3', 'mark-done', '--note', 'x'], e), /item-3 is locked by the warehouse/);
    expectOneLineError(await runCli(['act', 'items', 'item-4', 'mark-done', '--note', 'x'], e), /^reconciler: items mark-done item-4: item-4 is \ufffd\[31mred\ufffd\[0m$/);
    expect(await auditRows()).toEqual([]);
    expect(await t.rows(sql`SELECT name FROM items WHERE done`)).toEqual([]);
  });
});

describe('reconciler audit', () => {
  /** Three records, oldest first, as retry and clear write them (their writing is tested above). */
  async function threeRecords(): Promise<void> {
    for (const [key, action, note] of [['item-1', 'retry', 'first'], ['item-2', 'retry', 'second'], ['item-1', 'clear', 'third']] as const) {
      await t.rows(sql`INSERT INTO reconciler.audit (actor, via, reconciler, action, target, keys, note, result)
                       VALUES (${ACTOR}, 'cli', 'items', ${action}, ${`key ${key}`}, ${`{${key}}`}::text[], ${note}, ${`1 item(s) of items: ${action}`})`);
    }
  }
  const notes = (out: string) => lines(out).slice(1).filter((l) => !/ shown /.test(l)).map((l) => /\s(first|second|third)\s/.exec(l)?.[1]);

  it('shows the newest first, filters by reconciler and key', async () => {
    const e = itemsEnv();
    await threeRecords();
    expect(notes(await ok(['audit'], e))).toEqual(['third', 'second', 'first']);
    expect(notes(await ok(['audit', 'items', '--key', 'item-1'], e))).toEqual(['third', 'first']);
    expect(await ok(['audit', 'items', '--key', 'item-9'], e)).toMatch(/^no audit records for items, key "item-9"/);
  });

  it('says how many of how many it shows, and refuses an unknown reconciler', async () => {
    const e = itemsEnv();
    await threeRecords();
    const limited = await ok(['audit', '--limit', '1'], e);
    expect(notes(limited)).toEqual(['third']);
    expect(limited).toContain('1 of 3 shown (--limit 3 to see all)');
    const json = JSON.parse(await ok(['audit', '--json', '--limit', '2'], e)) as { entries: { note: string; actor: string }[]; total: number };
    expect(json).toMatchObject({ total: 3, entries: [{ note: 'third', actor: ACTOR }, { note: 'second' }] });
    expectOneLineError(await runCli(['audit', 'itms'], e), /unknown reconciler `itms`, did you mean `items`\?/);
  });
});

describe('reconciler history', () => {
  const historyEnv = () => env({ 'items.ts': tableJob(), 'parts.ts': tableJob({ partitions: 2 }) });
  /** Passes as the engine records them: `items` (unpartitioned) failed, then both partitions of `parts` succeeded. */
  async function passes(): Promise<void> {
    await t.rows(sql`INSERT INTO reconciler.runs (reconciler, partition, trigger, status, host, pid, complete) VALUES
      ('items', 0, 'manual', 'failed', 'host', 1, true), ('parts', 0, 'manual', 'succeeded', 'host', 1, true), ('parts', 1, 'manual', 'succeeded', 'host', 1, true)`);
  }
  const columns = (out: string) => lines(out).slice(1).filter((l) => !/ shown /.test(l)).map((r) => r.split(/\s+/).slice(1, 3));

  it('has a partition column, and says how many of how many it shows', async () => {
    const e = historyEnv();
    await passes();
    const out = await ok(['history'], e);
    expect(lines(out)[0]).toMatch(/^RUN\s+RECONCILER\s+PARTITION\s+TRIGGER\s+STATUS\s/);
    expect(columns(out)).toEqual([['parts', '1'], ['parts', '0'], ['items', '-']]);
    expect(out).not.toMatch(/ shown /);
    const limited = await ok(['history', '--limit', '1'], e);
    expect(columns(limited)).toEqual([['parts', '1']]);
    expect(limited).toContain('1 of 3 shown (--limit 3 to see all)');
    expect((JSON.parse(await ok(['history', '--json', '--limit', '1'], e)) as { total: number }).total).toBe(3);
  });

  it('filters by status, trigger and partition', async () => {
    const e = historyEnv();
    await passes();
    expect(columns(await ok(['history', '--partition', '1'], e))).toEqual([['parts', '1']]);
    expect(columns(await ok(['history', '--status', 'failed'], e))).toEqual([['items', '-']]);
    expect(lines(await ok(['history', '--trigger', 'schedule'], e))).toEqual(['no passes recorded that match']);
  });

  it('refuses an unknown status or trigger, and a partition the reconciler does not have, with one line and exit 2', async () => {
    const e = historyEnv();
    expectOneLineError(await runCli(['history', '--status', 'broken'], e), /^reconciler: unknown --status `broken` \(one of: running, succeeded, failed, error, aborted, abandoned\)$/);
    expectOneLineError(await runCli(['history', '--trigger', 'cron'], e), /one of: schedule, manual, startup, retry, wake, handover, handback/);
    expectOneLineError(await runCli(['history', 'parts', '--partition', '2'], e), /parts has partitions 0 to 1, not 2/);
  });
});
