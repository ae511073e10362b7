/** The SQL side of partitions: how a partitioned scan keeps to its slice. */
import { sql, type SQL } from 'drizzle-orm';
import type { Partition } from '../reconciler.js';
import { engineSchema } from './schema.js';

/**
 * A condition for a partitioned scan: true for the rows whose key falls in `partition`, as
 * `partitionOf(key, count) === index` decides in JavaScript. `key` is the SQL expression of
 * the item's key, written exactly as `key(item)` builds it:
 *
 *     WHERE settled_at IS NULL AND ${inPartition(sql`'return:' || id::text`, partition)}
 *
 * It calls the engine's function `<schema>.partition_of(key, count)`; index that expression
 * (with the count written out) to keep the scan on an index. Unpartitioned: `true`.
 */
export function inPartition(key: SQL, partition: Partition): SQL {
  if (partition.count <= 1) return sql`true`;
  return sql`${engineSchema().partitionOf}(${key}, ${partition.count}::int) = ${partition.index}::int`;
}

/** The same condition as text, for a message that tells a person what to write. */
export function inPartitionText(count: number, index: number): string {
  return `${engineSchema().schema}.partition_of(<key>, ${count}) = ${index}`;
}
