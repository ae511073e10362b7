/**
 * The console's pages on a large failure table: an outage makes every item fail, and the page
 * an operator opens then must still answer in well under the 5 s a page may read for (the
 * statement timeout of its snapshot), without holding the daemon's pool. Each page is rendered
 * as the console renders it: in one read-only snapshot, through the operator views.
 */
import { sql } from 'drizzle-orm';
import { queryRows } from '../../src/store/database.js';
import { withReadSnapshot } from '../../src/operator/context.js';
import { renderPage } from '../../src/console/pages/index.js';
import { reconciler } from '../../testkit/engine.js';
import { scratchDatabase, stats, type CaseOptions, type CaseResult } from './common.js';

/** The pages an on-call operator opens, as paths (the error group's page is filled in once the failures exist). */
const PAGES = ['/', '/reconcilers/invoices', '/reconcilers/invoices?dead=1', 'group', 'item', '/audit'] as const;

export async function consolePages({ quick, runs }: CaseOptions): Promise<CaseResult[]> {
  const failures = quick ? 20_000 : 200_000;
  const { database, drop } = await scratchDatabase();
  try {
    // Failures of one reconciler with errors of ~1 KB in 7 groups, a third of them dead, and a day of passes (the last thousand broke).
    await queryRows(database.db, sql`INSERT INTO reconciler.failures (reconciler, key, attempts, last_error, next_attempt_at, dead_at)
      SELECT 'invoices', 'invoice:' || i, 3, 'provider answered 500 (kind ' || (i % 7) || ') for invoice ' || i || ', request ' || md5(i::text) || ': ' || repeat('x', 900),
             now() + interval '1 hour', CASE WHEN i % 3 = 0 THEN now() END
      FROM generate_series(1, ${failures}) i`);
    await queryRows(database.db, sql`INSERT INTO reconciler.runs (reconciler, partition, trigger, status, started_at, finished_at, duration_ms, found, failed, host, pid, error)
      SELECT 'invoices', 0, 'schedule', CASE WHEN i > 4000 THEN 'error' ELSE 'failed' END, now() - (5000 - i) * interval '17 seconds', now(), 900, ${failures}, 10, 'bench', 1,
             CASE WHEN i > 4000 THEN 'relation "invoice_queue" does not exist' END
      FROM generate_series(1, 5000) i`);
    await queryRows(database.db, sql`INSERT INTO reconciler.state (reconciler, partition, last_status, last_run_id, last_started_at) VALUES ('invoices', 0, 'error', 5000, now())`);
    await queryRows(database.db, sql`ANALYZE`);
    const [group] = await queryRows<{ g: string }>(database.db, sql`SELECT error_group AS g FROM reconciler.failures LIMIT 1`);
    const invoices = reconciler('invoices', { schedule: '* * * * *', scan: async () => [], key: (x: string) => x, reconcile: async () => 'unchanged' as const }, 'bench:invoices');
    const ctx = { db: database.db, reconcilers: [invoices], loadErrors: [] };
    const results: CaseResult[] = [];
    for (const page of PAGES) {
      const path = page === 'group' ? `/reconcilers/invoices?group=${group!.g}` : page === 'item' ? '/reconcilers/invoices/item?key=invoice:4242' : page;
      const url = new URL(path, 'http://console.invalid');
      const samples: number[] = [];
      for (let i = 0; i < runs + 1; i++) {
        const started = performance.now();
        const answer = await withReadSnapshot(ctx, (snapshot) =>
          renderPage({ path: url.pathname, query: url.searchParams, session: null, actionsEnabled: false, ctx: snapshot, fragment: false }),
        );
        if (answer?.status !== 200) throw new Error(`console pages: ${path} answered ${answer?.status ?? 'nothing'}`);
        if (i > 0) samples.push(performance.now() - started); // the first warms the caches
      }
      const s = stats(samples);
      results.push({ case: 'console pages', figure: `${path.replace(group!.g, '<group>')} with ${failures.toLocaleString('en')} failing items`, unit: 'ms', ...s, goal: 'median < 1,000 ms', met: s.median < 1_000 });
    }
    return results;
  } finally {
    await drop();
  }
}
