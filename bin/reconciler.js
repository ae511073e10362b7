#!/usr/bin/env node
// The `reconciler` command. It runs the engine's build in dist/ wherever that build is current,
// and in a checkout without one (or with one older than the sources) the TypeScript sources
// through tsx: never an old build. Start-up is kept small (docs/performance.md, "Start-up"):
// compiled code is cached between runs where Node can, and tsx and the job files' module hooks
// are installed only once a command that loads job files has loaded the engine.
import { existsSync } from 'node:fs';
import { enableCompileCache, pickEngine, registerFastPackageResolve, registerJobHooks, registerTypeScript, tsxInstalled } from './module-hooks.js';

enableCompileCache();
registerFastPackageResolve();
const engine = pickEngine({ build: 'when current', typescript: tsxInstalled() });
if (engine.fromSources) await registerTypeScript();
const main = engine.entry('cli/main');
if (!existsSync(main)) {
  process.stderr.write(`reconciler: no build of the engine at ${new URL('..', import.meta.url).pathname}dist/ and no TypeScript sources to run: run \`npm run build\` there, or reinstall the package\n`);
  process.exit(2);
}
// A reader that goes away (`reconciler history | head`) is not an error of ours.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error) => process.exit(error.code === 'EPIPE' ? 0 : 2));
}
const { main: run } = await import(main.href);
const code = await run(process.argv.slice(2), {
  // Job files may be TypeScript, and import `reconciler`: this engine.
  loadJobs: async () => {
    await registerTypeScript();
    registerJobHooks(engine.entry('index').href);
  },
});
// Exit only once piped output is flushed: process.exit() would cut it at 64 KiB.
await Promise.all([process.stdout, process.stderr].map((stream) => new Promise((resolve) => stream.write('', resolve))));
process.exit(code);
