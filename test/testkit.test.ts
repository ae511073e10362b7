/**
 * The testkit (testkit/) and the scripts that run on it (scripts/: the fault runs, the
 * benchmark) stay free of vitest: they run under plain node, where vitest's runtime is
 * absent and its `expect` would throw. The check walks the real import graph, so that a
 * vitest import two files away counts as much as one at the top.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/jobs.js';

const isVitest = (specifier: string) => /^(vitest|@vitest\/[^/]+)(\/|$)/.test(specifier);

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return /\.(ts|mts|js|mjs)$/.test(name) ? [path] : [];
  });
}

/** The file a relative specifier names (TypeScript sources are imported by their `.js` name). */
function resolveRelative(from: string, specifier: string): string | undefined {
  const base = resolve(dirname(from), specifier);
  const candidates = [base, base.replace(/\.js$/, '.ts'), base.replace(/\.mjs$/, '.mts'), `${base}.ts`, join(base, 'index.ts')];
  return candidates.find((path) => existsSync(path) && statSync(path).isFile());
}

/** Every path from `roots` through relative imports (static, re-exports and literal dynamic ones) to a vitest import. */
function vitestImports(roots: string[]): string[] {
  const found: string[] = [];
  const seen = new Set<string>();
  const visit = (file: string, chain: string[]) => {
    if (seen.has(file)) return;
    seen.add(file);
    const here = [...chain, relative(REPO_ROOT, file)];
    for (const { fileName: specifier } of ts.preProcessFile(readFileSync(file, 'utf8'), true, true).importedFiles) {
      if (isVitest(specifier)) found.push(`${here.join(' → ')} → ${specifier}`);
      else if (specifier.startsWith('.')) {
        const next = resolveRelative(file, specifier);
        if (next) visit(next, here);
      }
    }
  };
  for (const root of roots) visit(root, []);
  return found;
}

describe('the testkit', () => {
  it('neither it nor scripts/ import vitest, directly or through another file', () => {
    const roots = [...sourceFiles(join(REPO_ROOT, 'testkit')), ...sourceFiles(join(REPO_ROOT, 'scripts'))];
    expect(roots.length).toBeGreaterThan(10);
    expect(vitestImports(roots)).toEqual([]);
  });

  it('every log event that docs/operations.md documents is logged, and every one logged is documented', () => {
    const doc = readFileSync(join(REPO_ROOT, 'docs', 'operations.md'), 'utf8');
    const documented = new Set([...doc.matchAll(/^\| `([a-z-]+:[a-z-]+)` \|/gm), ...doc.matchAll(/`((?:returns|demo):[a-z-]+)`/g)].map((m) => m[1]!));
    const sources = [...sourceFiles(join(REPO_ROOT, 'src')), ...sourceFiles(join(REPO_ROOT, 'examples'))].filter((file) => !file.endsWith('.test.ts'));
    const logged = new Set(sources.flatMap((file) => [...readFileSync(file, 'utf8').matchAll(/\bevent: '([a-z-]+:[a-z-]+)'/g)].map((m) => m[1]!)));
    expect(documented.size).toBeGreaterThan(20);
    expect([...documented].filter((event) => !logged.has(event)), 'documented, logged nowhere').toEqual([]);
    expect([...logged].filter((event) => !documented.has(event)), 'logged, not documented').toEqual([]);
  });

  it('the check finds a vitest import two files away', () => {
    const dir = mkdtempSync(join(REPO_ROOT, 'test', '.tmp', 'kit-'));
    try {
      writeFileSync(join(dir, 'script.ts'), "import { helper } from './helper.js';\nexport const x = helper;\n");
      writeFileSync(join(dir, 'helper.ts'), "export { helper } from './deep.js';\n");
      writeFileSync(join(dir, 'deep.ts'), "import { expect } from 'vitest';\nexport const helper = expect;\n");
      writeFileSync(join(dir, 'lazy.ts'), "export const load = () => import('vitest/node');\n");
      expect(vitestImports([join(dir, 'script.ts'), join(dir, 'lazy.ts')])).toHaveLength(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
