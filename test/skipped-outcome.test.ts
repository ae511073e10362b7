/**
 * What returning `'skipped'` does to failure memory (the contract in src/reconciler.ts,
 * `ReconcilerDefinition.reconcile`): a skip is not a success, so an item's failure record stays
 * as it is, while `'changed'` and `'unchanged'` forget it.
 *
 * NOTE for the merge: the first test fails until the item function of the pass forgets a
 * failure only for `'changed'` and `'unchanged'` (issue 15, deliverable 6; see the contract
 * branch's report). The second pins the behaviour that does not change.
 */
import { describe, expect, it } from 'vitest';
import { sql } from 'drizzle-orm';
import type { Engine } from '../src/engine/engine.js';
import type { Outcome } from '../src/reconciler.js';
import { useTestDatabase } from './helpers/db.js';
import { engine, reconciler } from './helpers/engine.js';

const t = useTestDatabase({ resetEngineTables: true });

const failures = () => t.rows<{ key: string; attempts: number; dead: boolean; last_error: string }>(
  sql`SELECT key, attempts, dead_at IS NOT NULL AS dead, last_error FROM reconciler.failures ORDER BY key`,
);
const makeDue = () => t.rows(sql`UPDATE reconciler.failures SET next_attempt_at = now() - interval '1 second'`);

async function counts(e: Engine, name: string, dryRun = false) {
  const outcome = await e.requestPass(name, { trigger: 'manual', dryRun });
  if (!outcome.ran) throw new Error(`pass did not run: ${outcome.reason}`);
  return outcome.result.counts;
}

/** One item whose reconcile answers, attempt after attempt, what `answers` says ('throw' throws). */
function scripted(name: string, answers: (Outcome | 'throw')[], maxAttempts = 10) {
  let call = 0;
  return reconciler<{ id: string }>(name, {
    schedule: '0 0 1 1 *',
    retry: { maxAttempts, backoff: { initial: '1h', max: '1h' } },
    scan: async ({ after }) => (after ? [] : [{ id: 'a' }]),
    key: (item) => item.id,
    reconcile: async () => {
      const answer = answers[Math.min(call++, answers.length - 1)]!;
      if (answer === 'throw') throw new Error(`failed at call ${call}`);
      return answer;
    },
  });
}

describe("returning 'skipped'", () => {
  it('keeps the failure record: attempts and last error stay, and the next failure counts on from them (fails before the merge: see the note above)', async () => {
    const e = engine(t.db, [scripted('skip-keeps', ['throw', 'throw', 'skipped', 'throw'], 3)]);
    expect(await counts(e, 'skip-keeps')).toMatchObject({ failed: 1 });
    await makeDue();
    expect(await counts(e, 'skip-keeps')).toMatchObject({ failed: 1 });
    await makeDue();
    expect(await counts(e, 'skip-keeps')).toMatchObject({ found: 1, skipped: 1, failed: 0 });
    expect(await failures()).toEqual([{ key: 'a', attempts: 2, dead: false, last_error: 'failed at call 2' }]);
    // Still due (a skip adds no backoff), and the third failure is the last one allowed: it dies in this pass.
    expect(await counts(e, 'skip-keeps')).toMatchObject({ failed: 0, dead: 1 });
    expect(await failures()).toEqual([{ key: 'a', attempts: 3, dead: true, last_error: 'failed at call 4' }]);
  });

  it("leaves 'changed' and 'unchanged' forgetting the record, and a dry run touching nothing", async () => {
    for (const outcome of ['changed', 'unchanged'] as const) {
      const name = `forgets-on-${outcome}`;
      const e = engine(t.db, [scripted(name, ['throw', outcome])]);
      await counts(e, name);
      await makeDue();
      expect(await counts(e, name, true)).toMatchObject({ [outcome]: 1 });
      expect((await failures()).map((f) => f.attempts)).toEqual([1]); // the dry run forgot nothing
      expect(await counts(e, name)).toMatchObject({ [outcome]: 1 });
      expect(await failures()).toEqual([]);
    }
  });
});
