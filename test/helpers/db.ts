/**
 * A fresh, migrated database per test file, dropped afterwards: the testkit's databases
 * (testkit/database.ts) on the server the global setup found, with vitest's hooks.
 */
import { afterAll, beforeAll, beforeEach, inject } from 'vitest';
import { sql } from 'drizzle-orm';
import * as kit from '../../testkit/database.js';
import type { TestDatabase, TestDatabaseOptions } from '../../testkit/database.js';

export { silentLog, type TestDatabase, type TestDatabaseOptions } from '../../testkit/database.js';

export function databaseUrl(name: string): string {
  return kit.databaseUrl(inject('adminUrl'), name);
}

/** Creates an empty database (not migrated) and returns its name. */
export function createEmptyDatabase(): Promise<string> {
  return kit.createEmptyDatabase(inject('adminUrl'));
}

export function dropDatabase(name: string): Promise<void> {
  return kit.dropDatabase(inject('adminUrl'), name);
}

export function createTestDatabase(options: TestDatabaseOptions = {}): Promise<TestDatabase> {
  return kit.createTestDatabase(inject('adminUrl'), options);
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
      await handle.rows(sql`TRUNCATE reconciler.runs, reconciler.failures, reconciler.state, reconciler.audit`);
    });
  }
  return handle;
}
