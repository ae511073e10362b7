/**
 * close-fixes (issue 18): the returns example's set-based reconciler, against real PostgreSQL.
 * It closes exactly the Fixes that are done (every return settled, the return window over),
 * one statement per batch; a second pass finds nothing; `run --dry-run` (a real CLI process)
 * says per Fix what it would do and changes nothing; a Fix that changed between the scan and
 * the close (a new return, closed by someone else) is never closed wrongly.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { resolveReconciler, type ReconcilerDefinition } from '../src/reconciler.js';
import type { PassResult } from '../src/engine/result.js';
import shipped from '../examples/returns/jobs/close-fixes.js';
import { closeFixes, findFixesToClose, type FixToClose } from '../examples/returns/src/close-fixes.js';
import { useTestDatabase } from './helpers/db.js';
import { engine } from './helpers/engine.js';
import { runCli } from './helpers/processes.js';

const t = useTestDatabase({ returns: true, resetEngineTables: true });
beforeEach(() => t.rows(sql`TRUNCATE payments, return_items, returns, fix_items, fixes, customers RESTART IDENTITY CASCADE`));

interface FixSpec {
  shippedDaysAgo: number;
  /** Per return of the Fix: whether it is settled. */
  returns?: ('settled' | 'unsettled')[];
  /** Prepaid what keeping everything costs (the styling fee and every item); otherwise nothing was prepaid. */
  prepaidInFull?: boolean;
  closedDaysAgo?: number;
}

const FEE = 2_000;
const PRICES = [4_500, 3_000];

/** One Fix as `spec` says (its customer, two items, its returns); its id. */
async function addFix(spec: FixSpec): Promise<number> {
  const [customer] = await t.rows<{ id: number }>(sql`INSERT INTO customers (name, email, payment_method) VALUES ('Ada Lovelace', 'ada@example.com', 'pm_card_visa') RETURNING id`);
  const prepaid = spec.prepaidInFull ? FEE + PRICES.reduce((a, b) => a + b, 0) : 0;
  const closedAt = spec.closedDaysAgo === undefined ? sql`NULL` : sql`now() - make_interval(days => ${spec.closedDaysAgo})`;
  const [fix] = await t.rows<{ id: number }>(
    sql`INSERT INTO fixes (customer_id, currency, styling_fee_minor, prepaid_minor, shipped_at, closed_at)
        VALUES (${customer!.id}, 'USD', ${FEE}, ${prepaid}, now() - make_interval(days => ${spec.shippedDaysAgo}), ${closedAt}) RETURNING id`,
  );
  const fixId = Number(fix!.id);
  for (const price of PRICES) await t.rows(sql`INSERT INTO fix_items (fix_id, sku, description, price_minor) VALUES (${fixId}, 'SKU-1', 'linen shirt', ${price})`);
  for (const state of spec.returns ?? []) await addReturn(fixId, state);
  return fixId;
}

function addReturn(fixId: number, state: 'settled' | 'unsettled' = 'unsettled') {
  const settled = state === 'settled' ? sql`now() - interval '1 day', 'none'` : sql`NULL, NULL`;
  return t.rows(sql`INSERT INTO returns (fix_id, received_at, settled_at, settlement) VALUES (${fixId}, now() - interval '2 days', ${settled})`);
}

const closedAt = async () =>
  Object.fromEntries((await t.rows<{ id: number; closed_at: string | null }>(sql`SELECT id, closed_at::text FROM fixes ORDER BY id`)).map((f) => [Number(f.id), f.closed_at]));

/** The shipped job through the in-process engine, its scan optionally wrapped (what happens between a scan and its close). */
function closeFixesEngine(afterScan?: (page: FixToClose[]) => Promise<void>) {
  const definition: ReconcilerDefinition<FixToClose> = afterScan
    ? { ...shipped, scan: async (request) => {
          const page = await findFixesToClose(request.db, request.after?.id ?? 0, request.limit);
          if (page.length > 0) await afterScan(page);
          return page;
        } }
    : shipped;
  return engine(t.db, [resolveReconciler('close-fixes', 'examples/returns/jobs/close-fixes.ts', definition)]);
}

async function pass(e: ReturnType<typeof closeFixesEngine>): Promise<PassResult> {
  const attempt = await e.requestPass('close-fixes', { trigger: 'manual' });
  if (!attempt.ran) throw new Error(`pass did not run: ${attempt.reason}`);
  return attempt.result;
}

/** The Fixes of every case: which are ready to close, and which are not, and why. */
async function everyCase() {
  return {
    settled: await addFix({ shippedDaysAgo: 10, returns: ['settled', 'settled'] }),
    keptEverythingPrepaid: await addFix({ shippedDaysAgo: 10, prepaidInFull: true }),
    oneUnsettled: await addFix({ shippedDaysAgo: 10, returns: ['settled', 'unsettled'] }),
    inWindow: await addFix({ shippedDaysAgo: 2, returns: ['settled'] }),
    noReturnMoneyDue: await addFix({ shippedDaysAgo: 10 }),
    closedBefore: await addFix({ shippedDaysAgo: 30, returns: ['settled'], closedDaysAgo: 20 }),
  };
}

describe('close-fixes', () => {
  it('closes exactly the Fixes whose every return is settled after their return window, in one pass; the next pass finds nothing', async () => {
    const fixes = await everyCase();
    const before = await closedAt();
    const e = closeFixesEngine();

    const first = await pass(e);
    expect(first.counts).toMatchObject({ found: 2, changed: 2, unchanged: 0, skipped: 0, failed: 0 });
    expect(first.status).toBe('succeeded');
    const after = await closedAt();
    const closedNow = Object.keys(after).map(Number).filter((id) => before[id] === null && after[id] !== null);
    expect(closedNow.sort()).toEqual([fixes.settled, fixes.keptEverythingPrepaid].sort());
    expect(after[fixes.closedBefore]).toBe(before[fixes.closedBefore]);

    const second = await pass(e);
    expect(second.counts).toMatchObject({ found: 0, changed: 0 });
    expect(await closedAt()).toEqual(after);
    // A Fix closes once its last return is settled.
    await t.rows(sql`UPDATE returns SET settled_at = now(), settlement = 'none' WHERE fix_id = ${fixes.oneUnsettled}`);
    expect((await pass(e)).counts).toMatchObject({ found: 1, changed: 1 });
    expect((await closedAt())[fixes.oneUnsettled]).not.toBeNull();
  });

  it('under `reconciler run --dry-run` (a real process) says per Fix what it would do, and changes nothing', async () => {
    const fixes = await everyCase();
    const before = await closedAt();
    const env = { DATABASE_URL: t.url, JOBS_DIR: 'examples/returns/jobs' };

    const dry = await runCli(['run', 'close-fixes', '--dry-run'], env);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain(`would close Fix ${fixes.settled}: 2 returns, all settled; its return window ended 3 days ago`);
    expect(dry.stdout).toContain(`would close Fix ${fixes.keptEverythingPrepaid}: no returns, prepaid in full (the customer kept everything)`);
    for (const id of [fixes.oneUnsettled, fixes.inWindow, fixes.noReturnMoneyDue, fixes.closedBefore]) expect(dry.stdout).not.toMatch(new RegExp(`Fix ${id}\\b`));
    expect(await closedAt()).toEqual(before);
    expect(await t.rows(sql`SELECT id FROM reconciler.runs`)).toEqual([]);

    // Its scan reads the open Fixes through the partial index, and each one's returns and items through theirs: no table whole.
    // (It filters: open Fixes still in their return window, or with a return to settle, are read and left.)
    const listed = await runCli(['list', '--json'], env);
    const reconcilers = (JSON.parse(listed.stdout) as { reconcilers: { name: string; scan: { access: string; indexes: string[] } }[] }).reconcilers;
    expect(reconcilers.find((r) => r.name === 'close-fixes')?.scan).toMatchObject({ access: 'filtered-index', indexes: ['fix_items_by_fix', 'fixes_open', 'returns_by_fix'] });
  });

  it('never closes a Fix that got a new return, or was closed by someone else, between the scan and the close', async () => {
    const gotAReturn = await addFix({ shippedDaysAgo: 10, returns: ['settled'] });
    const closedElsewhere = await addFix({ shippedDaysAgo: 10, returns: ['settled'] });
    const ready = await addFix({ shippedDaysAgo: 10, returns: ['settled'] });
    const e = closeFixesEngine(async (page) => {
      expect(page.map((fix) => fix.id)).toEqual([gotAReturn, closedElsewhere, ready]);
      await addReturn(gotAReturn); // a late return, recorded by the warehouse
      await t.rows(sql`UPDATE fixes SET closed_at = '2026-01-01T00:00:00Z' WHERE id = ${closedElsewhere}`);
    });

    const result = await pass(e);
    expect(result.counts).toMatchObject({ found: 3, changed: 1, unchanged: 1, skipped: 1, failed: 0 });
    const after = await closedAt();
    expect(after[gotAReturn]).toBeNull();
    expect(after[closedElsewhere]).toBe('2026-01-01 00:00:00+00');
    expect(after[ready]).not.toBeNull();
  });

  it('says for each key of a batch what it did and why', async () => {
    const fixes = await everyCase();
    const [unsettled] = await t.rows<{ id: number }>(sql`SELECT id FROM returns WHERE fix_id = ${fixes.oneUnsettled} AND settled_at IS NULL`);
    const ids = [...Object.values(fixes), 999_999];
    const dry = await closeFixes(t.db, ids, true);
    expect(await closedAt()).toMatchObject({ [fixes.settled]: null, [fixes.keptEverythingPrepaid]: null });
    const real = await closeFixes(t.db, ids, false);
    expect(Object.fromEntries(real)).toEqual({
      [`fix:${fixes.settled}`]: { outcome: 'changed', note: `closed Fix ${fixes.settled}: 2 returns, all settled; its return window ended 3 days ago` },
      [`fix:${fixes.keptEverythingPrepaid}`]: { outcome: 'changed', note: `closed Fix ${fixes.keptEverythingPrepaid}: no returns, prepaid in full (the customer kept everything); its return window ended 3 days ago` },
      [`fix:${fixes.oneUnsettled}`]: { outcome: 'skipped', note: `Fix ${fixes.oneUnsettled} is not closed: it has a return to settle (return ${unsettled!.id})` },
      [`fix:${fixes.inWindow}`]: { outcome: 'skipped', note: `Fix ${fixes.inWindow} is not closed: shipped 2 days ago, items may still come back` },
      [`fix:${fixes.noReturnMoneyDue}`]: { outcome: 'skipped', note: `Fix ${fixes.noReturnMoneyDue} is not closed: no return was recorded, and keeping everything leaves 95.00 USD to charge` },
      [`fix:${fixes.closedBefore}`]: { outcome: 'unchanged', note: expect.stringMatching(new RegExp(`^Fix ${fixes.closedBefore} was closed already \\(at \\d{4}-`)) },
      'fix:999999': { outcome: 'unchanged', note: 'Fix 999999 no longer exists: nothing to close' },
    });
    // The dry run said the same, as what it would do.
    expect(Object.fromEntries(dry)).toEqual(
      Object.fromEntries([...real].map(([key, result]) => [key, typeof result === 'object' && result.outcome === 'changed' ? { ...result, note: result.note!.replace(/^closed/, 'would close') } : result])),
    );
  });
});
