/**
 * Job files from any folder: outside the repository, with no package.json, in TypeScript or
 * JavaScript, importing the engine by its package name. And when one is wrong, the error
 * names the file, and a syntax error its line and column, with the line shown.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { useTestDatabase } from './helpers/db.js';
import { runCli } from './helpers/processes.js';

const t = useTestDatabase();
/** A folder outside the repository with no package.json anywhere above it (as /srv/jobs is). */
const folder = mkdtempSync(join(tmpdir(), 'reconciler-jobs-'));
afterAll(() => rmSync(folder, { recursive: true, force: true }));

/** A job over the table `<table>(id serial, done boolean)`, in each syntax a user may write. */
const job = (table: string, typed: boolean) => `
import { defineReconciler, sql } from 'reconciler';
import { markDone } from './lib/mark.js';
${typed ? `interface Row { id: number }\n` : ''}export default defineReconciler${typed ? '<Row>' : ''}({
  schedule: '0 0 1 1 *',
  scan: async ({ db, after, limit }) => (await db.execute(sql\`SELECT id FROM ${table} WHERE NOT done AND id > \${after?.id ?? 0} ORDER BY id LIMIT \${limit}\`)).rows${typed ? ' as unknown as Row[]' : ''},
  key: (row) => String(row.id),
  reconcile: async (row, ctx) => markDone(ctx.db, '${table}', row.id),
});
`;

beforeAll(async () => {
  mkdirSync(join(folder, 'lib'));
  // A helper beside the jobs, imported relatively (a TypeScript file imported by its .js name, as tsc wants).
  writeFileSync(
    join(folder, 'lib', 'mark.ts'),
    `import { sql, type Db } from 'reconciler';
export async function markDone(db: Db, table: string, id: number): Promise<'changed'> {
  await db.execute(sql\`UPDATE \${sql.identifier(table)} SET done = true WHERE id = \${id}\`);
  return 'changed';
}
`,
  );
  writeFileSync(join(folder, 'typed.ts'), job('typed', true));
  writeFileSync(join(folder, 'typed-module.mts'), job('typed_module', true));
  writeFileSync(join(folder, 'plain.js'), job('plain', false));
  writeFileSync(join(folder, 'plain-module.mjs'), job('plain_module', false));
  for (const table of ['typed', 'typed_module', 'plain', 'plain_module']) {
    await t.rows(sql.raw(`CREATE TABLE ${table} (id serial PRIMARY KEY, done boolean NOT NULL DEFAULT false); INSERT INTO ${table} (done) VALUES (false), (false)`));
  }
});

describe('a job folder outside the repository, without a package.json', () => {
  it('loads .ts, .mts, .js and .mjs files that import the engine as `reconciler`, and runs them', async () => {
    const env = { DATABASE_URL: t.url, JOBS_DIR: folder };
    const listed = await runCli(['list', '--json'], env);
    expect(listed.code, listed.stderr).toBe(0);
    const { reconcilers, errors } = JSON.parse(listed.stdout) as { reconcilers: { name: string }[]; errors: unknown[] };
    expect(errors).toEqual([]);
    expect(reconcilers.map((r) => r.name).sort()).toEqual(['plain', 'plain-module', 'typed', 'typed-module']);

    const ran = await runCli(['run', '--all'], env);
    expect(ran.code, ran.stderr).toBe(0);
    const [row] = await t.rows<{ left: number }>(
      sql`SELECT (SELECT count(*) FROM typed WHERE NOT done) + (SELECT count(*) FROM typed_module WHERE NOT done) + (SELECT count(*) FROM plain WHERE NOT done) + (SELECT count(*) FROM plain_module WHERE NOT done) AS left`,
    );
    expect(Number(row!.left)).toBe(0);
  });
});

describe('a job file that is wrong', () => {
  const broken = mkdtempSync(join(tmpdir(), 'reconciler-broken-jobs-'));
  afterAll(() => rmSync(broken, { recursive: true, force: true }));
  const env = () => ({ DATABASE_URL: t.url, JOBS_DIR: broken });

  it.each([
    { file: 'bad-types.ts', source: "import { sql } from 'reconciler';\n\nconst limit: number = ;\nexport default sql;\n", line: 3, column: 23, text: 'const limit: number = ;' },
    { file: 'bad-module.mjs', source: "import { sql } from 'reconciler';\nexport default {\n  schedule: '* * * * *',,\n};\n", line: 3, column: 25, text: "  schedule: '* * * * *',," },
    { file: 'bad-plain.js', source: "import { sql } from 'reconciler';\nexport default {\n  schedule: '* * * * *',,\n};\n", line: 3, column: 25, text: "  schedule: '* * * * *',," },
  ])('names the file, line and column of a syntax error in $file and shows the line', async ({ file, source, line, column, text }) => {
    writeFileSync(join(broken, file), source);
    try {
      const result = await runCli(['run', file.replace(/\.\w+$/, '')], env());
      expect(result.code).toBe(2);
      const [message, shown, caret] = result.stderr.trimEnd().split('\n');
      expect(message).toMatch(new RegExp(`^reconciler: cannot run .*: ${join(broken, file).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: syntax error at line ${line}, column ${column}: `));
      expect(shown).toBe(`  ${line} | ${text}`);
      expect(caret).toBe(`  ${' '.repeat(String(line).length)} | ${' '.repeat(column - 1)}^`);
      // list shows it as a row, and exits 0: the other reconcilers are listed as usual.
      const listed = await runCli(['list'], env());
      expect(listed.code, listed.stderr).toBe(0);
      expect(listed.stdout).toContain(`syntax error at line ${line}, column ${column}`);
    } finally {
      rmSync(join(broken, file));
    }
  });

  it('names the file that imports a module that does not exist', async () => {
    writeFileSync(join(broken, 'lost.ts'), "import { gone } from './nowhere.js';\nexport default gone;\n");
    try {
      const result = await runCli(['run', 'lost'], env());
      expect(result.code).toBe(2);
      expect(result.stderr).toContain(`${join(broken, 'lost.ts')}: failed to import`);
      expect(result.stderr).toContain('nowhere');
    } finally {
      rmSync(join(broken, 'lost.ts'));
    }
  });
});
