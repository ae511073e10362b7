/**
 * What the operator's views and actions work on: the database and the loaded job files. The
 * daemon's console, the standalone console and the CLI each build one from their own setup.
 */
import { sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db, Reconciler } from '../reconciler.js';
import type { LoadError } from '../engine/load.js';

export interface OperatorContext {
  db: Db;
  reconcilers: readonly Reconciler[];
  /** Job files that did not load: their names still have history and failures on record. */
  loadErrors: readonly LoadError[];
  /** For manual actions' own logs; silent when absent. */
  log?: Logger;
  /**
   * Starts an early pass of the reconciler, when the context lives in a daemon (its console):
   * after an action, so that a retried item is tried now and one resolved by hand leaves the
   * failures at once, rather than at the next tick. Absent elsewhere (the CLI, `reconciler console`).
   */
  passSoon?: (reconciler: string) => void;
  /** How long a manual action runs before its `signal` aborts; default MANUAL_ACTION_TIMEOUT_MS (30 s). */
  actionTimeoutMs?: number;
}

/** A reconciler's manual actions, as people see them. */
export function actionsOf(ctx: OperatorContext, reconciler: string): { name: string; description: string }[] {
  const found = ctx.reconcilers.find((r) => r.name === reconciler);
  return Object.entries(found?.actions ?? {}).map(([name, action]) => ({ name, description: action.description }));
}

/** The longest a console page's queries may take: a slow page must never hold the daemon's pool. */
export const READ_TIMEOUT_MS = 5_000;

/**
 * Runs `read` in one read-only transaction whose statements give up after `timeoutMs`: the
 * console's pages see one consistent snapshot, change nothing, and cannot hold a connection of
 * the daemon's pool for long, however large the tables.
 */
export async function withReadSnapshot<T>(ctx: OperatorContext, read: (ctx: OperatorContext) => Promise<T>, timeoutMs = READ_TIMEOUT_MS): Promise<T> {
  return ctx.db.transaction(async (tx) => {
    await tx.execute(sql.raw('SET TRANSACTION READ ONLY'));
    await tx.execute(sql.raw(`SET LOCAL statement_timeout = ${Math.max(1, Math.round(timeoutMs))}`));
    return read({ ...ctx, db: tx as unknown as Db });
  });
}
