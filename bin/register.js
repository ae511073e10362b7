// Prepares this process to run the engine and load job files: TypeScript through tsx (when it is
// installed), and the module hooks of ./module-hooks.js. Exports `entry`: the engine's sources in
// a checkout with tsx, else its build in dist/.
//
//     node --import ./bin/register.js examples/returns/demo.ts
import { existsSync } from 'node:fs';
import { register } from 'node:module';

const source = new URL('../src/', import.meta.url);
const built = new URL('../dist/src/', import.meta.url);

let tsx = false;
try {
  (await import('tsx/esm/api')).register();
  tsx = true;
} catch {
  // no tsx: TypeScript job files cannot load (the loader says so), JavaScript ones can
}

/** The folder of the engine this process runs: src/ (TypeScript, through tsx) or dist/src/. */
export const root = tsx && existsSync(new URL('index.ts', source)) ? source : built;
const extension = root === source ? 'ts' : 'js';
/** Whether TypeScript files can be imported. */
export const typescript = tsx;
export const entry = (name) => new URL(`${name}.${extension}`, root);

register(new URL('./module-hooks.js', import.meta.url), import.meta.url, { data: { apiEntry: entry('index').href } });
