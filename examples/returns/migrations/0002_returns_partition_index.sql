-- settle-returns' scan of one of its 4 partitions, on the engine's function reconciler.partition_of().
-- IF NOT EXISTS: on a large table, create it by hand first with CONCURRENTLY (docs/operations.md, "Partitions").
CREATE INDEX IF NOT EXISTS "returns_unsettled_by_partition" ON "returns" USING btree (reconciler.partition_of('return:' || "id"::text, 4),"id") WHERE "returns"."settled_at" IS NULL;
