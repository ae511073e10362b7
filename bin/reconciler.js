#!/usr/bin/env node
// The `reconciler` command. In a checkout with tsx installed it runs the TypeScript sources (so
// job files load as they are); in an install without the sources it runs the build in dist/.
import { existsSync } from 'node:fs';
import { entry } from './register.js';

const main = entry('cli/main');
if (!existsSync(main)) {
  process.stderr.write(`reconciler: no build of the engine at ${new URL('..', import.meta.url).pathname}dist/ and no TypeScript sources to run: run \`npm run build\` there, or reinstall the package\n`);
  process.exit(2);
}
// A reader that goes away (`reconciler history | head`) is not an error of ours.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error) => process.exit(error.code === 'EPIPE' ? 0 : 2));
}
const { main: run } = await import(main.href);
const code = await run(process.argv.slice(2));
// Exit only once piped output is flushed: process.exit() would cut it at 64 KiB.
await Promise.all([process.stdout, process.stderr].map((stream) => new Promise((resolve) => stream.write('', resolve))));
process.exit(code);
