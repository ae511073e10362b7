/**
 * settle-returns, the example's reconciler, as the harnesses vary it. The job file
 * (examples/returns/jobs/settle-returns.ts) stays the one definition: a variant is that file's
 * definition with some of its options replaced, never a copy of its scan, key or reconcile.
 *
 * - `settleReturns(variant)`: the definition itself, for an engine in this process (the benchmarks).
 * - `settleReturnsJobFile(variant, from)`: the source of a job file that does the same, for a
 *   daemon or CLI in its own process (the tests, the fault runs against a build).
 * - `runSettleReturnsAction(db, action, key, who)`: one of its manual actions, in a transaction.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { defineReconciler, type Db, type ReconcilerDefinition } from '../src/reconciler.js';
import shipped from '../examples/returns/jobs/settle-returns.js';
import { settleReturn, type ReturnToSettle } from '../examples/returns/src/service.js';
import type { PaymentProvider } from '../examples/returns/src/provider.js';
import { API, REPO_ROOT } from './jobs.js';

/** Options a variant may replace; what it leaves out stays as shipped. `wakeOn: []` turns wakes off, `partitions: 1` partitioning. */
export type SettleReturnsOptions = Partial<Pick<ReconcilerDefinition<ReturnToSettle>, 'schedule' | 'concurrency' | 'partitions' | 'wakeOn' | 'timeout' | 'retry' | 'pageSize'>>;

/** The shipped definition with `options` replaced; with `provider`, items are settled through it instead of the one PAYMENT_PROVIDER_* configures. */
export function settleReturns(options: SettleReturnsOptions = {}, provider?: () => PaymentProvider): ReconcilerDefinition<ReturnToSettle> {
  return defineReconciler<ReturnToSettle>({ ...shipped, ...options, ...(provider ? { reconcile: (ret, ctx) => settleReturn(ret.id, ctx, provider) } : {}) });
}

/** Where a job file finds the public API and the shipped job file: this checkout's sources, or a build's modules. */
export interface SettleReturnsModules {
  api: string;
  jobFile: string;
}

export const SOURCE_MODULES: SettleReturnsModules = { api: API, jobFile: join(REPO_ROOT, 'examples', 'returns', 'jobs', 'settle-returns.ts') };

/** A job file's source that default-exports `settleReturns(options)`; its reconciler is named after the file it is written to. */
export function settleReturnsJobFile(options: SettleReturnsOptions = {}, from: SettleReturnsModules = SOURCE_MODULES): string {
  return `import { defineReconciler } from ${JSON.stringify(from.api)};
import shipped from ${JSON.stringify(from.jobFile)};
export default defineReconciler({ ...shipped, ...${JSON.stringify(options)} });
`;
}

/**
 * Runs one of settle-returns' manual actions on `key` in a transaction of its own, as the
 * operator layer does (without the audit row): its line, or its refusal thrown. A refusal rolls
 * the transaction back.
 */
export async function runSettleReturnsAction(db: Db, action: string, key: string, who: { actor: string; note: string }, log: Logger): Promise<string | void> {
  const manual = shipped.actions?.[action];
  if (!manual) throw new Error(`settle-returns has no action ${JSON.stringify(action)}`);
  return db.transaction((tx) => manual.run(key, { db: tx as unknown as Db, log, actor: who.actor, note: who.note, signal: AbortSignal.timeout(30_000) }));
}
