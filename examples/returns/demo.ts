/**
 * `npm start`: the daemon with the returns example, embedded in this process through the public
 * API (`runDaemon`), as an application of your own could embed it. The example's tables are
 * migrated here, not by the engine. On the embedded database (no DATABASE_URL) it is the
 * zero-configuration demo: seeded returns, a warehouse that records one every 20 s, and a
 * payment provider simulator in-process.
 *
 *     node --import ./bin/register.js examples/returns/demo.ts
 */
import { runDaemon } from 'reconciler';
import { seedDemoIfEmpty, startDemoWarehouse } from './src/demo.js';
import { stopDemoSimulator } from './src/demo-provider.js';
import { migrateReturns } from './src/migrate.js';

const code = await runDaemon({
  async setup({ database, log }) {
    await migrateReturns(database);
    if (database.kind !== 'embedded') return async () => stopDemoSimulator();
    await seedDemoIfEmpty(database, log);
    const stopWarehouse = startDemoWarehouse(database, log);
    return async () => {
      stopWarehouse();
      await stopDemoSimulator();
    };
  },
}).catch((error: unknown) => {
  // The same one line `reconciler daemon` prints for a bad setting or an unreachable database.
  const { exitCode, message } = error as { exitCode?: number; message?: string };
  process.stderr.write(`reconciler: ${message ?? String(error)}\n`);
  return exitCode ?? 2;
});
process.exit(code);
