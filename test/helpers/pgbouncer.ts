/** The testkit's pgbouncer helpers (testkit/pgbouncer.ts), under the name the tests import. */
export * from '../../testkit/pgbouncer.js';
