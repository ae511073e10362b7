/** The testkit's proxy helpers (testkit/proxy.ts), under the name the tests import. */
export * from '../../testkit/proxy.js';
