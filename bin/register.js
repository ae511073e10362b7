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
const engine = pickEngine({ build: 'when no sources', typescript });
/** The folder of the engine this process runs: src/ (TypeScript, through tsx) or dist/src/. */
export const root = engine.root;
export const entry = engine.entry;

registerJobHooks(entry('index').href, { inThread: false });
