/**
 * end-idle-transactions: ends database sessions that have sat "idle in transaction" for
 * too long. Such a session holds its locks and its snapshot, blocking vacuum and other
 * writers, and nobody is coming back for it.
 *
 * State it repairs: sessions in this database whose state is `idle in transaction` and
 * whose last state change is older than IDLE_TRANSACTION_LIMIT_SECONDS (default 900).
 * Why doing it twice is harmless: terminating a backend that is already gone, or that has
 * since moved on, does nothing: the check and the action are one statement.
 *
 * Copy it into jobs/ to try it: `cp examples/end-idle-transactions.ts jobs/`.
 */
import { defineReconciler, queryRows, sql } from 'reconciler';

const limitSeconds = Number(process.env.IDLE_TRANSACTION_LIMIT_SECONDS ?? 900);

interface IdleSession {
  pid: number;
  backendStart: string;
  user: string;
  application: string;
  idleSeconds: number;
}

export default defineReconciler<IdleSession>({
  schedule: '* * * * *', // every minute
  description: `ends sessions idle in a transaction for more than ${limitSeconds}s`,
  concurrency: 2,
  timeout: '10s',
  retry: { maxAttempts: 3 },

  // Keyset pages over pid: `after` is the last session of the previous page.
  scan: ({ db, after, limit }) =>
    queryRows<IdleSession>(db, sql`
      SELECT pid, backend_start::text AS "backendStart", usename AS "user",
             application_name AS application, extract(epoch FROM now() - state_change)::int AS "idleSeconds"
      FROM pg_stat_activity
      WHERE datname = current_database() AND pid <> pg_backend_pid()
        AND state = 'idle in transaction' AND state_change < now() - make_interval(secs => ${limitSeconds})
        AND pid > ${after?.pid ?? 0}
      ORDER BY pid LIMIT ${limit}`),

  // pid alone is reused by the operating system; with the backend's start time it is unique.
  key: (session) => `${session.pid}@${session.backendStart}`,

  reconcile: async (session, ctx) => {
    const what = `pid ${session.pid} (${session.user}, ${session.application || 'no application_name'}, idle ${session.idleSeconds}s)`;
    if (ctx.dryRun) return { outcome: 'changed', note: `would terminate ${what}` };
    const rows = await queryRows<{ ended: boolean }>(ctx.db, sql`
      SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity
      WHERE pid = ${session.pid} AND backend_start::text = ${session.backendStart} AND state = 'idle in transaction'`);
    return rows[0]?.ended ? { outcome: 'changed', note: `terminated ${what}` } : 'unchanged';
  },
});
