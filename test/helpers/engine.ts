/** The testkit's engine helpers (testkit/engine.ts), under the name the tests import. */
export * from '../../testkit/engine.js';
