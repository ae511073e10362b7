/**
 * Scratch databases on a PostgreSQL server: created empty or migrated (the engine's tables, or
 * the returns example's with them), dropped afterwards. Every caller names the server by its
 * admin URL: the tests get it from their global setup, the fault runs and benchmarks from
 * TEST_DATABASE_URL.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import pino from 'pino';
import { drizzle } from 'drizzle-orm/node-postgres';
import type { SQL } from 'drizzle-orm';
import type { Db } from '../src/reconciler.js';
import { openDatabase, queryRows, type Database } from '../src/store/database.js';
import { migrateDatabase } from '../src/store/migrate.js';
import { migrateReturns } from '../examples/returns/src/migrate.js';

export const silentLog = pino({ level: 'silent' });

/** The server the fault runs and benchmarks use: TEST_DATABASE_URL, else the local one. */
export const DEFAULT_ADMIN_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

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

/** Runs one statement as the admin user of `adminUrl` (a database of that server). */
export async function adminQuery(adminUrl: string, query: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(query);
  } finally {
    await client.end();
  }
}

/** The URL of database `name` on the server of `adminUrl`. */
export function databaseUrl(adminUrl: string, name: string): string {
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Creates an empty database (not migrated) named `<prefix>_<random>` and returns its name. */
export async function createEmptyDatabase(adminUrl: string, prefix = 'reconciler_test'): Promise<string> {
  const name = `${prefix}_${randomBytes(5).toString('hex')}`;
  await adminQuery(adminUrl, `CREATE DATABASE ${name}`);
  return name;
}

export async function dropDatabase(adminUrl: string, name: string): Promise<void> {
  await adminQuery(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
}

export interface TestDatabaseOptions {
  /** Apply the engine's migrations (default true). */
  migrate?: boolean;
  /** Also apply the returns example's migrations (its tables, trigger and index). */
  returns?: boolean;
  /** The database name's prefix (default `reconciler_test`). */
  prefix?: string;
  /** The pool size of the opened handle (default: the engine's). */
  poolSize?: number;
}

export async function createTestDatabase(adminUrl: string, options: TestDatabaseOptions = {}): Promise<TestDatabase> {
  const name = await createEmptyDatabase(adminUrl, options.prefix);
  const url = databaseUrl(adminUrl, name);
  const database = await openDatabase({ databaseUrl: url, dataDir: '.data', log: silentLog, ...(options.poolSize ? { poolSize: options.poolSize } : {}) });
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
      await dropDatabase(adminUrl, name);
    },
  };
}
