/**
 * What keeps `reconciler`'s start-up small (docs/performance.md, "Start-up"), asserted on what
 * the process loads and in which order, not on timings:
 * - it runs the build in dist/ where that is current, the sources (through tsx) where the build
 *   is missing or older than them, never an old build;
 * - the engine's modules load before tsx and the job files' module hooks are installed (through
 *   them, every import would cost a hop to Node's loader thread), and commands that load no job
 *   file (`config`, `--version`) never install them;
 * - a package's relative imports (drizzle-orm's hundreds of files) are answered without Node's
 *   resolver, which on Node 24 parsed the package's whole package.json again for each.
 */
import { appendFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp, type App } from '../scripts/faults/app.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { REPO_ROOT, jobsDir, type JobsDir } from './helpers/jobs.js';
import { runCli } from './helpers/processes.js';

describe('which engine bin/reconciler.js runs', () => {
  let root: string;
  const stub = (said: string) => `export async function main() { process.stdout.write(${JSON.stringify(said)}); return 0; }\n`;
  beforeAll(() => {
    // A checkout in miniature: bin/, node_modules (for tsx), src/ and its build in dist/src/.
    root = mkdtempSync(join(tmpdir(), 'reconciler-engine-choice-'));
    cpSync(join(REPO_ROOT, 'bin'), join(root, 'bin'), { recursive: true });
    symlinkSync(join(REPO_ROOT, 'node_modules'), join(root, 'node_modules'));
    writeFileSync(join(root, 'package.json'), '{ "type": "module" }\n');
    for (const [file, said] of [['src/index.ts', ''], ['src/cli/main.ts', 'sources'], ['dist/src/index.js', ''], ['dist/src/cli/main.js', 'build']] as const) {
      mkdirSync(join(root, file, '..'), { recursive: true });
      writeFileSync(join(root, file), said ? stub(said) : 'export {};\n');
    }
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const ran = async () => {
    const result = await runCli(['--version'], {}, { bin: join(root, 'bin', 'reconciler.js') });
    expect(result.code, result.stderr).toBe(0);
    return result.stdout;
  };
  const age = (file: string, seconds: number) => utimesSync(join(root, file), new Date(Date.now() + seconds * 1000), new Date(Date.now() + seconds * 1000));

  it('runs the build when every source has its output, written after it', async () => {
    for (const file of ['src/index.ts', 'src/cli/main.ts']) age(file, -60);
    expect(await ran()).toBe('build');
  });

  it('runs the sources when one of them changed after the build (never an old build)', async () => {
    age('src/index.ts', 60);
    expect(await ran()).toBe('sources');
    age('src/index.ts', -60);
    expect(await ran()).toBe('build');
  });

  it('runs the sources when a source has no output in the build', async () => {
    writeFileSync(join(root, 'src', 'added.ts'), 'export {};\n');
    age('src/added.ts', -120);
    expect(await ran()).toBe('sources');
    rmSync(join(root, 'src', 'added.ts'));
    expect(await ran()).toBe('build');
  });

  it('runs the build where there are no sources (an install, the image), however old', async () => {
    rmSync(join(root, 'src'), { recursive: true });
    age('dist/src/cli/main.js', -86_400);
    expect(await ran()).toBe('build');
  });
});

describe('what a command loads, in which order (the build, as the image runs it)', () => {
  let app: App;
  let t: TestDatabase;
  let jobs: JobsDir;
  let probe: string;
  beforeAll(async () => {
    [app, t] = await Promise.all([buildApp(), createTestDatabase()]);
    jobs = jobsDir({
      'idle.ts': `import { defineReconciler } from 'reconciler';\nexport default defineReconciler({ schedule: '0 3 * * *', scan: async (): Promise<{ id: number }[]> => [], key: (item) => String(item.id), reconcile: async () => 'unchanged' });\n`,
    });
    // Preloaded: records every module the process loads, in order, from Node's loader thread.
    probe = join(jobs.dir, 'probe.mjs');
    writeFileSync(
      probe,
      `import { register } from 'node:module';\n` +
        `const hooks = 'import { appendFileSync } from "node:fs"; export async function load(url, context, next) { appendFileSync(process.env.LOAD_LOG, url + "\\\\n"); return next(url, context); }';\n` +
        `register('data:text/javascript,' + encodeURIComponent(hooks));\n`,
    );
  }, 120_000);
  afterAll(async () => {
    jobs?.cleanup();
    app?.remove();
    await t?.drop();
  });

  /** The modules `reconciler …args` loaded, in order (file URLs, node: builtins left out). */
  const loads = async (args: string[], expectOut: RegExp): Promise<string[]> => {
    const log = join(jobs.dir, `loads-${args[0]}.log`);
    appendFileSync(log, '');
    rmSync(log);
    const result = await runCli(args, { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, NODE_OPTIONS: `--import ${probe}`, LOAD_LOG: log }, { bin: app.bin });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(expectOut);
    return readFileSync(log, 'utf8').split('\n').filter((url) => url.startsWith('file:'));
  };
  const first = (urls: string[], part: string) => {
    const index = urls.findIndex((url) => url.includes(part));
    expect(index, `${part} was not loaded`).toBeGreaterThanOrEqual(0);
    return index;
  };

  it('`run` loads the engine first, then tsx and the job file', async () => {
    const urls = await loads(['run', 'idle'], /idle: pass 1 succeeded/);
    const engine = first(urls, '/dist/src/engine/engine.js');
    const database = first(urls, '/node_modules/drizzle-orm/');
    expect(first(urls, '/node_modules/tsx/')).toBeGreaterThan(Math.max(engine, database));
    expect(first(urls, '/idle.ts')).toBeGreaterThan(first(urls, '/node_modules/tsx/'));
  });

  it('`config` and `--version` load neither tsx nor (for --version) the engine', async () => {
    const config = await loads(['config'], /DATABASE_URL/);
    expect(config.filter((url) => url.includes('/node_modules/tsx/'))).toEqual([]);
    first(config, '/dist/src/config.js');
    const version = await loads(['--version'], /\S/);
    expect(version.filter((url) => /\/node_modules\/(?:tsx|drizzle-orm|pg|pino)\//.test(url))).toEqual([]);
    expect(version.filter((url) => url.includes('/dist/src/engine/'))).toEqual([]);
  });
});

describe("a package's own relative imports, resolved without Node's resolver (on Node 24 it re-parsed drizzle-orm's package.json for each)", () => {
  type Resolved = { url: string; format?: string; shortCircuit?: boolean };
  type Next = (specifier: string, context: object) => Resolved;
  let resolve: (specifier: string, context: object, next: Next) => Resolved;
  const drizzle = pathToFileURL(realpathSync(join(REPO_ROOT, 'node_modules', 'drizzle-orm', 'index.js'))).href;
  const asked: string[] = [];
  const next: Next = (specifier) => {
    asked.push(specifier);
    return { url: `next:${specifier}` };
  };
  const importing = { conditions: ['node', 'import'], importAttributes: {} };
  beforeAll(async () => {
    ({ resolveRelativeInPackage: resolve } = (await import(pathToFileURL(join(REPO_ROOT, 'bin', 'module-hooks.js')).href)) as { resolveRelativeInPackage: typeof resolve });
  });

  it('answers an import of a file by its path as Node would: its real path, its package\'s format', () => {
    asked.length = 0;
    const resolved = resolve('./sql/sql.js', { ...importing, parentURL: drizzle }, next);
    expect(resolved).toEqual({ url: new URL('./sql/sql.js', drizzle).href, format: 'module', shortCircuit: true });
    expect(resolve('../drizzle-orm/column.js', { ...importing, parentURL: drizzle }, next).url).toBe(new URL('./column.js', drizzle).href);
    expect(asked).toEqual([]);
  });

  it('leaves everything else to Node: bare names, missing files, paths without extension, require, files outside node_modules', () => {
    asked.length = 0;
    resolve('pg', { ...importing, parentURL: drizzle }, next);
    resolve('./no-such-file.js', { ...importing, parentURL: drizzle }, next);
    resolve('./sql', { ...importing, parentURL: drizzle }, next);
    resolve('./sql/sql.js', { conditions: ['node', 'require'], parentURL: drizzle }, next);
    resolve('./cli/main.js', { ...importing, parentURL: pathToFileURL(join(REPO_ROOT, 'src', 'index.ts')).href }, next);
    expect(asked).toEqual(['pg', './no-such-file.js', './sql', './sql/sql.js', './cli/main.js']);
  });
});

describe('a bare import resolved once per place it can resolve differently (on Node 24 each resolve parsed the package\'s whole "exports")', () => {
  type Resolved = { url: string; format?: string; shortCircuit?: boolean };
  type Next = (specifier: string, context: object) => Resolved;
  let resolveBareOnce: (specifier: string, context: object, next: Next) => Resolved;
  let root: string;
  const asked: string[] = [];
  const next: Next = (specifier) => {
    asked.push(specifier);
    if (specifier === 'missing') throw Object.assign(new Error(`Cannot find package '${specifier}'`), { code: 'ERR_MODULE_NOT_FOUND' });
    return { url: `next:${specifier}:${asked.length}`, format: 'module' };
  };
  const importing = { conditions: ['node', 'import'], importAttributes: {} };
  const from = (...path: string[]) => ({ ...importing, parentURL: pathToFileURL(join(root, ...path)).href });
  beforeAll(async () => {
    ({ resolveBareOnce } = (await import(pathToFileURL(join(REPO_ROOT, 'bin', 'module-hooks.js')).href)) as { resolveBareOnce: typeof resolveBareOnce });
    // A package with files in nested folders, one of which has a node_modules of its own.
    root = mkdtempSync(join(tmpdir(), 'reconciler-bare-'));
    writeFileSync(join(root, 'package.json'), '{ "type": "module" }\n');
    mkdirSync(join(root, 'src', 'store'), { recursive: true });
    mkdirSync(join(root, 'src', 'vendored', 'node_modules'), { recursive: true });
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('asks Node once for the files of one package, and answers the others with the same resolution', () => {
    asked.length = 0;
    const first = resolveBareOnce('drizzle-orm', from('src', 'index.js'), next);
    expect(first).toEqual({ url: 'next:drizzle-orm:1', format: 'module', shortCircuit: true });
    expect(resolveBareOnce('drizzle-orm', from('src', 'store', 'lease.js'), next)).toEqual(first);
    expect(resolveBareOnce('drizzle-orm', from('index.js'), next)).toEqual(first);
    expect(asked).toEqual(['drizzle-orm']);
  });

  it('asks again where the answer can differ: a folder with its own node_modules, a subpath, other conditions, a failure', () => {
    asked.length = 0;
    resolveBareOnce('drizzle-orm', from('src', 'vendored', 'x.js'), next);
    resolveBareOnce('drizzle-orm/pg-core', from('src', 'index.js'), next);
    resolveBareOnce('drizzle-orm', { conditions: ['node', 'require'], parentURL: from('src', 'index.js').parentURL }, next);
    expect(() => resolveBareOnce('missing', from('src', 'index.js'), next)).toThrow(/Cannot find package 'missing'/);
    expect(() => resolveBareOnce('missing', from('src', 'index.js'), next)).toThrow(/Cannot find package 'missing'/);
    expect(asked).toEqual(['drizzle-orm', 'drizzle-orm/pg-core', 'drizzle-orm', 'missing', 'missing']);
  });

  it('leaves paths, URLs, builtins, package imports and imports with attributes to Node every time', () => {
    asked.length = 0;
    for (const specifier of ['./x.js', '../y.js', '/abs.js', 'node:fs', 'file:///z.js', '#internal']) {
      resolveBareOnce(specifier, from('src', 'index.js'), next);
      resolveBareOnce(specifier, from('src', 'index.js'), next);
    }
    resolveBareOnce('data', { ...from('src', 'index.js'), importAttributes: { type: 'json' } }, next);
    resolveBareOnce('data', { ...from('src', 'index.js'), importAttributes: { type: 'json' } }, next);
    expect(asked).toEqual(['./x.js', './x.js', '../y.js', '../y.js', '/abs.js', '/abs.js', 'node:fs', 'node:fs', 'file:///z.js', 'file:///z.js', '#internal', '#internal', 'data', 'data']);
  });
});
