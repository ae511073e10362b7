import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  // `import … from 'reconciler'` (the examples, job fixtures) is the engine's sources here, as bin/register.js maps it.
  resolve: { alias: [{ find: /^reconciler$/, replacement: fileURLToPath(new URL('./src/index.ts', import.meta.url)) }] },
  test: {
    include: ['test/**/*.test.ts', 'src/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Tests that spawn daemons and CLI processes compete for 2 cores; two files at a time.
    maxWorkers: 2,
    // The JSON report is what .ci/run counts for its "N passed, N failed" line.
    reporters: ['default', 'json'],
    outputFile: { json: 'test/.tmp/vitest-report.json' },
  },
});
