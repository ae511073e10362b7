/** A fresh, migrated database per test file, dropped afterwards. */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import pino from 'pino';
import { drizzle } from 'drizzle-orm/node-postgres';
import { afterAll, beforeAll, beforeEach, inject } from 'vitest';
import type { Db } from '../../src/reconciler.js';
import { openDatabase, queryRows, type Database } from '../../src/store/database.js';
import { migrateDatabase } from '../../src/store/migrate.js';
import { migrateReturns } from '../../examples/returns/src/migrate.js';
import { sql, type SQL } from 'drizzle-orm';

export interface TestDatabase {
  url: string;
  name: string;
  database: Database;
  db: Db;
  /** Raw rows of a query. */
  rows<Row>(query: SQL): Promise<Row[]>;
  /** A drizzle handle that counts the statements sent through it. */
  counting(): { db: Db; statements: string[]; close(): Promise<void> };
  drop(): Promise<void>;
}

export const silentLog = pino({ level: 'silent' });

async function admin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: inject('adminUrl') });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export function databaseUrl(name: string): string {
  const url = new URL(inject('adminUrl'));
  url.pathname = `/${name}`;
  return url.toString();
}

/** Creates an empty database (not migrated) and returns its name. */
export async function createEmptyDatabase(): Promise<string> {
  const name = `reconciler_test_${randomBytes(5).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  return name;
}

export async function dropDatabase(name: string): Promise<void> {
  await admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
}

export interface TestDatabaseOptions {
  /** Apply the engine's migrations (default true). */
  migrate?: boolean;
  /** Also apply the returns example's migrations (its tables, trigger and index). */
  returns?: boolean;
}

export async function createTestDatabase(options: TestDatabaseOptions = {}): Promise<TestDatabase> {
  const name = await createEmptyDatabase();
  const url = databaseUrl(name);
  const database = await openDatabase({ databaseUrl: url, dataDir: '.data', log: silentLog });
  if (options.returns) await migrateReturns(database);
  else if (options.migrate !== false) await migrateDatabase(database);
  return {
    url,
    name,
    database,
    db: database.db,
    rows: (query) => queryRows(database.db, query),
    counting() {
      const statements: string[] = [];
      const pool = new pg.Pool({ connectionString: url, max: 4 });
      pool.on('error', () => undefined);
      const db = drizzle(pool, { logger: { logQuery: (query) => statements.push(query) } }) as unknown as Db;
      return { db, statements, close: () => pool.end() };
    },
    async drop() {
      await database.close();
      await dropDatabase(name);
    },
  };
}

/**
 * The usual setup of a test file: a fresh database before its tests, dropped after them,
 * optionally with the engine's tables emptied before each test. The returned object is
 * filled in by `beforeAll`; use it inside tests only.
 */
export function useTestDatabase(options: { resetEngineTables?: boolean; returns?: boolean } = {}): TestDatabase {
  const handle = {} as TestDatabase;
  beforeAll(async () => {
    Object.assign(handle, await createTestDatabase({ returns: Boolean(options.returns) }));
  });
  afterAll(async () => {
    await handle.drop?.();
  });
  if (options.resetEngineTables) {
    beforeEach(async () => {
      await handle.rows(sql`TRUNCATE reconciler.runs, reconciler.failures, reconciler.state`);
    });
  }
  return handle;
}
