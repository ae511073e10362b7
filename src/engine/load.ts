/**
 * Discovery: the jobs directory is the registry. Every file directly under it with a
 * script extension is a reconciler, named after the file's stem. A file that cannot be
 * used is reported as one line naming the file and the problem; the others load as usual.
 */
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, extname, join, relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { UserError, coerceError } from '../errors.js';
import { scrub } from '../secrets.js';
import { NAME_PATTERN, isDefinition, resolveReconciler, type Reconciler } from '../reconciler.js';

const EXTENSIONS = new Set(['.ts', '.mts', '.js', '.mjs']);

export interface LoadError {
  /** The file, relative to the current directory: `jobs/broken.ts`. */
  file: string;
  /** The reconciler name the file would have defined (its stem). */
  name: string;
  message: string;
  /**
   * For a syntax error: the offending line and a caret under the column, to print under
   * the message (`  12 | const x = ;` / `     |           ^`).
   */
  excerpt?: string;
}

export interface LoadResult {
  reconcilers: Reconciler[];
  errors: LoadError[];
}

/** `jobs/broken.ts: unknown option \`timout\`, did you mean \`timeout\`?` (one line; the excerpt is apart). */
export function formatLoadError(error: LoadError): string {
  return `${error.file}: ${error.message}`;
}

/** The one line, then a syntax error's excerpt under it: for the CLI's stderr and the daemon's log. */
export function describeLoadError(error: LoadError): string {
  return error.excerpt ? `${formatLoadError(error)}\n${error.excerpt}` : formatLoadError(error);
}

/** Where a syntax error is: 1-based line and column, and the text of that line. */
interface SyntaxLocation {
  path: string;
  line: number;
  column: number;
  text: string;
  reason: string;
}

/** The source line and a caret under the column. */
function excerptOf(location: SyntaxLocation): string {
  const number = String(location.line);
  const gutter = ' '.repeat(number.length);
  const text = location.text.replace(/\t/g, ' ');
  return `  ${number} | ${text}\n  ${gutter} | ${' '.repeat(Math.max(0, location.column - 1))}^`;
}

function lineOf(path: string, line: number): string {
  try {
    return readFileSync(path, 'utf8').split(/\r?\n/)[line - 1] ?? '';
  } catch {
    return '';
  }
}

/**
 * Where a TypeScript file's syntax error is: tsx compiles with esbuild, whose message names
 * `<file>:<line>:<column>: ERROR: <reason>` (the file may be one the job file imports).
 */
function transformErrorLocation(error: Error): SyntaxLocation | undefined {
  const match = /^(.+?):(\d+):(\d+): ERROR: (.+)$/m.exec(error.message);
  if (!match) return undefined;
  const [, path, line, column, reason] = match;
  return { path: path!, line: Number(line), column: Number(column) + 1, text: lineOf(path!, Number(line)), reason: reason! };
}

/**
 * Where a JavaScript file's syntax error is: Node's SyntaxError for an ES module carries no
 * position, so ask Node's own parser, which prints `<file>:<line>`, the line, and a caret under
 * the column. The source goes in on stdin as an ES module (as job files load: `node --check` on
 * a `.js` file in a folder without `"type"` would parse it as CommonJS). Only run for a file that
 * failed with a SyntaxError.
 */
async function checkedSyntaxLocation(path: string): Promise<SyntaxLocation | undefined> {
  let source: string;
  try {
    source = readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
  const stderr = await new Promise<string>((resolve) => {
    const child = execFile(process.execPath, ['--input-type=module', '--check'], { timeout: 10_000 }, (_error, _stdout, output) => resolve(String(output)));
    child.stdin?.end(source);
  });
  const match = /^(.+):(\d+)\r?\n(.*)\r?\n( *)\^+.*\r?\n(?:.*\r?\n)*?SyntaxError: (.+)$/m.exec(stderr);
  if (!match) return undefined;
  const [, , line, text, spaces, reason] = match;
  return { path, line: Number(line), column: spaces!.length + 1, text: text!, reason: reason! };
}

/** A syntax error in the job file (or a file it imports), with its position; undefined for other errors. */
async function syntaxProblem(error: Error, relativePath: string, file: string): Promise<Pick<LoadError, 'message' | 'excerpt'> | undefined> {
  const path = resolve(relativePath);
  const location =
    error.name === 'TransformError' ? transformErrorLocation(error)
    : error.name === 'SyntaxError' && /\.m?js$/.test(path) ? await checkedSyntaxLocation(path)
    : undefined;
  if (!location) return undefined;
  const where = location.path === path ? `line ${location.line}, column ${location.column}` : `${shownPath(location.path)}, line ${location.line}, column ${location.column} (a file ${file} imports)`;
  return { message: scrub(`syntax error at ${where}: ${location.reason}`), excerpt: scrub(excerptOf(location)) };
}

/** A path as people read it: relative to the current directory when under it, else absolute. */
function shownPath(path: string): string {
  const shown = relative(process.cwd(), path);
  return shown === '' || shown.startsWith('..') ? resolve(path) : shown;
}

function isJobFile(file: string): boolean {
  if (file.startsWith('.') || file.startsWith('_')) return false;
  if (file.endsWith('.d.ts') || file.endsWith('.d.mts') || /\.(test|spec)\.[mc]?[jt]s$/.test(file)) return false;
  return EXTENSIONS.has(extname(file));
}

/** Why importing failed, as one line with no secrets (it is printed, logged and served by /readyz). */
function importProblem(error: Error, file: string): string {
  if (error.name === 'DefinitionError') return scrub(error.message);
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ERR_UNKNOWN_FILE_EXTENSION' && /\.m?ts$/.test(file)) {
    return 'cannot import TypeScript here (tsx is not installed): build with `npm run build` and set JOBS_DIR=dist/jobs';
  }
  if (code === 'ERR_REQUIRE_ESM' || code === 'ERR_REQUIRE_CYCLE_MODULE' || /require\(\) (of )?ES Module|Cannot use import statement outside a module/i.test(error.message)) {
    return (
      'it was loaded as CommonJS (its package.json says "type": "commonjs", or it uses require, module.exports or __dirname), ' +
      'and the engine is an ES module: name it .mts (or .mjs), or use import syntax only'
    );
  }
  const firstLine = (error.message || String(error)).split('\n')[0]!.trim();
  return scrub(`failed to import: ${error.name && error.name !== 'Error' ? `${error.name}: ` : ''}${firstLine}`);
}

/** Loads every job file under `jobsDir`. Never throws for a bad file; throws a UserError if the directory is missing. */
export async function loadReconcilers(jobsDir: string): Promise<LoadResult> {
  let entries: string[];
  try {
    if (!statSync(jobsDir).isDirectory()) throw new Error('not a directory');
    entries = readdirSync(jobsDir).filter(isJobFile).sort();
  } catch {
    throw new UserError(`JOBS_DIR ${jobsDir} is not a directory: create it, or set JOBS_DIR to the folder that holds your reconciler files`);
  }
  const reconcilers: Reconciler[] = [];
  const errors: LoadError[] = [];
  const byName = new Map<string, string>();
  const twins = new Set<string>();
  for (const entry of entries) {
    const path = join(jobsDir, entry);
    const file = shownPath(path);
    const name = basename(entry, extname(entry));
    if (!NAME_PATTERN.test(name)) {
      errors.push({ file, name, message: `the file name \`${name}\` is not a valid reconciler name: use kebab-case (lowercase letters, digits and dashes), e.g. settle-returns.ts` });
      continue;
    }
    const twin = byName.get(name);
    if (twin !== undefined) {
      errors.push({ file, name, message: `shares the reconciler name \`${name}\` with ${twin}: neither runs until one is removed or renamed` });
      twins.add(name);
      continue;
    }
    byName.set(name, file);
    let module: Record<string, unknown>;
    try {
      module = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
    } catch (thrown) {
      const error = coerceError(thrown);
      errors.push({ file, name, ...((await syntaxProblem(error, path, file)) ?? { message: importProblem(error, entry) }) });
      continue;
    }
    const exported = module.default;
    if (exported === undefined) {
      errors.push({ file, name, message: 'does not default-export a reconciler: add `export default defineReconciler({ schedule, scan, key, reconcile })`' });
    } else if (!isDefinition(exported)) {
      errors.push({ file, name, message: 'its default export is not a reconciler: wrap it in defineReconciler({ ... }) so it is validated' });
    } else {
      reconcilers.push(resolveReconciler(name, file, exported));
    }
  }
  // Two files, one name: which one is meant (a stale build beside its source?) is anyone's
  // guess, and running the wrong one may move money. Neither runs.
  for (const reconciler of reconcilers.filter((r) => twins.has(r.name))) {
    const other = errors.find((e) => e.name === reconciler.name && e.file !== reconciler.file)!;
    errors.push({ file: reconciler.file, name: reconciler.name, message: `shares the reconciler name \`${reconciler.name}\` with ${other.file}: neither runs until one is removed or renamed` });
  }
  return { reconcilers: reconcilers.filter((r) => !twins.has(r.name)), errors };
}
