// Module hooks for job files, and the functions that install them and pick the engine a process
// runs (used by bin/register.js and bin/reconciler.js; nothing here runs on import).
//
// 1. `import … from 'reconciler'` resolves to the engine this process runs, wherever the job file
//    lives (a folder outside any project, a mounted volume, a project that installed this package):
//    one engine per process, so that `TerminalError` and `defineReconciler` are the engine's own.
// 2. A `.ts` or `.js` file whose nearest package.json does not say "type" (or that has none) is an
//    ES module when it uses ES module syntax and nothing of CommonJS (require, module.exports,
//    __dirname), much as Node 22 decides for `.js`. Without this, a job file in such a folder is
//    compiled to CommonJS and cannot import the engine (an ES module). A file that uses CommonJS
//    is left to tsx, as are files under node_modules and those of a package that says its "type".
//
// The hooks run on Node's loader thread (`module.register`), or in the thread itself where Node
// has `module.registerHooks` (22.15, 23.5 and later): no hop to another thread per import there.
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** `reconciler` → the URL of the running engine's public API. */
let apiEntry;
/** Imports of the engine's sources (`src/**.ts`) load their build instead (the benchmarks: the engine as it ships). */
let sourcesToBuild = false;

export function initialize(data) {
  apiEntry = data?.apiEntry;
  sourcesToBuild = data?.sourcesToBuild === true;
}

const packageTypes = new Map();

/** "module", "commonjs", or undefined when the nearest package.json says nothing (or there is none). */
function packageType(directory) {
  if (packageTypes.has(directory)) return packageTypes.get(directory);
  let type;
  const manifest = join(directory, 'package.json');
  if (existsSync(manifest)) {
    try {
      type = JSON.parse(readFileSync(manifest, 'utf8')).type ?? null;
    } catch {
      type = null;
    }
  } else {
    const parent = dirname(directory);
    type = parent === directory ? null : packageType(parent);
  }
  packageTypes.set(directory, type);
  return type;
}

const ES_MODULE_SYNTAX = /^\s*(?:import\s*[\w{*'"]|export\s)/m;
const COMMONJS_SYNTAX = /\b(?:require\s*\(|module\.exports|exports\.\w|__dirname|__filename)|^\s*import\s+\w+\s*=\s*require\b/m;

/**
 * The file URL to load as an ES module instead, or undefined. tsx marks a file it takes for
 * CommonJS with a query (`…/helper.ts?tsx-commonjs-…`, percent-encoded into the path): that
 * decoration is dropped along with the format.
 */
function asModule(url, format) {
  if (!url.startsWith('file:') || url.includes('/node_modules/')) return undefined;
  if (format !== undefined && format !== null && format !== 'commonjs' && format !== 'commonjs-typescript') return undefined;
  const file = new URL(url);
  const pathname = decodeURIComponent(file.pathname).split('?')[0];
  if (!/\.(?:ts|js)$/.test(pathname)) return undefined;
  const path = fileURLToPath(new URL(`file://${pathname.replace(/[?#%]/g, encodeURIComponent)}`));
  if (packageType(dirname(path))) return undefined; // the folder says what it is
  try {
    const source = readFileSync(path, 'utf8');
    if (!ES_MODULE_SYNTAX.test(source) || COMMONJS_SYNTAX.test(source)) return undefined;
    // tsx's own markers go; a query of the importer's (`./x.js?v=2`) stays.
    const search = new URLSearchParams(file.search);
    for (const key of [...search.keys()]) if (key.startsWith('tsx')) search.delete(key);
    const moduleUrl = pathToFileURL(path);
    moduleUrl.search = search.toString();
    return moduleUrl.href;
  } catch {
    return undefined;
  }
}

/** What `resolve` makes of what the next hook resolved. */
function adjusted(resolved) {
  const url = asModule(resolved.url, resolved.format);
  return url ? { ...resolved, url, format: 'module' } : resolved;
}

/**
 * The engine's public API in this package, as sources and as the build. A job file that imports
 * it by path (`../src/index.js`, as in a checkout) gets the engine the process runs, like one that
 * imports `reconciler`: a second copy would have its own module state (the secrets `registerSecret`
 * masks, the engine schema), and a secret registered in it would not be masked by the engine.
 */
const ENGINE_INDEXES = new Set([new URL('../src/index.ts', import.meta.url).href, new URL('../dist/src/index.js', import.meta.url).href]);

/** True when `url` is the other copy of the running engine's public API. */
const otherEngine = (url) => apiEntry !== undefined && url !== apiEntry && ENGINE_INDEXES.has(url);

export async function resolve(specifier, context, nextResolve) {
  if (apiEntry && specifier === 'reconciler') return nextResolve(apiEntry, context);
  const resolved = await nextResolve(specifier, context);
  if (otherEngine(resolved.url)) return nextResolve(apiEntry, context);
  return (sourcesToBuild && builtOf(resolved.url)) || adjusted(resolved);
}

const SOURCES_URL = new URL('../src/', import.meta.url).href;
const BUILT_URL = new URL('../dist/src/', import.meta.url).href;

/** `src/engine/item.ts` → `dist/src/engine/item.js`, as a resolution; undefined for anything else. */
function builtOf(url) {
  if (!url.startsWith(SOURCES_URL) || !url.endsWith('.ts') || url.endsWith('.d.ts')) return undefined;
  return { url: `${BUILT_URL}${url.slice(SOURCES_URL.length, -3)}.js`, format: 'module', shortCircuit: true };
}

/** `resolve` for `module.registerHooks`, where `nextResolve` answers at once. */
function resolveInThread(specifier, context, nextResolve) {
  if (apiEntry && specifier === 'reconciler') return nextResolve(apiEntry, context);
  const resolved = nextResolve(specifier, context);
  return otherEngine(resolved.url) ? nextResolve(apiEntry, context) : adjusted(resolved);
}

const RELATIVE_SCRIPT = /^\.\.?\/[^?#]*\.(m?js|cjs)$/;

/**
 * A package's own relative imports (`./sql/sql.js`), resolved without Node's resolver. On Node
 * 22 and later that resolver reads the package's package.json again for every file it resolves,
 * parsing its whole "exports" each time: drizzle-orm's is 180 kB, imported file by file, and it
 * cost `reconciler run` over a second of CPU on Node 24. The answer is the same: the file the
 * path names, its real path (as Node's), its format from the extension or the package's "type".
 * Anything else (a bare name, a path without its extension, a folder) goes to Node as before.
 */
export function resolveRelativeInPackage(specifier, context, nextResolve) {
  const match = RELATIVE_SCRIPT.exec(specifier);
  const parent = context.parentURL;
  if (match && parent?.startsWith('file:') && parent.includes('/node_modules/') && context.conditions?.includes('import') && !context.importAttributes?.type) {
    let path;
    try {
      path = realpathSync.native(fileURLToPath(new URL(specifier, parent)));
    } catch {
      return nextResolve(specifier, context); // no such file: Node says so in its own words
    }
    const format = match[1] === 'mjs' ? 'module' : match[1] === 'cjs' ? 'commonjs' : packageType(dirname(path));
    if (format === 'module' || format === 'commonjs') return { url: pathToFileURL(path).href, format, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}

/** A package name, as a bare specifier starts with it: `pg`, `drizzle-orm/pg-core`, `@scope/name/sub`. */
const BARE = /^(?:@[^/:?#]+\/)?[^./:?#][^/:?#]*(?:\/|$)/;

const lookupRoots = new Map();
/**
 * The folder whose bare imports resolve as this folder's do: the folder itself when it holds a
 * node_modules (the first place Node looks) or a package.json (a package's own name and its
 * "imports" depend on it), else its parent's. Every file of dist/src/ shares one.
 */
function lookupRoot(directory) {
  let root = lookupRoots.get(directory);
  if (root === undefined) {
    const parent = dirname(directory);
    root = parent === directory || existsSync(join(directory, 'node_modules')) || existsSync(join(directory, 'package.json')) ? directory : lookupRoot(parent);
    lookupRoots.set(directory, root);
  }
  return root;
}

const bareResolved = new Map();
/**
 * A bare import (`import { sql } from 'drizzle-orm'`) resolved once per place it can resolve
 * differently (`lookupRoot`) and set of conditions, instead of once per importing file: on Node 22
 * and later each resolve parses the package's whole "exports" again (drizzle-orm's is 180 kB, and
 * nineteen of the engine's files import it). What cannot be resolved is left to Node each time.
 */
export function resolveBareOnce(specifier, context, nextResolve) {
  const parent = context.parentURL;
  if (!BARE.test(specifier) || !parent?.startsWith('file:') || (context.importAttributes && Object.keys(context.importAttributes).length > 0)) {
    return nextResolve(specifier, context);
  }
  const key = `${specifier}\0${context.conditions?.join(',')}\0${lookupRoot(dirname(fileURLToPath(parent)))}`;
  let resolved = bareResolved.get(key);
  if (resolved === undefined) {
    resolved = { ...nextResolve(specifier, context), shortCircuit: true };
    bareResolved.set(key, resolved);
  }
  return resolved;
}

const inThreadHooks = typeof nodeModule.registerHooks === 'function';

/** Where Node has a compile cache (22.1 and later), compiled code is kept between runs (in the system's temporary folder, or NODE_COMPILE_CACHE). */
export function enableCompileCache() {
  try {
    nodeModule.enableCompileCache?.();
  } catch {
    // an unwritable cache folder only costs speed
  }
}

/** Installs `resolveRelativeInPackage` and `resolveBareOnce` where hooks can run in the thread (where Node 24 needs it); elsewhere there is nothing to gain. */
export function registerFastPackageResolve() {
  if (inThreadHooks) nodeModule.registerHooks({ resolve: (specifier, context, nextResolve) => resolveRelativeInPackage(specifier, context, (s, c) => resolveBareOnce(s, c, nextResolve)) });
}

/** Whether tsx is installed (without loading it). */
export function tsxInstalled() {
  try {
    import.meta.resolve('tsx/esm/api');
    return true;
  } catch {
    return false;
  }
}

let tsx;
/** Registers tsx, so that TypeScript files can be imported; false when it is not installed. Once per process. */
export async function registerTypeScript() {
  tsx ??= import('tsx/esm/api').then(
    (api) => {
      api.register();
      return true;
    },
    () => false, // no tsx: TypeScript job files cannot load (the loader says so), JavaScript ones can
  );
  return tsx;
}

let jobHooks = false;
/**
 * Installs this file's hooks with `apiEntry` (the URL of the engine's index), once per process:
 * in the thread where Node can (`inThread`, the CLI), else on the loader thread.
 */
export function registerJobHooks(entry, { inThread = true, sourcesToBuild = false } = {}) {
  if (jobHooks) return;
  jobHooks = true;
  if (inThread && inThreadHooks && !sourcesToBuild) {
    initialize({ apiEntry: entry });
    nodeModule.registerHooks({ resolve: resolveInThread });
  } else {
    nodeModule.register(new URL('./module-hooks.js', import.meta.url), import.meta.url, { data: { apiEntry: entry, sourcesToBuild } });
  }
}

const SOURCE = new URL('../src/', import.meta.url);
const BUILT = new URL('../dist/src/', import.meta.url);

/** Whether the engine's TypeScript sources are here (a checkout, not an install). */
export const hasSources = () => existsSync(new URL('index.ts', SOURCE));

/**
 * Whether dist/src/ is a build of the sources as they are now: every file under src/ has its
 * output there (`x.ts` → `x.js`, other files copied), written no earlier than the file was last
 * changed. An edit, a checkout or a pull after the last `npm run build` makes it stale.
 */
export function buildIsCurrent() {
  const outdated = (sources, built) => {
    let entries;
    try {
      entries = readdirSync(sources, { withFileTypes: true });
    } catch {
      return true;
    }
    return entries.some((entry) => {
      const file = join(sources, entry.name);
      if (entry.isDirectory()) return outdated(file, join(built, entry.name));
      if (!entry.isFile() || entry.name.endsWith('.d.ts')) return false;
      const output = statSync(join(built, entry.name.replace(/\.ts$/, '.js')), { throwIfNoEntry: false });
      return !output || output.mtimeMs < statSync(file).mtimeMs;
    });
  };
  return !outdated(fileURLToPath(SOURCE), fileURLToPath(BUILT));
}

/**
 * The engine a process runs: its folder (`root`), and `entry(name)` for a module of it.
 * `build: 'when current'` (the CLI) runs dist/src/ wherever it is current, the sources through
 * tsx where it is not (never an old build); `'when no sources'` runs the sources wherever they
 * and tsx are here. Without the sources, it is always the build.
 */
export function pickEngine({ build, typescript }) {
  const fromSources = hasSources() && typescript && (build === 'when no sources' || !buildIsCurrent());
  const root = fromSources ? SOURCE : BUILT;
  return { root, fromSources, entry: (name) => new URL(`${name}.${fromSources ? 'ts' : 'js'}`, root) };
}
