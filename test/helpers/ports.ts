/** The testkit's ports helpers (testkit/ports.ts), under the name the tests import. */
export * from '../../testkit/ports.js';
