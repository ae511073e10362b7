import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { once } from 'node:events';
import pg from 'pg';
import pino from 'pino';
import { sql } from 'drizzle-orm';
import { openDatabase, queryRows } from '../src/store/database.js';
import { useTestDatabase } from './helpers/db.js';
import { runCli } from './helpers/processes.js';

const t = useTestDatabase();

/** A logger whose lines can be awaited. */
function capturingLogger() {
  const lines: { msg: string; level: number; event?: string }[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      lines.push(JSON.parse(String(chunk)));
      stream.emit('line');
      done();
    },
  });
  return { log: pino({ level: 'debug' }, stream), lines, stream };
}

describe('the PostgreSQL pool', () => {
  it('keeps its connection after a query the server rejects (a constraint violation), and closes one whose query timed out', async () => {
    const { log } = capturingLogger();
    const database = await openDatabase({ databaseUrl: t.url, dataDir: '.data', log, poolSize: 1, queryTimeoutMs: 300 });
    try {
      const pid = async () => (await queryRows<{ pid: number }>(database.db, sql`SELECT pg_backend_pid() AS pid`))[0]!.pid;
      const first = await pid();
      await expect(queryRows(database.db, sql`SELECT 1 / 0`)).rejects.toThrow();
      await expect(queryRows(database.db, sql`SELECT * FROM no_such_table_here`)).rejects.toThrow();
      expect(await pid(), 'the same connection: no reconnection per failed query').toBe(first);
      await expect(queryRows(database.db, sql`SELECT pg_sleep(2)`)).rejects.toThrow();
      expect(await pid(), 'a new connection after a timeout').not.toBe(first);
    } finally {
      await database.close();
    }
  });

  it('survives its idle connections being dropped (as in a database restart) and reconnects', async () => {
    const { log, lines, stream } = capturingLogger();
    const database = await openDatabase({ databaseUrl: t.url, dataDir: '.data', log });
    try {
      await queryRows(database.db, sql`SELECT 1`);
      const admin = new pg.Client({ connectionString: t.url });
      await admin.connect();
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'reconciler'`);
      await admin.end();
      while (!lines.some((l) => l.event === 'database:connection-lost')) await once(stream, 'line');
      const [row] = await queryRows<{ ok: number }>(database.db, sql`SELECT 1 AS ok`);
      expect(row!.ok).toBe(1);
    } finally {
      await database.close();
    }
  });

  it('survives a connection dropped while checked out between two queries (inside a transaction), as in a database restart', async () => {
    const { log, lines, stream } = capturingLogger();
    const database = await openDatabase({ databaseUrl: t.url, dataDir: '.data', log });
    try {
      const held = database.withExclusiveLock(4242, async (db) => {
        const [row] = await queryRows<{ pid: number }>(db, sql`SELECT pg_backend_pid() AS pid`);
        const admin = new pg.Client({ connectionString: t.url });
        await admin.connect();
        await admin.query('SELECT pg_terminate_backend($1)', [row!.pid]);
        await admin.end();
        // pg's pool leaves a checked-out connection without an 'error' listener: unguarded, this ends the process.
        while (!lines.some((l) => l.event === 'database:connection-lost')) await once(stream, 'line');
        await queryRows(db, sql`SELECT 1`);
      });
      await expect(held).rejects.toThrow(/not queryable|terminat/i);
      const [row] = await queryRows<{ ok: number }>(database.db, sql`SELECT 1 AS ok`);
      expect(row!.ok).toBe(1);
    } finally {
      await database.close();
    }
  });

  it('reports an unreachable server as one line naming the target, without its password', async () => {
    await expect(openDatabase({ databaseUrl: 'postgres://app:hunter2secret@127.0.0.1:1/app', dataDir: '.data', log: pino({ level: 'silent' }) })).rejects.toThrow(
      /^cannot connect to PostgreSQL at postgres:\/\/app:\*\*\*@127\.0\.0\.1:1\/app: /,
    );
  });
});

describe('the example reconciler (examples/end-idle-transactions.ts)', () => {
  it('shows under --dry-run, then ends, a session left idle in a transaction', async () => {
    const idle = new pg.Client({ connectionString: t.url, application_name: 'forgotten-worker' });
    await idle.connect();
    const ended = new Promise<Error>((resolve) => idle.on('error', resolve));
    await idle.query('BEGIN');
    await idle.query('SELECT 1');
    const env = { DATABASE_URL: t.url, JOBS_DIR: 'examples', IDLE_TRANSACTION_LIMIT_SECONDS: '0' };

    const dry = await runCli(['run', 'end-idle-transactions', '--dry-run'], env);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/would be changed\s+\d+@.*would terminate pid \d+ \(postgres, forgotten-worker, idle \d+s\)/);

    const real = await runCli(['run', 'end-idle-transactions'], env);
    expect(real.stdout).toMatch(/end-idle-transactions: pass \d+ succeeded .*: 1 found, 1 changed/);
    expect(String(await ended)).toContain('terminat');
    const again = await runCli(['run', 'end-idle-transactions'], env);
    expect(again.stdout).toContain(': 0 found');
  });
});
