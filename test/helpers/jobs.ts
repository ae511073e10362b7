/** The testkit's jobs helpers (testkit/jobs.ts), under the name the tests import. */
export * from '../../testkit/jobs.js';
