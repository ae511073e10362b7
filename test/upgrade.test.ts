/**
 * Upgrading an installation from the layout before engine schemas, when the engine's tables
 * stood beside the application's (reconciler_state, reconciler_runs, reconciler_failures, the
 * function reconciler_partition) and the returns example's migrations were the engine's own.
 * The database is migrated exactly as that version did (its migrations, kept as a fixture, by
 * drizzle's migrator into drizzle's default journal), then `reconciler migrate` runs.
 */
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { REPO_ROOT } from './helpers/jobs.js';
import { runCli } from './helpers/processes.js';
import { migrateReturns } from '../examples/returns/src/migrate.js';
import { MIGRATIONS_FOLDER } from '../src/store/migrate.js';

const LEGACY_MIGRATIONS = fileURLToPath(new URL('./fixtures/legacy-layout/migrations', import.meta.url));
let t: TestDatabase;

/**
 * Returns as that version's tables held them (amounts in `*_cents` columns, one return per Fix):
 * today's seed writes today's columns, which the example's migration 0004 renamed.
 */
async function seedLegacyReturns(db: TestDatabase, count: number): Promise<void> {
  await db.rows(sql`INSERT INTO customers (name, email, payment_method) SELECT 'Legacy ' || n, 'legacy' || n || '@example.com', 'pm_card_visa' FROM generate_series(1, ${count}) AS n`);
  await db.rows(sql`INSERT INTO fixes (customer_id, currency, styling_fee_cents, prepaid_cents) SELECT id, 'USD', 2000, CASE WHEN id % 2 = 0 THEN 0 ELSE 9000 END FROM customers WHERE email LIKE 'legacy%'`);
  await db.rows(sql`INSERT INTO fix_items (fix_id, sku, description, price_cents) SELECT id, 'SKU-' || k, 'item ' || k, 3000 + k * 500 FROM fixes, generate_series(1, 2) AS k`);
  await db.rows(sql`INSERT INTO returns (fix_id, recorded_by) SELECT id, 'warehouse-legacy' FROM fixes WHERE NOT EXISTS (SELECT 1 FROM returns r WHERE r.fix_id = fixes.id)`);
  await db.rows(sql`INSERT INTO return_items (return_id, fix_item_id) SELECT r.id, min(fi.id) FROM returns r JOIN fix_items fi ON fi.fix_id = r.fix_id WHERE r.recorded_by = 'warehouse-legacy' GROUP BY r.id ON CONFLICT DO NOTHING`);
}

const rowsOf = (table: string) => t.rows<Record<string, unknown>>(sql.raw(`SELECT * FROM ${table} ORDER BY 1, 2`));

beforeAll(async () => {
  t = await createTestDatabase({ migrate: false });
  await migrate(t.db as never, { migrationsFolder: LEGACY_MIGRATIONS });
  await seedLegacyReturns(t, 6);
  // What a running installation holds: history (one pass still running), failure memory (one item dead), a live lease.
  await t.rows(sql`
    INSERT INTO reconciler_runs (reconciler, partition, trigger, status, started_at, finished_at, duration_ms, found, changed, complete, host, pid, error)
    VALUES ('settle-returns', 0, 'schedule', 'succeeded', now() - interval '2 minutes', now() - interval '119 seconds', 900, 3, 3, true, 'web-1', 101, NULL),
           ('settle-returns', 1, 'schedule', 'failed', now() - interval '2 minutes', now() - interval '119 seconds', 950, 2, 1, true, 'web-1', 101, NULL),
           ('expire-trials', 0, 'manual', 'running', now() - interval '5 seconds', NULL, NULL, 0, 0, false, 'web-2', 202, NULL)`);
  await t.rows(sql`
    INSERT INTO reconciler_failures (reconciler, key, partition, attempts, last_error, next_attempt_at, dead_at)
    VALUES ('settle-returns', 'return:2', 1, 3, 'the provider declined', now() + interval '1 hour', NULL),
           ('expire-trials', 'trial:9', 0, 10, 'card expired', now(), now())`);
  await t.rows(sql`
    INSERT INTO reconciler_state (reconciler, partition, partitions, holder_id, holder_host, holder_pid, holder_since, lease_expires_at, current_run_id, last_started_at, last_status, last_run_id)
    VALUES ('expire-trials', 0, 1, '00000000-0000-4000-8000-000000000001', 'web-2', 202, now() - interval '5 seconds', now() + interval '1 hour', 3, now() - interval '5 seconds', 'succeeded', 1),
           ('settle-returns', 1, 4, NULL, NULL, NULL, NULL, NULL, NULL, now() - interval '2 minutes', 'failed', 2)`);
});
afterAll(async () => {
  await t.drop();
});

describe('an installation from before engine schemas', () => {
  it('moves the engine tables into the schema with their history, failure memory and leases, and keeps the application untouched', async () => {
    const before = { runs: await rowsOf('reconciler_runs'), failures: await rowsOf('reconciler_failures'), state: await rowsOf('reconciler_state') };
    const applicationTables = await t.rows<{ name: string }>(sql`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' AND table_name NOT LIKE 'reconciler_%' ORDER BY 1`);
    const returnsBefore = await rowsOf('returns');

    const result = await runCli(['migrate'], { DATABASE_URL: t.url });
    expect(result.code, result.stderr).toBe(0);
    // The move (0000) and every engine migration since.
    expect(result.stdout).toMatch(new RegExp(`^applied ${readdirSync(MIGRATIONS_FOLDER).filter((file) => file.endsWith('.sql')).length} migration\\(s\\)`));

    expect({ runs: await rowsOf('reconciler.runs'), failures: await rowsOf('reconciler.failures'), state: await rowsOf('reconciler.state') }).toEqual({
      ...before,
      runs: before.runs.map((run) => ({ ...run, oldest_item_at: null })), // columns added since
      failures: before.failures.map((failure) => ({ ...failure, error_group: expect.stringMatching(/^[0-9a-f]{10}$/) })),
    });
    const [gone] = await t.rows<Record<string, unknown>>(sql`
      SELECT to_regclass('public.reconciler_runs') AS runs, to_regclass('public.reconciler_state') AS state, to_regclass('public.reconciler_failures') AS failures,
             to_regprocedure('public.reconciler_partition(text, integer)') AS fn, to_regprocedure('reconciler.partition_of(text, integer)') IS NOT NULL AS moved`);
    expect(gone).toEqual({ runs: null, state: null, failures: null, fn: null, moved: true });
    // The application's tables, and the example's index, which now refers to the moved function.
    expect(await t.rows(sql`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1`)).toEqual(applicationTables);
    expect(await rowsOf('returns')).toEqual(returnsBefore);
    const [index] = await t.rows<{ definition: string }>(sql`SELECT pg_get_indexdef('returns_unsettled_by_partition'::regclass) AS definition`);
    expect(index!.definition).toContain('reconciler.partition_of(');

    // History goes on from where it was: new passes take the next ids.
    const [next] = await t.rows<{ id: string }>(sql`SELECT nextval(pg_get_serial_sequence('reconciler.runs', 'id')) AS id`);
    expect(Number(next!.id)).toBe(4);

    // The CLI reads what was there: the live lease, the history, the dead item.
    const history = await runCli(['history', '--json'], { DATABASE_URL: t.url });
    expect((JSON.parse(history.stdout) as { runs: unknown[] }).runs).toHaveLength(3);
    const failures = await runCli(['failures', 'expire-trials', '--dead', '--json'], { DATABASE_URL: t.url });
    expect((JSON.parse(failures.stdout) as { failures: { key: string }[] }).failures.map((f) => f.key)).toEqual(['trial:9']);

    // The example continues from its journal (drizzle's default): nothing of it runs again.
    await migrateReturns(t.database);
    const [journal] = await t.rows<{ n: number }>(sql`SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations`);
    expect(journal!.n).toBe(7); // the old installation's entries, then the example's newer ones (0002 partition index, 0003 settled by hand, 0004 lookups, 0005 closed Fixes)
    const listed = await runCli(['list', '--json'], { DATABASE_URL: t.url, JOBS_DIR: `${REPO_ROOT}/jobs` });
    expect(listed.code, listed.stderr).toBe(0);
    const settle = (JSON.parse(listed.stdout) as { reconcilers: { name: string; scan: { access: string; indexes: string[] } }[] }).reconcilers.find((r) => r.name === 'settle-returns');
    expect(settle).toMatchObject({ name: 'settle-returns', scan: { access: 'index', indexes: ['returns_unsettled_by_partition'] } });

    const again = await runCli(['migrate'], { DATABASE_URL: t.url });
    expect(again.stdout).toContain('is up to date');
  });
});

describe('a role named as the engine schema', () => {
  it('gets a warning from `reconciler migrate`: its search_path would put its own tables in the engine schema', async () => {
    const role = `rtest_${Math.random().toString(36).slice(2, 10)}`;
    const url = new URL(t.url);
    url.username = role;
    await t.rows(sql.raw(`CREATE ROLE ${role} LOGIN; GRANT CREATE ON DATABASE "${t.name}" TO ${role}`));
    try {
      const result = await runCli(['migrate'], { DATABASE_URL: url.toString(), RECONCILER_SCHEMA: role });
      expect(result.code, result.stderr).toBe(0);
      expect(result.stderr).toContain(`reconciler: warning: the engine schema "${role}" is on the search_path of role "${role}" (the role has its name`);
      const plain = await runCli(['migrate'], { DATABASE_URL: t.url, RECONCILER_SCHEMA: `${role}_x` });
      expect(plain.stderr).toBe('');
    } finally {
      await t.rows(sql.raw(`DROP SCHEMA IF EXISTS ${role} CASCADE; DROP SCHEMA IF EXISTS ${role}_x CASCADE; DROP OWNED BY ${role}; DROP ROLE ${role}`));
    }
  });
});

describe('an installation from before partitions', () => {
  it('gets the partition count its state table lacked, and runs partitioned reconcilers', async () => {
    // The same layout, migrated only up to the release before partitions (the first three migrations).
    const folder = mkdtempSync(join(tmpdir(), 'reconciler-legacy-'));
    const old = await createTestDatabase({ migrate: false });
    try {
      cpSync(LEGACY_MIGRATIONS, folder, { recursive: true });
      const journalFile = join(folder, 'meta', '_journal.json');
      const journal = JSON.parse(readFileSync(journalFile, 'utf8')) as { entries: unknown[] };
      writeFileSync(journalFile, JSON.stringify({ ...journal, entries: journal.entries.slice(0, 3) }));
      await migrate(old.db as never, { migrationsFolder: folder });
      await old.rows(sql`INSERT INTO reconciler_state (reconciler, partition, last_started_at, last_status, last_run_id) VALUES ('settle-returns', 0, now(), 'succeeded', 0)`);
      await seedLegacyReturns(old, 4);

      const result = await runCli(['migrate'], { DATABASE_URL: old.url });
      expect(result.code, result.stderr).toBe(0);
      expect(await old.rows(sql`SELECT reconciler, partition, partitions FROM reconciler.state`)).toEqual([{ reconciler: 'settle-returns', partition: 0, partitions: 1 }]);
      await migrateReturns(old.database); // the example's partition index, on the engine's function
      const listed = await runCli(['list', '--json'], { DATABASE_URL: old.url, JOBS_DIR: `${REPO_ROOT}/jobs` });
      expect(listed.code, listed.stderr).toBe(0);
      const settle = (JSON.parse(listed.stdout) as { reconcilers: { name: string; scan: { indexes: string[] } }[] }).reconcilers.find((r) => r.name === 'settle-returns');
      expect(settle?.scan.indexes).toEqual(['returns_unsettled_by_partition']);
      const dryRun = await runCli(['run', 'settle-returns', '--dry-run'], { DATABASE_URL: old.url, JOBS_DIR: `${REPO_ROOT}/jobs` });
      expect(dryRun.code, dryRun.stderr).toBe(0);
      expect(dryRun.stdout).toMatch(/would (charge|refund|settle)/);
    } finally {
      await old.drop();
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
