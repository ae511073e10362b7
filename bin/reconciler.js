#!/usr/bin/env node
// The `reconciler` command. In a checkout with dev dependencies it runs the TypeScript
// sources through tsx (so jobs/*.ts load as they are); in a production install it runs
// the build in dist/ (`npm run build`).
import { existsSync } from 'node:fs';

const source = new URL('../src/cli/main.ts', import.meta.url);
const built = new URL('../dist/src/cli/main.js', import.meta.url);

let entry = built;
if (existsSync(source)) {
  try {
    const { register } = await import('tsx/esm/api');
    register();
    entry = source;
  } catch {
    // no tsx (production install): use the build
  }
}
if (!existsSync(entry)) {
  process.stderr.write('reconciler: no build found in dist/ and tsx is not installed: run `npm install` (development) or `npm run build`\n');
  process.exit(2);
}
// A reader that goes away (`reconciler history | head`) is not an error of ours.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error) => process.exit(error.code === 'EPIPE' ? 0 : 2));
}
const { main } = await import(entry.href);
const code = await main(process.argv.slice(2));
// Exit only once piped output is flushed: process.exit() would cut it at 64 KiB.
await Promise.all([process.stdout, process.stderr].map((stream) => new Promise((resolve) => stream.write('', resolve))));
process.exit(code);
