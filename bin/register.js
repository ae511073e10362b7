// Prepares this process to run the engine and load job files: TypeScript through tsx (when it is
// installed), and the module hooks of ./module-hooks.js, before anything else is imported.
// Exports `entry`: the engine's sources in a checkout with tsx, else its build in dist/.
//
//     node --import ./bin/register.js examples/returns/demo.ts
//
// (`reconciler` itself, bin/reconciler.js, installs the same later and only as needed.)
import { pickEngine, registerJobHooks, registerTypeScript } from './module-hooks.js';

/** Whether TypeScript files can be imported. */
export const typescript = await registerTypeScript();
/**
 * RECONCILER_ENGINE=build (`npm run bench`): the engine as it ships, its build in dist/, also
 * where a script imports the sources by path; refused when the build is older than the sources.
 */
const asShipped = process.env.RECONCILER_ENGINE === 'build';
const engine = pickEngine({ build: asShipped ? 'when current' : 'when no sources', typescript });
if (asShipped && engine.fromSources) {
  process.stderr.write('RECONCILER_ENGINE=build: dist/ is missing or older than src/: run `npm run build` first\n');
  process.exit(2);
}
/** The folder of the engine this process runs: src/ (TypeScript, through tsx) or dist/src/. */
export const root = engine.root;
export const entry = engine.entry;

registerJobHooks(entry('index').href, { inThread: false, sourcesToBuild: asShipped });
