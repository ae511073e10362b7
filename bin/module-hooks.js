// Module hooks for job files, registered by bin/register.js (they run on Node's loader thread).
//
// 1. `import … from 'reconciler'` resolves to the engine this process runs, wherever the job file
//    lives (a folder outside any project, a mounted volume, a project that installed this package):
//    one engine per process, so that `TerminalError` and `defineReconciler` are the engine's own.
// 2. A `.ts` or `.js` file whose nearest package.json does not say "type" (or that has none) is an
//    ES module when it uses ES module syntax and nothing of CommonJS (require, module.exports,
//    __dirname), much as Node 22 decides for `.js`. Without this, a job file in such a folder is
//    compiled to CommonJS and cannot import the engine (an ES module). A file that uses CommonJS
//    is left to tsx, as are files under node_modules and those of a package that says its "type".
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** `reconciler` → the URL of the running engine's public API. */
let apiEntry;

export function initialize(data) {
  apiEntry = data?.apiEntry;
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

export async function resolve(specifier, context, nextResolve) {
  if (apiEntry && specifier === 'reconciler') {
    return nextResolve(apiEntry, context);
  }
  const resolved = await nextResolve(specifier, context);
  const url = asModule(resolved.url, resolved.format);
  return url ? { ...resolved, url, format: 'module' } : resolved;
}
