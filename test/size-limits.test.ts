/**
 * The limits that keep the engine readable (issue 15): no source file under src/ over 300
 * lines, no function over 80. A file or function that outgrows them is split by concern, not
 * squeezed: see docs/architecture.md for where each concept lives.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const MAX_FILE_LINES = 300;
const MAX_FUNCTION_LINES = 80;
const root = join(import.meta.dirname, '..');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [path] : [];
  });
}

/** Every function, method, arrow function and accessor of `file` longer than the limit, as `file:line name (N lines)`. */
export function longFunctions(path: string, text: string, limit: number): string[] {
  const file = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
  const found: string[] = [];
  const visit = (node: ts.Node) => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const start = file.getLineAndCharacterOfPosition(node.getStart(file)).line;
      const end = file.getLineAndCharacterOfPosition(node.getEnd()).line;
      const lines = end - start + 1;
      const name = node.name?.getText(file) ?? '(anonymous)';
      if (lines > limit) found.push(`${relative(root, path)}:${start + 1} ${name} (${lines} lines)`);
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return found;
}

describe('size limits of src/', () => {
  const files = sourceFiles(join(root, 'src'));

  it(`has no file over ${MAX_FILE_LINES} lines`, () => {
    const long = files.map((path) => ({ path, lines: readFileSync(path, 'utf8').split('\n').length })).filter((f) => f.lines > MAX_FILE_LINES);
    expect(long.map((f) => `${relative(root, f.path)} (${f.lines} lines)`)).toEqual([]);
  });

  it(`has no function over ${MAX_FUNCTION_LINES} lines`, () => {
    expect(files.flatMap((path) => longFunctions(path, readFileSync(path, 'utf8'), MAX_FUNCTION_LINES))).toEqual([]);
  });

  it('the function measure catches a long function (so that the check above can fail)', () => {
    const body = Array.from({ length: MAX_FUNCTION_LINES }, (_, i) => `  const v${i} = ${i};`).join('\n');
    expect(longFunctions(join(root, 'src/x.ts'), `export function long() {\n${body}\n}\n`, MAX_FUNCTION_LINES)).toEqual(['src/x.ts:1 long (82 lines)']);
  });
});
