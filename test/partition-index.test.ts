/**
 * A partitioned scan and its index must compute the same hash of the same key, or every pass
 * reads the whole table. The returns example's scan filters with `inPartition(returnKeySql, …)`;
 * its migration 0002 indexes an expression written out by hand. These tests fail when the two
 * drift apart: the key, the count, the function, or how the helper spells it.
 */
import { describe, expect, it } from 'vitest';
import { sql, type SQL } from 'drizzle-orm';
import settleReturns from '../examples/returns/jobs/settle-returns.js';
import { findReturnsToSettle, returnKeySql } from '../examples/returns/src/service.js';
import { partitionIndexExpression, partitionOf } from '../src/store/partition.js';
import type { Db } from '../src/reconciler.js';
import { useTestDatabase } from './helpers/db.js';

const t = useTestDatabase({ returns: true });
const count = settleReturns.partitions!;

const indexDefinition = async (name: string) =>
  (await t.rows<{ definition: string }>(sql`SELECT pg_get_indexdef(${name}::regclass) AS definition`))[0]!.definition.replace(`INDEX ${name} ON`, 'INDEX … ON');

/** The statement the scan sends for one page of `partition`, captured instead of run. */
async function scanStatement(partition: { index: number; count: number }): Promise<SQL> {
  let statement: SQL | undefined;
  const capture = { execute: async (query: SQL) => ((statement = query), { rows: [] }) } as unknown as Db;
  await findReturnsToSettle(capture, 0, 100, partition);
  return statement!;
}

describe('the returns example partition index', () => {
  it('is the expression partitionIndexExpression writes for the scan key and the job’s partition count', async () => {
    const shipped = await indexDefinition('returns_unsettled_by_partition');
    await t.rows(sql`CREATE INDEX partition_index_probe ON returns (${partitionIndexExpression(returnKeySql, count)}, id) WHERE settled_at IS NULL`);
    try {
      expect(await indexDefinition('partition_index_probe')).toBe(shipped);
    } finally {
      await t.rows(sql`DROP INDEX partition_index_probe`);
    }
  });

  it('serves the scan of every partition', async () => {
    for (let index = 0; index < count; index++) {
      const statement = await scanStatement({ index, count });
      const plan = await t.db.transaction(async (tx) => {
        await tx.execute(sql`SET LOCAL enable_seqscan = off`);
        const result = (await tx.execute(sql`EXPLAIN ${statement}`)) as unknown as { rows: { 'QUERY PLAN': string }[] };
        return result.rows.map((row) => row['QUERY PLAN']).join('\n');
      });
      expect(plan).toContain('returns_unsettled_by_partition');
    }
  });

  it('hashes in SQL the key the job builds in JavaScript', async () => {
    const ids = Array.from({ length: 200 }, (_, i) => i + 1);
    const rows = await t.rows<{ id: number; partition: number }>(
      sql`SELECT id, reconciler.partition_of(${returnKeySql}, ${count}::int) AS partition FROM unnest(${`{${ids.join(',')}}`}::int[]) AS id`,
    );
    expect(rows.map((r) => [Number(r.id), Number(r.partition)])).toEqual(ids.map((id) => [id, partitionOf(settleReturns.key({ id, receivedAt: new Date() }), count)]));
  });
});
