/**
 * Partitions, in one place: the hash that puts a key in a partition, in JavaScript
 * (`partitionOf`) and in SQL (the engine's function `<schema>.partition_of`, created by
 * migration 0000_engine.sql), and the SQL a partitioned scan and its index are written with.
 * Everything that needs a key's partition asks this file, so that the scan's filter, the
 * index, the pass's check, forgetting and `reconciler run --key` cannot get out of step.
 */
import { createHash } from 'node:crypto';
import { sql, type SQL } from 'drizzle-orm';
import { UserError } from '../errors.js';
import { engineSchema } from './schema.js';

/**
 * Which slice of the items a pass covers: the items whose key `k` has
 * `partitionOf(k, count) === index`. In SQL that is `inPartition(sql\`<key>\`, partition)`, which
 * calls the engine's function `reconciler.partition_of(k, count)` (index that expression, see
 * `partitionIndexExpression`). An unpartitioned reconciler always gets `{ index: 0, count: 1 }`: every item.
 */
export interface Partition {
  index: number;
  count: number;
}

/** The most partitions a reconciler may declare. */
export const MAX_PARTITIONS = 1_024;

/**
 * The partition of a key: the first 32 bits of its MD5, modulo `count`. Stable across
 * processes, versions and machines; the engine's SQL function `reconciler.partition_of(key, count)`
 * computes the same number, so a scan can filter on it through an index.
 */
export function partitionOf(key: string, count: number): number {
  if (count <= 1) return 0;
  return Number.parseInt(createHash('md5').update(key, 'utf8').digest('hex').slice(0, 8), 16) % count;
}

/** Every partition of a reconciler with `count` of them: `[0, 1, …, count - 1]` (`[0]` when unpartitioned). */
export function allPartitions(count: number): number[] {
  return Array.from({ length: Math.max(1, count) }, (_, p) => p);
}

/** The partition `index` of reconciler `name` (which has `count`), checked; a UserError naming what it has instead. */
export function partitionNamed(name: string, count: number, index: number | undefined): Partition {
  if (index === undefined) {
    if (count === 1) return { index: 0, count };
    throw new UserError(`${name} has ${count} partitions: name one (0 to ${count - 1}), or run them all`);
  }
  if (!Number.isInteger(index) || index < 0 || index >= count) {
    throw new UserError(count === 1 ? `${name} is not partitioned: there is no partition ${index}` : `${name} has partitions 0 to ${count - 1}; there is no partition ${index}`);
  }
  return { index, count };
}

/**
 * The partitions a manual pass covers, one pass each, one after another: the one asked for;
 * the one `key` falls in; else all of them (`reconciler run [--partition N] [--key K]`).
 */
export function partitionsToRun(count: number, only: { partition?: number; key?: string }): number[] {
  if (only.partition !== undefined) return [only.partition];
  if (only.key !== undefined) return [partitionOf(only.key, count)];
  return allPartitions(count);
}

/** `<schema>.partition_of(<key>, <count>)`: the one spelling of the SQL hash, for the filter and the index alike. */
function partitionCall(key: SQL, count: SQL): SQL {
  return sql`${engineSchema().partitionOf}(${key}, ${count})`;
}

/**
 * A condition for a partitioned scan: true for the rows whose key falls in `partition`, as
 * `partitionOf(key, count) === index` decides in JavaScript. `key` is the SQL expression of
 * the item's key, written exactly as `key(item)` builds it:
 *
 *     WHERE settled_at IS NULL AND ${inPartition(sql`'return:' || id::text`, partition)}
 *
 * It calls the engine's function `<schema>.partition_of(key, count)`; index that expression
 * with `partitionIndexExpression(key, count)` to keep the scan on an index. Unpartitioned: `true`.
 */
export function inPartition(key: SQL, partition: Partition): SQL {
  if (partition.count <= 1) return sql`true`;
  return sql`${partitionCall(key, sql`${partition.count}::int`)} = ${partition.index}::int`;
}

/**
 * The expression to index for a scan filtered with `inPartition(key, partition)` when the
 * reconciler has `count` partitions, with the count written out (an index cannot take a
 * parameter): `"reconciler".partition_of('return:' || id::text, 4)`. Pass the same `key` as
 * the scan does: in a drizzle schema, `index('…').on(partitionIndexExpression(sql`'return:' || ${t.id}::text`, 4), t.id)`;
 * in a migration written by hand, the text it renders to.
 */
export function partitionIndexExpression(key: SQL, count: number): SQL {
  if (!Number.isInteger(count) || count < 2 || count > MAX_PARTITIONS) {
    throw new RangeError(`a partition index needs a partition count from 2 to ${MAX_PARTITIONS}, got ${JSON.stringify(count)}`);
  }
  return partitionCall(key, sql.raw(String(count)));
}

/** The condition of `inPartition` as text, for a message that tells a person what to write. */
export function inPartitionText(count: number, index: number): string {
  return `${engineSchema().schema}.partition_of(<key>, ${count}) = ${index}`;
}
