/**
 * close-fixes: closes Fixes whose every return is settled, once nothing more can come back.
 *
 * State it repairs: Fixes still open (`closed_at IS NULL`) that are done: their return window
 * (7 days after shipping) is over and settle-returns has settled every return of them. Found in
 * keyset pages through the partial index `fixes_open`, so a pass costs O(open Fixes), however
 * many Fixes were ever closed.
 * Why set-based: closing is database-only work (no other system is called), so a whole batch
 * is closed by one UPDATE instead of a round trip per Fix; the engine keeps the failure memory
 * and history it would keep for a per-item reconciler.
 * When it runs: every 5 minutes. Nothing needs it sooner: a Fix that stays open a few minutes
 * longer harms no one.
 * Why doing it twice is harmless: the UPDATE checks the whole condition again, in SQL, for the
 * batch it closes: a Fix closed already, or that got a new return since the scan, is left as it
 * is and reported so (`unchanged`, `skipped`). See ../src/close-fixes.ts.
 */
import { defineReconciler } from 'reconciler';
import { closeFixes, findFixesToClose, fixKey, type FixToClose } from '../src/close-fixes.js';

export default defineReconciler<FixToClose>({
  schedule: '*/5 * * * *',
  description: 'closes Fixes whose every return is settled, after their return window (index: fixes_open)',
  partitions: 1,
  batchSize: 500,
  timeout: '30s',
  scan: ({ db, after, limit }) => findFixesToClose(db, after?.id ?? 0, limit),
  key: (fix) => fixKey(fix.id),
  since: (fix) => fix.readySince,
  reconcileBatch: (fixes, ctx) => closeFixes(ctx.db, fixes.map((fix) => fix.id), ctx.dryRun),
});
