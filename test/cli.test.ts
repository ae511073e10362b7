/**
 * The `reconciler` command line, run as a user runs it: a real child process per command,
 * against a real PostgreSQL (or the embedded PGlite default), with job files in a folder.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { createEmptyDatabase, createTestDatabase, databaseUrl, dropDatabase, type TestDatabase } from './helpers/db.js';
import { API, REPO_ROOT, jobsDir, tableJob, tableSql, type JobsDir } from './helpers/jobs.js';
import { runCli, startProcess, type CliResult, type RunningProcess } from './helpers/processes.js';

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => {
  await t.drop();
});

/** Job folders and processes made by a test, removed after it. */
const folders: JobsDir[] = [];
const processes: RunningProcess[] = [];
afterEach(async () => {
  for (const p of processes.splice(0)) await p.kill();
  for (const f of folders.splice(0)) f.cleanup();
});

function jobs(files: Record<string, string>): JobsDir {
  const folder = jobsDir(files);
  folders.push(folder);
  return folder;
}

/** A fresh `items` table with `count` rows and an empty engine state. */
async function resetItems(count: number): Promise<void> {
  await t.rows(sql`DROP TABLE IF EXISTS items`);
  await t.rows(sql.raw(tableSql(count)));
  await t.rows(sql`TRUNCATE reconciler.runs, reconciler.failures, reconciler.state`);
}

/** `items.ts` over a fresh table of `count` rows, and the env to run the CLI against it. */
async function itemsJob(count: number, options: Parameters<typeof tableJob>[0] = {}): Promise<{ folder: JobsDir; env: Record<string, string> }> {
  await resetItems(count);
  const folder = jobs({ 'items.ts': tableJob(options) });
  return { folder, env: { DATABASE_URL: t.url, JOBS_DIR: folder.dir } };
}

const lines = (text: string) => text.split('\n').filter((line) => line.trim() !== '');
const doneItems = async () => (await t.rows<{ name: string }>(sql`SELECT name FROM items WHERE done ORDER BY id`)).map((r) => r.name);

/** An error a person can fix: exit 2, one line on stderr, no stack trace. */
function expectOneLineError(result: CliResult, pattern?: string | RegExp): string {
  expect(result.code, `stdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(2);
  const errorLines = lines(result.stderr);
  expect(errorLines, result.stderr).toHaveLength(1);
  expect(result.stderr).not.toMatch(/^\s{4}at /m);
  if (pattern !== undefined) expect(errorLines[0]).toMatch(pattern);
  return errorLines[0]!;
}

/** A job whose scan yields three fixed items and needs no table. */
const FIXED_JOB = `
import { defineReconciler } from ${JSON.stringify(API)};
export default defineReconciler({
  schedule: '0 0 1 1 *',
  scan: async function* () {
    for (const n of [1, 2, 3]) yield { n };
  },
  key: (item) => 'fixed-' + item.n,
  reconcile: () => 'changed',
});
`;

describe('reconciler run', () => {
  it('reconciles every item, prints a summary line and exits 0', async () => {
    const { env } = await itemsJob(5);
    const result = await runCli(['run', 'items'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^items: pass \d+ succeeded in .+: 5 found, 5 changed, 0 unchanged, 0 skipped, 0 failed, 0 deferred, 0 dead$/m);
    expect(await doneItems()).toEqual(['item-1', 'item-2', 'item-3', 'item-4', 'item-5']);
  });

  it('exits 1 when items fail, and failures and history show them', async () => {
    const { env } = await itemsJob(3, { failKeys: ['item-2'] });
    const run = await runCli(['run', 'items'], env);
    expect(run.code, run.stderr).toBe(1);
    expect(run.stdout).toMatch(/items: pass \d+ failed in .+: 3 found, 2 changed, 0 unchanged, 0 skipped, 1 failed/);

    const failures = await runCli(['failures'], env);
    expect(failures.code, failures.stderr).toBe(0);
    const row = lines(failures.stdout).find((line) => line.includes('item-2'));
    expect(row, failures.stdout).toBeDefined();
    expect(row).toMatch(/^items\s+item-2\s+1\s+retry .*cannot reconcile item-2$/);
    expect(failures.stdout).not.toMatch(/item-1|item-3/);

    const json = await runCli(['failures', '--json'], env);
    expect(json.code, json.stderr).toBe(0);
    const parsed = JSON.parse(json.stdout) as { failures: { reconciler: string; key: string; attempts: number; lastError: string; dead: boolean }[] };
    expect(parsed.failures).toEqual([expect.objectContaining({ reconciler: 'items', key: 'item-2', attempts: 1, lastError: 'cannot reconcile item-2', dead: false })]);

    const history = await runCli(['history'], env);
    expect(history.code, history.stderr).toBe(0);
    const [header, pass, ...rest] = lines(history.stdout);
    expect(header).toMatch(/^RUN\s+RECONCILER\s+PARTITION\s+TRIGGER\s+STATUS/);
    expect(pass).toMatch(/^\d+\s+items\s+-\s+manual\s+failed\s/);
    expect(rest).toEqual([]);
  });

  it('writes nothing under --dry-run, and prints one line per item and the summary', async () => {
    const { env } = await itemsJob(3);
    const result = await runCli(['run', 'items', '--dry-run'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(lines(result.stdout)).toEqual([
      'would be changed    item-1  would mark item-1',
      'would be changed    item-2  would mark item-2',
      'would be changed    item-3  would mark item-3',
      expect.stringMatching(/^items: dry run succeeded in .+: 3 found, 3 changed, 0 unchanged, 0 skipped, 0 failed, 0 deferred, 0 dead$/),
    ]);
    expect(await t.rows(sql`SELECT * FROM reconciler.runs`)).toEqual([]);
    expect(await t.rows(sql`SELECT * FROM reconciler.failures`)).toEqual([]);
    expect(await t.rows(sql`SELECT * FROM reconciler.state`)).toEqual([]);
    expect(await doneItems()).toEqual([]);
  });

  it('prints only JSON lines, without ANSI escapes, under --json', async () => {
    const { env } = await itemsJob(3);
    const result = await runCli(['run', 'items', '--json'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).not.toMatch(/\u001b\[/);
    const output = lines(result.stdout).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(output).toEqual([expect.objectContaining({ type: 'pass', reconciler: 'items', status: 'succeeded', counts: expect.objectContaining({ found: 3, changed: 3 }) })]);
  });

  it('prints an item line per item and a pass line under --dry-run --json', async () => {
    const { env } = await itemsJob(2);
    const result = await runCli(['run', 'items', '--dry-run', '--json'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).not.toMatch(/\u001b\[/);
    const output = lines(result.stdout).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(output).toEqual([
      { type: 'item', reconciler: 'items', key: 'item-1', outcome: 'changed', note: 'would mark item-1' },
      { type: 'item', reconciler: 'items', key: 'item-2', outcome: 'changed', note: 'would mark item-2' },
      expect.objectContaining({ type: 'pass', reconciler: 'items', dryRun: true, status: 'succeeded' }),
    ]);
    expect(await doneItems()).toEqual([]);
  });

  it('shows the items that would fail under --dry-run, with their error', async () => {
    const { env } = await itemsJob(3, { failKeys: ['item-2'] });
    const result = await runCli(['run', 'items', '--dry-run'], env);
    expect(result.code).toBe(1);
    expect(lines(result.stdout)).toContain('would fail          item-2  cannot reconcile item-2');
    expect(await t.rows(sql`SELECT * FROM reconciler.failures`)).toEqual([]);
  });

  it('exits 1 and says where to look when --key names a dead item', async () => {
    const { env } = await itemsJob(3);
    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at) VALUES ('items', 'item-2', 10, 'boom', now(), now())`);
    const result = await runCli(['run', 'items', '--key', 'item-2'], env);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('items: "item-2" is dead and was not attempted: `reconciler failures items "item-2"` shows its error and what a person can do');
    expect(await doneItems()).toEqual([]);
  });

  it('says plainly when --key names an item the scan does not find, and what failure memory still holds of it', async () => {
    const { env } = await itemsJob(3);
    const typo = await runCli(['run', 'items', '--key', 'item-9'], env);
    expect(typo.code, typo.stderr).toBe(0);
    expect(typo.stdout).toMatch(/^items: pass \d+ succeeded in .+: 0 found, .* \(by --key: the scan does not find that key\)$/m);
    expect(typo.stderr).toBe('reconciler: items: the scan does not find "item-9": nothing needs doing for it now (it is done, or the key is wrong).\n');
    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at) VALUES ('items', 'item-9', 3, 'boom', now(), now())`);
    const remembered = await runCli(['run', 'items', '--key', 'item-9'], env);
    expect(remembered.stderr).toContain('It still has a failure on record (dead after 3 attempt(s)), which the next complete pass forgets: `reconciler failures items "item-9"` shows it.');
  });

  it('reconciles only the named item under --key', async () => {
    const { env } = await itemsJob(5);
    const result = await runCli(['run', 'items', '--key', 'item-3'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(await doneItems()).toEqual(['item-3']);
    expect(result.stdout).toMatch(/items: pass \d+ succeeded .*1 changed/);
  });

  it('exits 2 with a did-you-mean line for an unknown reconciler name', async () => {
    const { env } = await itemsJob(1);
    const result = await runCli(['run', 'itmes'], env);
    expectOneLineError(result, 'unknown reconciler `itmes`, did you mean `items`?');
    expect(await doneItems()).toEqual([]);
  });

  it('exits 2 with one line for an unknown flag', async () => {
    const { env } = await itemsJob(1);
    const result = await runCli(['run', '--bogus'], env);
    expectOneLineError(result, /--bogus/);
  });

  it('exits 2 with one line when given neither names nor --all', async () => {
    const { env } = await itemsJob(1);
    const result = await runCli(['run'], env);
    expectOneLineError(result, /--all/);
  });

});

describe('reconciler run beside broken job files', () => {
  /** `items.ts` over 2 rows, and two files that do not load: one throws at import, one has no default export. */
  async function withBrokenSiblings() {
    const { env, folder } = await itemsJob(2);
    folder.write('boom.ts', `throw new Error('boom');\n`);
    folder.write('nodefault.ts', `export const x = 1;\n`);
    const rel = (file: string) => join(folder.dir, file).slice(REPO_ROOT.length + 1);
    const warnings = [
      `reconciler: warning: ${rel('boom.ts')}: failed to import: boom (not loaded; the other reconcilers are unaffected)`,
      `reconciler: warning: ${rel('nodefault.ts')}: does not default-export a reconciler: add \`export default defineReconciler({ schedule, scan, key, reconcile })\` (not loaded; the other reconcilers are unaffected)`,
    ];
    return { env, rel, warnings, folder };
  }

  it.each([
    { what: 'runs a named reconciler that loaded, warns once per broken file on stderr, and exits 0', args: ['run', 'items'], code: 0 },
    { what: 'runs every reconciler that loaded under --all, warns about the broken files, and exits 2 after the passes', args: ['run', '--all'], code: 2 },
  ])('$what', async ({ args, code }) => {
    const { env, warnings } = await withBrokenSiblings();
    const result = await runCli(args, env);
    expect(result.code, result.stderr).toBe(code);
    expect(lines(result.stderr)).toEqual(warnings);
    expect(result.stdout).toMatch(/^items: pass \d+ succeeded in .+: 2 found, 2 changed/);
    expect(await doneItems()).toEqual(['item-1', 'item-2']);
  });

  it('exits 2 with the problem line, running nothing, when a named reconciler is a broken file', async () => {
    const { env, rel } = await withBrokenSiblings();
    for (const args of [['run', 'boom'], ['run', 'items', 'boom']]) {
      expectOneLineError(await runCli(args, env), `reconciler: cannot run boom: ${rel('boom.ts')}: failed to import: boom`);
    }
    expect(await doneItems()).toEqual([]);
    expectOneLineError(await runCli(['run', 'itmes'], env), 'unknown reconciler `itmes`, did you mean `items`?');
  });

  it('leaves every read-only command working, the broken job included, whatever it needs at import', async () => {
    const { env, folder } = await withBrokenSiblings();
    // A job that needs a secret at import, as a payment job might, with a failure on record from before.
    folder.write('needs-secret.ts', `if (!process.env.PAYMENT_API_KEY) throw new Error('PAYMENT_API_KEY is not set');\nexport default {};\n`);
    await t.rows(sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at) VALUES ('needs-secret', 'k-1', 3, 'declined', now(), now()), ('needs-secret', 'k-2', 1, 'declined', now(), NULL)`);
    for (const args of [['list'], ['list', '--json'], ['history', 'items'], ['history', 'boom'], ['failures'], ['failures', 'needs-secret'], ['retry', 'needs-secret', 'k-1'], ['clear', 'needs-secret', 'k-2'], ['config']]) {
      const result = await runCli(args, env);
      expect(result.code, `${args.join(' ')}: ${result.stderr}`).toBe(0);
      expect(result.stderr, args.join(' ')).toBe('');
    }
    const listed = await runCli(['list'], env);
    expect(listed.stdout).toMatch(/^needs-secret\s.*DID NOT LOAD: .*needs-secret\.ts: failed to import: PAYMENT_API_KEY is not set$/m);
    expect(await t.rows(sql`SELECT key, attempts, dead_at IS NULL AS alive FROM reconciler.failures WHERE reconciler = 'needs-secret'`)).toEqual([{ key: 'k-1', attempts: 0, alive: true }]);
  });
});

describe('failures alike, as in an outage', () => {
  it('log the first in full and one line for the rest of the pass, each item at debug level', async () => {
    const failKeys = Array.from({ length: 6 }, (_, i) => `item-${i + 1}`);
    const { env } = await itemsJob(6, { failKeys });
    const result = await runCli(['run', 'items'], env);
    expect(result.code).toBe(1);
    const warnings = lines(result.stderr).map((line) => JSON.parse(line) as { level: number; msg: string; failedItems?: number });
    expect(warnings.map((w) => w.level)).toEqual([40, 40]);
    expect(warnings[0]!.msg).toMatch(/^failed: cannot reconcile item-\d; retry in /);
    expect(warnings[1]).toMatchObject({ failedItems: 6 });
    expect(warnings[1]!.msg).toMatch(/^6 items failed like this in the pass/);
    await t.rows(sql`UPDATE reconciler.failures SET next_attempt_at = now() - interval '1 second'`);
    const debug = await runCli(['run', 'items'], { ...env, LOG_LEVEL: 'debug' });
    expect(lines(debug.stderr).filter((line) => line.includes('cannot reconcile')).length).toBeGreaterThanOrEqual(6);
  });
});

describe('reconciler retry and clear', () => {
  it('makes a failed item due now with a fresh attempt budget, and says so', async () => {
    const { env } = await itemsJob(2, { failKeys: ['item-2'] });
    expect((await runCli(['run', 'items'], env)).code).toBe(1);
    await t.rows(sql`UPDATE reconciler.failures SET next_attempt_at = now() + interval '1 hour', dead_at = now(), attempts = 7`);

    const result = await runCli(['retry', 'items', 'item-2'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^1 item\(s\) of items due now with a fresh attempt budget/);
    const rows = await t.rows<{ key: string; attempts: number; due: boolean; dead: boolean }>(
      sql`SELECT key, attempts, next_attempt_at <= now() AS due, dead_at IS NOT NULL AS dead FROM reconciler.failures`,
    );
    expect(rows).toEqual([{ key: 'item-2', attempts: 0, due: true, dead: false }]);
  });

  it('exits 2 with one line for a key that has no failure on record', async () => {
    const { env } = await itemsJob(2, { failKeys: ['item-2'] });
    expect((await runCli(['run', 'items'], env)).code).toBe(1);
    const result = await runCli(['retry', 'items', 'no-such-key'], env);
    expectOneLineError(result, /items has no failing item for key "no-such-key"/);
  });

  it('exits 2 with one line when given neither a key nor --all', async () => {
    const { env } = await itemsJob(1);
    const result = await runCli(['retry', 'items'], env);
    expectOneLineError(result, /--all/);
  });

  it('names the load error when the reconciler to retry is a broken file', async () => {
    await resetItems(1);
    const folder = jobs({ 'items.ts': 'throw new Error("boom at import");' });
    const result = await runCli(['retry', 'items', 'item-1'], { DATABASE_URL: t.url, JOBS_DIR: folder.dir });
    expectOneLineError(result, /items did not load, and has no failures on record: .*items\.ts: failed to import: boom at import/);
  });

  it('forgets every failed item of a reconciler with clear --all', async () => {
    const { env } = await itemsJob(3, { failKeys: ['item-1', 'item-3'] });
    expect((await runCli(['run', 'items'], env)).code).toBe(1);
    expect(await t.rows(sql`SELECT key FROM reconciler.failures`)).toHaveLength(2);
    const result = await runCli(['clear', 'items', '--all'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^2 item\(s\) of items forgotten/);
    expect(await t.rows(sql`SELECT key FROM reconciler.failures`)).toEqual([]);
  });
});

describe('output through pipes', () => {
  it('keeps JSON output whole when it is larger than a pipe buffer', async () => {
    const { env } = await itemsJob(1);
    await t.rows(sql`INSERT INTO reconciler.runs (reconciler, trigger, status, host, pid, error)
                     SELECT 'items', 'manual', 'failed', 'host', 1, repeat('x', 200) FROM generate_series(1, 3000)`);
    const result = await runCli(['history', '--json', '--limit', '3000'], env);
    expect(result.stdout.length).toBeGreaterThan(256 * 1024);
    expect((JSON.parse(result.stdout) as { runs: unknown[] }).runs).toHaveLength(3000);
  });

  it('exits quietly when the reader of its output goes away', async () => {
    const { env } = await itemsJob(1);
    await t.rows(sql`INSERT INTO reconciler.runs (reconciler, trigger, status, host, pid) SELECT 'items', 'manual', 'succeeded', 'host', 1 FROM generate_series(1, 3000)`);
    const result = await runCli([], {}, { shell: `set -o pipefail; DATABASE_URL='${env.DATABASE_URL}' JOBS_DIR='${env.JOBS_DIR}' node bin/reconciler.js history --limit 3000 | head -c 10 >/dev/null` });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toBe('');
  });
});

describe('database and configuration errors', () => {
  it('exits 2 with one line when the database cannot be reached', async () => {
    const folder = jobs({ 'items.ts': tableJob() });
    const result = await runCli(['list'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/x', JOBS_DIR: folder.dir });
    expectOneLineError(result, /cannot connect to PostgreSQL at postgres:\/\/postgres@127\.0\.0\.1:1\/x/);
  });

  it.each(['not a url', 'mysql://x@y/z'])('exits 2 with one line naming DATABASE_URL when it is %j', async (url) => {
    const folder = jobs({ 'items.ts': tableJob() });
    const result = await runCli(['list'], { DATABASE_URL: url, JOBS_DIR: folder.dir });
    expectOneLineError(result, /^reconciler: invalid DATABASE_URL: /);
  });

  it('never prints the password of DATABASE_URL', async () => {
    const folder = jobs({ 'items.ts': tableJob() });
    const env = { DATABASE_URL: 'postgres://postgres:S3cretCanary@127.0.0.1:1/x', JOBS_DIR: folder.dir, STARTUP_TIMEOUT: '0' };
    for (const args of [['list'], ['run', 'items'], ['config'], ['config', '--json'], ['migrate']]) {
      const result = await runCli(args, env);
      expect(result.stdout + result.stderr, args.join(' ')).not.toContain('S3cretCanary');
      if (args[0] !== 'config') expectOneLineError(result, /cannot connect/);
    }
    const debug = await runCli(['list'], { ...env, LOG_LEVEL: 'debug' });
    expect(debug.stdout + debug.stderr).not.toContain('S3cretCanary');
    // Nor that of LISTEN_DATABASE_URL, which `config` shows masked.
    const config = await runCli(['config'], { ...env, LISTEN_DATABASE_URL: 'postgres://listener:L1stenCanary@127.0.0.1:1/x' });
    expect(config.stdout + config.stderr).not.toContain('L1stenCanary');
    expect(config.stdout).toMatch(/LISTEN_DATABASE_URL\s+postgres:\/\/listener:\*\*\*@127\.0\.0\.1:1\/x/);
  });

  it('exits 2 with one line when LISTEN_DATABASE_URL is set without DATABASE_URL, or is not a URL', async () => {
    const folder = jobs({ 'items.ts': tableJob() });
    const alone = await runCli(['list'], { LISTEN_DATABASE_URL: t.url, JOBS_DIR: folder.dir });
    expectOneLineError(alone, /^reconciler: invalid LISTEN_DATABASE_URL: it is set but DATABASE_URL is not/);
    const bad = await runCli(['list'], { DATABASE_URL: t.url, LISTEN_DATABASE_URL: 'the direct one', JOBS_DIR: folder.dir });
    expectOneLineError(bad, /^reconciler: invalid LISTEN_DATABASE_URL: is not a URL/);
  });

  it('exits 2 with one line per invalid variable', async () => {
    const folder = jobs({ 'items.ts': tableJob() });
    const result = await runCli(['list'], { DATABASE_URL: t.url, JOBS_DIR: folder.dir, LEASE_TTL: 'banana', LOG_LEVEL: 'loud' });
    expect(result.code).toBe(2);
    const errorLines = lines(result.stderr);
    expect(errorLines).toHaveLength(2);
    expect(errorLines).toEqual(expect.arrayContaining([expect.stringMatching(/^reconciler: invalid LEASE_TTL \(got "banana"\): /), expect.stringMatching(/^reconciler: invalid LOG_LEVEL \(got "loud"\): must be one of /)]));
    expect(result.stderr).not.toMatch(/^\s{4}at /m);
  });
});

describe('reconciler list', () => {
  it('tells, in SCAN, whether each scan uses an index, and gives up on a first page that waits on something else', async () => {
    const { env, folder } = await itemsJob(2);
    folder.write('hangs.ts', `import { defineReconciler } from ${JSON.stringify(API)};
export default defineReconciler({ schedule: '0 0 1 1 *', scan: () => new Promise<never>(() => undefined), key: () => 'k', reconcile: async () => 'changed' });
`);
    const started = Date.now();
    const result = await runCli(['list', '--json'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(Date.now() - started).toBeLessThan(20_000);
    const scans = Object.fromEntries((JSON.parse(result.stdout) as { reconcilers: { name: string; scan: { access: string; detail: string } }[] }).reconcilers.map((r) => [r.name, r.scan]));
    // `items` has no index on `done`: its keyset scan walks the primary key and filters the rest.
    expect(scans.items).toMatchObject({ access: 'filtered-index', detail: expect.stringContaining('reads items through items_pkey and filters (NOT done)') });
    expect(scans.hangs).toMatchObject({ access: 'unknown', detail: 'not known: its scan did not finish its first page within 3s (no SQL is run here: it waits on something else)' });
    await t.rows(sql`CREATE INDEX items_to_do ON items (id) WHERE NOT done`);
    const indexed = await runCli(['list'], env);
    expect(lines(indexed.stdout).find((line) => line.startsWith('items '))).toContain('index items_to_do');
  });

  it('shows each reconciler with its schedule, next run and last pass', async () => {
    const { env } = await itemsJob(2, { schedule: '*/5 * * * *' });
    const before = await runCli(['list'], env);
    expect(before.code, before.stderr).toBe(0);
    expect(lines(before.stdout)[0]).toMatch(/^NAME\s+SCHEDULE\s+NEXT RUN\s+LAST PASS\s/);
    expect(lines(before.stdout)[1]).toMatch(/^items\s+\*\/5 \* \* \* \*\s+\d{4}-\d\d-\d\d \d\d:\d\d:00Z \(in [^)]+\)\s+never\s/);

    expect((await runCli(['run', 'items'], env)).code).toBe(0);
    const after = await runCli(['list'], env);
    expect(after.code, after.stderr).toBe(0);
    expect(lines(after.stdout)[1]).toMatch(/^items\s+\*\/5 \* \* \* \*\s+\S+ \S+ \(in [^)]+\)\s+succeeded \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \([^)]+ ago\)/);
    expect(after.stderr).toBe('');
  });

  const defined = (body: string) => `import { defineReconciler } from ${JSON.stringify(API)};\nexport default defineReconciler({ ${body} });\n`;
  const base = `scan: async () => [], key: () => 'k', reconcile: () => 'unchanged'`;
  it.each([
    { problem: 'a file that throws at import', file: 'boom.ts', source: `throw new Error('boom');\n`, message: 'failed to import: boom' },
    { problem: 'a file with no default export', file: 'nodefault.ts', source: `export const x = 1;\n`, message: 'does not default-export a reconciler' },
    { problem: 'a plain-object default export', file: 'plain.ts', source: `export default { schedule: '* * * * *', ${base} };\n`, message: 'its default export is not a reconciler: wrap it in defineReconciler' },
    { problem: 'an invalid cron', file: 'badcron.ts', source: defined(`schedule: '61 * * * *', ${base}`), message: 'invalid cron "61 * * * *"' },
    { problem: 'an invalid timezone', file: 'badtz.ts', source: defined(`schedule: '* * * * *', timezone: 'Mars/Olympus', ${base}`), message: 'invalid timezone "Mars/Olympus"' },
    { problem: 'an unknown option', file: 'typo.ts', source: defined(`schedule: '* * * * *', timout: '5s', ${base}`), message: 'unknown option `timout`, did you mean `timeout`?' },
    { problem: 'a bad file name', file: 'Bad_Name.ts', source: defined(`schedule: '* * * * *', ${base}`), message: 'the file name `Bad_Name` is not a valid reconciler name' },
  ])('lists the good reconciler and shows $problem as a row `DID NOT LOAD: <file>: <problem>`, exiting 0', async ({ file, source, message }) => {
    const { env, folder } = await itemsJob(1);
    folder.write(file, source);
    const result = await runCli(['list'], env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toBe('');
    const rows = lines(result.stdout).slice(1);
    expect(rows[0]).toMatch(/^items\s/);
    expect(rows, result.stdout).toHaveLength(2);
    expect(rows[1]).toContain(`DID NOT LOAD: ${join(folder.dir, file).slice(REPO_ROOT.length + 1)}: `);
    expect(rows[1]).toContain(message);
    const { errors } = JSON.parse((await runCli(['list', '--json'], env)).stdout) as { errors: { file: string; message: string }[] };
    expect(errors.map((e) => e.message).join('\n')).toContain(message);
  });

  it('shows both files of a duplicate name as rows and runs neither', async () => {
    const { env, folder } = await itemsJob(1);
    folder.write('dup.ts', FIXED_JOB);
    folder.write('dup.mjs', FIXED_JOB);
    const result = await runCli(['list'], env);
    expect(result.code, result.stderr).toBe(0);
    const rows = lines(result.stdout).slice(1);
    expect(rows.map((line) => line.split(/\s+/)[0])).toEqual(['items', 'dup', 'dup']);
    const rel = (file: string) => join(folder.dir, file).slice(REPO_ROOT.length + 1);
    expect(rows.slice(1).map((row) => row.slice(row.indexOf('DID NOT LOAD: ') + 'DID NOT LOAD: '.length)).sort()).toEqual([
      `${rel('dup.mjs')}: shares the reconciler name \`dup\` with ${rel('dup.ts')}: neither runs until one is removed or renamed`,
      `${rel('dup.ts')}: shares the reconciler name \`dup\` with ${rel('dup.mjs')}: neither runs until one is removed or renamed`,
    ]);
    expect((await runCli(['run', 'dup'], env)).code).toBe(2);
  });
});

describe('help and version', () => {
  it.each(['', 'daemon', 'run', 'list', 'history', 'failures', 'retry', 'clear', 'act', 'audit', 'migrate', 'config'])('prints usage and exits 0 for `reconciler %s --help`', async (command) => {
    const result = await runCli(command ? [command, '--help'] : ['--help'], {});
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('Usage');
  });

  it('prints help and exits 2 when given no arguments', async () => {
    const result = await runCli([], {});
    expect(result.code).toBe(2);
    expect(result.stdout + result.stderr).toContain('Usage: reconciler');
  });

  it('prints the package version for --version', async () => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    const result = await runCli(['--version'], {});
    expect(result.code).toBe(0);
    expect(result.stdout.trim()).toBe(version);
  });
});

describe('reconciler migrate', () => {
  let name: string;
  beforeEach(async () => {
    name = await createEmptyDatabase();
  });
  afterEach(async () => {
    await dropDatabase(name);
  });

  it('applies the migrations to an empty database, then says it is up to date', async () => {
    const env = { DATABASE_URL: databaseUrl(name) };
    const first = await runCli(['migrate'], env);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/^applied \d+ migration\(s\) to postgres:\/\//);
    const second = await runCli(['migrate'], env);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toMatch(/^postgres:\/\/\S+ is up to date$/m);
  });

  it('tells to run `reconciler migrate` when a command meets an unmigrated database', async () => {
    const folder = jobs({ 'items.ts': tableJob() });
    const result = await runCli(['list'], { DATABASE_URL: databaseUrl(name), JOBS_DIR: folder.dir });
    expectOneLineError(result, /pending migration\(s\): run `reconciler migrate`/);
  });
});

describe('reconciler config', () => {
  it('prints the effective configuration with the database password masked', async () => {
    const url = new URL(t.url);
    url.password = 'Hunter2Secret';
    const result = await runCli(['config'], { DATABASE_URL: url.toString(), JOBS_DIR: 'some/jobs', LEASE_TTL: '20s' });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).not.toContain('Hunter2Secret');
    expect(result.stdout).toMatch(/^DATABASE_URL\s+postgres:\/\/postgres:\*\*\*@/m);
    expect(result.stdout).toMatch(/^JOBS_DIR\s+some\/jobs$/m);
    expect(result.stdout).toMatch(/^LEASE_TTL\s+20s$/m);
  });
});

describe('configuration values', () => {
  it('accepts durations in plain milliseconds, as environment variables often spell them', async () => {
    const result = await runCli(['config'], { LEASE_TTL: '5000', SHUTDOWN_TIMEOUT: '0' });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^LEASE_TTL\s+5s$/m);
    expect(result.stdout).toMatch(/^SHUTDOWN_TIMEOUT\s+0ms$/m);
  });

  it('reads LOCK_TTL, the old name of LEASE_TTL, with a warning; LEASE_TTL wins when both are set', async () => {
    const old = await runCli(['config'], { LOCK_TTL: '20s' });
    expect(old.code, old.stderr).toBe(0);
    expect(old.stdout).toMatch(/^LEASE_TTL\s+20s$/m);
    expect(old.stderr).toContain("reconciler: warning: LOCK_TTL is deprecated: set LEASE_TTL instead (LOCK_TTL's value is used)");
    const both = await runCli(['config'], { LOCK_TTL: '20s', LEASE_TTL: '7s' });
    expect(both.stdout).toMatch(/^LEASE_TTL\s+7s$/m);
    expect(both.stderr).toContain('LOCK_TTL is deprecated: set LEASE_TTL instead (LEASE_TTL is set, and wins)');
    const bad = await runCli(['config'], { LOCK_TTL: '90s' });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^reconciler: invalid LOCK_TTL \(got "90s"\): must be between 1s and 30s/m);
  });
});

describe('the embedded database', () => {
  let dataDir: string;
  let folder: JobsDir;
  let env: Record<string, string>;
  beforeEach(() => {
    dataDir = join(REPO_ROOT, 'test', '.tmp', `data-${randomBytes(4).toString('hex')}`);
    mkdirSync(dataDir, { recursive: true });
    folder = jobs({ 'items.ts': FIXED_JOB });
    env = { DATA_DIR: dataDir, JOBS_DIR: folder.dir };
  });
  afterEach(async () => {
    for (const p of processes.splice(0)) await p.kill();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('is used when DATABASE_URL is unset, and keeps the history of a pass', { timeout: 120_000 }, async () => {
    const run = await runCli(['run', 'items'], env, { timeoutMs: 90_000 });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^items: pass \d+ succeeded in .+: 3 found, 3 changed/m);
    const history = await runCli(['history'], env, { timeoutMs: 90_000 });
    expect(history.code, history.stderr).toBe(0);
    expect(lines(history.stdout)[1]).toMatch(/^\d+\s+items\s+-\s+manual\s+succeeded\s/);
  });

  it('refuses a second process, naming the process that holds it', { timeout: 120_000 }, async () => {
    const daemon = startProcess(['daemon'], { ...env, LOG_LEVEL: 'info' });
    processes.push(daemon);
    await daemon.waitForEvent('daemon:started', {}, 90_000);
    const result = await runCli(['list'], env, { timeoutMs: 90_000 });
    expectOneLineError(result, new RegExp(`the embedded database in .+ is in use by process ${daemon.pid}\\b`));
  });
});
