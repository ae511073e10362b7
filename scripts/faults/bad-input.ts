/**
 * 6. Bad input, each case its own line: broken job files and misbehaving scans and items
 * beside the real settle-returns in one daemon, and misconfigured replicas beside it. For
 * every case: a clear error, the other reconcilers keep running, nothing lost.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { queryRows } from '../../src/store/database.js';
import { isEvent, type LogLine } from '../../testkit/processes.js';
import { Stage, converge, until } from './harness.js';

export interface CaseOutcome {
  failures: string[];
  figures: Record<string, number | string>;
}

/** A key with quotes, a backslash, SQL and a NUL-free but hostile mix of characters. */
export const HOSTILE_KEY = `it's "quoted" \\ back; DROP TABLE returns; -- %s $1 ü`;

const JOB_FILES: Record<string, (index: string) => string> = {
  'throws-at-import.js': () => `throw new Error('cannot reach the secrets vault at import');\n`,
  'exports-nothing.js': () => `export const schedule = '* * * * *';\n`,
  'invalid-cron.js': (index) => `import { defineReconciler } from ${index};
export default defineReconciler({ schedule: '61 * * * *', scan: async () => [], key: (i) => String(i), reconcile: async () => {} });\n`,
  'twin.js': (index) => `import { defineReconciler } from ${index};
export default defineReconciler({ schedule: '0 0 1 1 *', scan: async () => [], key: (i) => String(i), reconcile: async () => {} });\n`,
  'twin.mjs': (index) => `import { defineReconciler } from ${index};
export default defineReconciler({ schedule: '0 0 1 1 *', scan: async () => [], key: (i) => String(i), reconcile: async () => {} });\n`,
  'bad-items.js': (index) => `import { defineReconciler } from ${index};
export default defineReconciler({
  schedule: '*/5 * * * * *',
  scan: async ({ after }) => (after ? [] : [42, 'text', null, { id: 'same' }, { id: 'same' }, { id: ${JSON.stringify(HOSTILE_KEY)} }]),
  key: (item) => item.id,
  reconcile: async (item) => { if (item.id !== 'same') throw new Error('refused: ' + item.id); },
});\n`,
  'hangs.js': (index) => `import { defineReconciler } from ${index};
export default defineReconciler({
  schedule: '*/5 * * * * *', timeout: '1s',
  scan: async ({ after }) => (after ? [] : [{ id: 'forever' }]),
  key: (item) => item.id,
  reconcile: () => new Promise(() => {}),
});\n`,
  'huge-error.js': (index) => `import { defineReconciler } from ${index};
export default defineReconciler({
  schedule: '*/5 * * * * *',
  scan: async ({ after }) => (after ? [] : [{ id: 'megabyte' }]),
  key: (item) => item.id,
  reconcile: async () => { throw new Error('x'.repeat(1 << 20)); },
});\n`,
};

const hasLine = (lines: LogLine[], test: (line: LogLine) => boolean) => lines.filter(test);

export async function badInput(stage: Stage, seed: number, quick: boolean): Promise<Record<string, CaseOutcome>> {
  const shop = await stage.shop(quick ? 100 : 500, seed);
  const provider = await stage.provider(seed, { latencyMs: [5, 20] });
  const jobs = stage.jobs('*/2 * * * * *');
  const index = JSON.stringify(stage.app.module('src/index.js'));
  for (const [file, source] of Object.entries(JOB_FILES)) writeFileSync(join(jobs, file), source(index));
  const env = stage.env(shop.url, provider, jobs);
  const daemon = stage.daemon(env);

  // The other reconcilers keep running: settle-returns converges with every broken file beside it.
  const settled = await converge(shop.database, provider, 120_000).then(
    (r) => (r.audit.duplicates + r.audit.missing + r.audit.disagreements === 0 ? undefined : `settle-returns: ${r.audit.duplicates} duplicate(s), ${r.audit.missing} missing`),
    (error: Error) => `settle-returns did not converge beside the broken files: ${error.message}`,
  );
  const failure = async (key: string) =>
    (await queryRows<{ reconciler: string; key: string; error: string; attempts: number }>(shop.database.db, sql`SELECT reconciler, key, last_error AS error, attempts FROM reconciler.failures WHERE key = ${key}`))[0];
  const finishedPasses = async (name: string) =>
    Number((await queryRows<{ n: number }>(shop.database.db, sql`SELECT count(*)::int AS n FROM reconciler.runs WHERE reconciler = ${name} AND finished_at IS NOT NULL`))[0]?.n ?? 0);
  // Two passes of each misbehaving reconciler: the second meets the first one's failures (and the hung attempt).
  await until(
    async () => (await failure('forever')) && (await failure('megabyte')) && (await failure(HOSTILE_KEY)) && (await finishedPasses('hangs')) >= 2 && (await finishedPasses('bad-items')) >= 2,
    'two passes of each misbehaving reconciler, with their failures recorded',
    60_000,
  ).catch(() => undefined); // each case below says what is missing

  // Misconfigured replicas beside the running one: each refuses to start with one line and exit 2.
  const malformedDatabaseUrl = await stage.run(['daemon'], { ...env, DATABASE_URL: 'postgres://app:canary-db-pw@db.internal:port/app' });
  const foreignSchema = await stage.run(['daemon'], { ...env, RECONCILER_SCHEMA: 'public' });
  const alive = daemon.child.exitCode === null && daemon.child.signalCode === null;
  const errorLines = (file: string) => hasLine(daemon.lines, (l) => l.level >= 50 && String(l.file ?? '').endsWith(`/${file}`));
  const common = [...(settled ? [settled] : []), ...(alive ? [] : ['the daemon exited'])];

  const loadCase = (file: string, expected: RegExp): CaseOutcome => {
    const lines = errorLines(file);
    const failures = [...common];
    if (lines.length !== 1) failures.push(`${lines.length} error lines name ${file} (expected exactly 1)`);
    else if (!expected.test(lines[0]!.msg)) failures.push(`the error line does not say what is wrong: ${lines[0]!.msg.slice(0, 200)}`);
    return { failures, figures: { errorLines: lines.length, line: lines[0]?.msg.slice(0, 160) ?? '' } };
  };
  const cases: Record<string, CaseOutcome> = {
    'job file throws at import': loadCase('throws-at-import.js', /failed to import: .*secrets vault/),
    'job file exports nothing': loadCase('exports-nothing.js', /does not default-export a reconciler/),
    'invalid cron': loadCase('invalid-cron.js', /invalid-cron\.js: invalid cron "61 \* \* \* \*"/),
  };
  {
    // Two files, one name: both are reported, and neither runs, in the daemon or by hand.
    const twin = [loadCase('twin.js', /twin\.js: shares the reconciler name `twin` with .*twin\.mjs: neither runs/), loadCase('twin.mjs', /twin\.mjs: shares the reconciler name `twin` with .*twin\.js: neither runs/)];
    const byHand = await stage.run(['run', 'twin'], env);
    const ran = hasLine(daemon.lines, (l) => l.reconciler === 'twin');
    const failures = [...new Set(twin.flatMap((c) => c.failures))];
    if (byHand.code !== 2) failures.push(`\`reconciler run twin\` exited ${byHand.code} (expected 2)`);
    if (ran.length > 0) failures.push('the daemon ran one of the twins');
    cases['duplicate name'] = { failures, figures: { errorLines: twin.reduce((n, c) => n + Number(c.figures.errorLines), 0), runByHandExit: byHand.code ?? String(byHand.signal) } };
  }

  {
    const failures = [...common];
    const noKey = hasLine(daemon.lines, isEvent('scan:bad-key', { reconciler: 'bad-items' }));
    const twice = hasLine(daemon.lines, isEvent('scan:duplicate-key', { reconciler: 'bad-items' }));
    const hostile = await failure(HOSTILE_KEY);
    if (noKey.length < 3) failures.push(`${noKey.length} lines for the 3 items without a usable key`);
    if (twice.length < 1) failures.push('no line for the duplicate key');
    if (!hostile || hostile.key !== HOSTILE_KEY || hostile.reconciler !== 'bad-items') failures.push('the failure of the item with a hostile key was not recorded byte for byte');
    const [returns] = await queryRows<{ n: number }>(shop.database.db, sql`SELECT count(*)::int AS n FROM returns`);
    if (Number(returns?.n) !== (quick ? 100 : 500)) failures.push('the returns table lost rows');
    cases['scan yields non-objects, duplicate and hostile keys'] = { failures, figures: { noKeyLines: noKey.length, duplicateLines: twice.length, hostileKeyRecorded: hostile ? 'yes' : 'no' } };
  }
  {
    const failures = [...common];
    const recorded = await failure('forever');
    if (!recorded || !/timed out after 1\.0s/.test(recorded.error)) failures.push(`the hanging item's failure says: ${recorded?.error ?? 'nothing'}`);
    const passes = await finishedPasses('hangs');
    if (passes < 2) failures.push('the passes of `hangs` did not end');
    cases['reconcile never resolves (timeout)'] = { failures, figures: { error: recorded?.error ?? '', finishedPasses: passes } };
  }
  {
    const failures = [...common];
    const recorded = await failure('megabyte');
    const longest = Math.max(0, ...daemon.stdoutText.filter((t) => t.includes('megabyte')).map((t) => t.length));
    if (!recorded) failures.push('the failure was not recorded');
    else if (recorded.error.length > 2_100) failures.push(`the recorded error is ${recorded.error.length} characters`);
    if (longest > 8_000) failures.push(`a log line of ${longest} characters`);
    cases['error message of 1 MB'] = { failures, figures: { storedChars: recorded?.error.length ?? 0, longestLogLine: longest } };
  }
  const configCase = (result: Awaited<ReturnType<Stage['run']>>, name: string, secret?: string): CaseOutcome => {
    const failures = [...common];
    const lines = result.stderr.trim().split('\n');
    if (result.code !== 2) failures.push(`exited ${result.code ?? result.signal} (expected 2)`);
    if (lines.length !== 1 || !lines[0]!.includes(name)) failures.push(`stderr is not one line naming ${name}: ${result.stderr.slice(0, 200)}`);
    if (secret && (result.stderr + result.stdout).includes(secret)) failures.push('the password appears in the output');
    return { failures, figures: { exit: result.code ?? String(result.signal), line: lines[0]?.slice(0, 160) ?? '' } };
  };
  cases['malformed DATABASE_URL'] = configCase(malformedDatabaseUrl, 'DATABASE_URL', 'canary-db-pw');
  cases['RECONCILER_SCHEMA naming a schema the engine does not own'] = configCase(foreignSchema, 'RECONCILER_SCHEMA');
  return cases;
}
