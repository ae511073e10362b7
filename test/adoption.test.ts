/**
 * Adopting reconciler in an application of one's own, as a new user does: a throwaway project
 * with its own package.json installs the package (packed as npm packs it for a git or path
 * install), points it at its own database, which already has tables named `customers` and
 * `payments`, and runs its own job from its own folder: migrate, list, a pass by hand, the
 * daemon. Nothing of the returns example is involved, and the engine creates nothing outside
 * its schema.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { REPO_ROOT } from './helpers/jobs.js';
import { runCli, startProcess, useCleanup } from './helpers/processes.js';

const run = promisify(execFile);
const work = mkdtempSync(join(tmpdir(), 'reconciler-adoption-'));
const app = join(work, 'shop');
let t: TestDatabase;
const { children } = useCleanup();

/** The application's own schema: tables named as the example's are, shaped otherwise, and one the job works on. */
const APPLICATION_SCHEMA = `
  CREATE TABLE customers (customer_id uuid PRIMARY KEY DEFAULT gen_random_uuid(), full_name text NOT NULL);
  CREATE TABLE payments (payment_id bigserial PRIMARY KEY, customer_id uuid REFERENCES customers, cents bigint NOT NULL);
  CREATE TABLE invoices (id serial PRIMARY KEY, customer_id uuid REFERENCES customers, pdf_url text);
  -- The partial index the job's scan needs, in the application's own migration.
  CREATE INDEX invoices_missing_pdf ON invoices (id) WHERE pdf_url IS NULL;
  INSERT INTO customers (full_name) VALUES ('Grace Hopper'), ('Alan Turing');
  INSERT INTO payments (customer_id, cents) SELECT customer_id, 1200 FROM customers;
  INSERT INTO invoices (customer_id) SELECT customer_id FROM customers;`;

/** The application's job, in its own folder of its own project (whose package.json says no "type"). */
const JOB = `/** attach-pdfs: renders the PDF of each invoice that has none. Doing it twice writes the same URL. */
import { defineReconciler, sql } from 'reconciler';

interface Invoice { id: number }

export default defineReconciler<Invoice>({
  schedule: '*/2 * * * * *',
  description: 'renders missing invoice PDFs',
  scan: async ({ db, after, limit }) =>
    (await db.execute(sql\`SELECT id FROM invoices WHERE pdf_url IS NULL AND id > \${after?.id ?? 0} ORDER BY id LIMIT \${limit}\`)).rows as unknown as Invoice[],
  key: (invoice) => \`invoice:\${invoice.id}\`,
  reconcile: async (invoice, { db }) => {
    await db.execute(sql\`UPDATE invoices SET pdf_url = \${\`https://files.example/invoices/\${invoice.id}.pdf\`} WHERE id = \${invoice.id} AND pdf_url IS NULL\`);
    return 'changed';
  },
});
`;

beforeAll(async () => {
  t = await createTestDatabase({ migrate: false });
  await t.rows(sql.raw(APPLICATION_SCHEMA));
  // Installed from this repository by git URL, as the README says: npm clones it, runs its `prepare`
  // (the build) and packs what `files` names. The committed HEAD is what a user would get.
  const { stdout: head } = await run('git', ['rev-parse', 'HEAD'], { cwd: REPO_ROOT });
  mkdirSync(join(app, 'jobs'), { recursive: true });
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'shop', version: '1.0.0', private: true }, null, 2));
  writeFileSync(join(app, 'jobs', 'attach-pdfs.ts'), JOB);
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', `git+file://${REPO_ROOT}#${head.trim()}`], { cwd: app, maxBuffer: 20_000_000 });
}, 300_000);
afterAll(async () => {
  await t?.drop();
  rmSync(work, { recursive: true, force: true });
});

const npx = (commandLine: string, env: Record<string, string> = {}) =>
  runCli([], { DATABASE_URL: t.url, JOBS_DIR: 'jobs', ...env }, { shell: `npx --no-install ${commandLine}`, cwd: app, timeoutMs: 120_000 });

describe('an application of its own that installs reconciler', () => {
  it('gets the engine alone: no example, no sources, no embedded database', () => {
    const installed = join(app, 'node_modules', 'reconciler');
    expect(readdirSync(installed).sort()).toEqual(['bin', 'dist', 'package.json', ...(existsSync(join(installed, 'README.md')) ? ['README.md'] : []), ...(existsSync(join(installed, 'LICENSE')) ? ['LICENSE'] : [])].sort());
    expect(readdirSync(join(installed, 'dist'))).toEqual(['src']);
    expect(existsSync(join(app, 'node_modules', '@electric-sql', 'pglite'))).toBe(false);
  });

  it('migrates, lists, runs a pass by hand and runs the daemon, on its own tables only', async () => {
    const customersBefore = await t.rows(sql`SELECT * FROM customers ORDER BY full_name`);
    const paymentsBefore = await t.rows(sql`SELECT * FROM payments ORDER BY payment_id`);

    const migrated = await npx('reconciler migrate');
    expect(migrated.code, migrated.stderr).toBe(0);

    const listed = await npx('reconciler list');
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(/^attach-pdfs\s.*index invoices_missing_pdf\s+renders missing invoice PDFs/m);

    // A dropped index shows before the table grows: the scan then walks the primary key and filters.
    await t.rows(sql`DROP INDEX invoices_missing_pdf`);
    expect((await npx('reconciler list')).stdout).toMatch(/^attach-pdfs\s.*FILTERS ROWS: reads invoices through invoices_pkey and filters \(pdf_url IS NULL\): rows it does not return/m);
    await t.rows(sql`CREATE INDEX invoices_missing_pdf ON invoices (id) WHERE pdf_url IS NULL`);

    const pass = await npx('reconciler run attach-pdfs');
    expect(pass.code, pass.stderr).toBe(0);
    expect(pass.stdout).toMatch(/^attach-pdfs: pass \d+ succeeded .*: 2 found, 2 changed/m);

    // The daemon picks up a new invoice.
    await t.rows(sql`INSERT INTO invoices (customer_id) SELECT customer_id FROM customers LIMIT 1`);
    const daemon = startProcess(['daemon'], { DATABASE_URL: t.url, JOBS_DIR: join(app, 'jobs'), LOG_LEVEL: 'info' }, { command: join(app, 'node_modules', '.bin', 'reconciler') });
    children.push(daemon);
    // Its catch-up pass at start (a tick was missed since the pass by hand) or a scheduled one, whichever comes first.
    const scheduled = await daemon.waitFor((l) => l.reconciler === 'attach-pdfs' && ['startup', 'schedule'].includes(String(l.trigger)) && Number(l.changed) === 1, 'a pass of the daemon that renders the new invoice', 30_000);
    expect(scheduled.status).toBe('succeeded');
    daemon.child.kill('SIGTERM');
    expect((await daemon.exited).code).toBe(0);
    expect(await t.rows(sql`SELECT id FROM invoices WHERE pdf_url IS NULL`)).toEqual([]);

    // Its own tables are as they were; the engine's objects are in its schema and nowhere else.
    expect(await t.rows(sql`SELECT * FROM customers ORDER BY full_name`)).toEqual(customersBefore);
    expect(await t.rows(sql`SELECT * FROM payments ORDER BY payment_id`)).toEqual(paymentsBefore);
    const tables = await t.rows<{ schema: string; name: string }>(sql`
      SELECT table_schema AS schema, table_name AS name FROM information_schema.tables
      WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2`);
    expect(tables).toEqual([
      { schema: 'public', name: 'customers' },
      { schema: 'public', name: 'invoices' },
      { schema: 'public', name: 'payments' },
      { schema: 'reconciler', name: 'audit' },
      { schema: 'reconciler', name: 'failures' },
      { schema: 'reconciler', name: 'migrations' },
      { schema: 'reconciler', name: 'replicas' },
      { schema: 'reconciler', name: 'runs' },
      { schema: 'reconciler', name: 'state' },
    ]);
    const functions = await t.rows<{ schema: string; name: string }>(sql`
      SELECT n.nspname AS schema, p.proname AS name FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2`);
    expect(functions).toEqual([{ schema: 'reconciler', name: 'error_group' }, { schema: 'reconciler', name: 'normalised_error' }, { schema: 'reconciler', name: 'partition_of' }]);
  });

  it('keeps the engine in the schema RECONCILER_SCHEMA names', async () => {
    const env = { RECONCILER_SCHEMA: 'ops_jobs' };
    expect((await npx('reconciler migrate', env)).code).toBe(0);
    await t.rows(sql`UPDATE invoices SET pdf_url = NULL WHERE id = 1`);
    const pass = await npx('reconciler run attach-pdfs', env);
    expect(pass.code, pass.stderr).toBe(0);
    const [row] = await t.rows<{ runs: number }>(sql`SELECT count(*)::int AS runs FROM ops_jobs.runs WHERE reconciler = 'attach-pdfs'`);
    expect(row!.runs).toBe(1);
    const bad = await npx('reconciler list', { RECONCILER_SCHEMA: 'public' });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^reconciler: invalid RECONCILER_SCHEMA \(got "public"\): must be a schema of the engine's own/);
  });
});
