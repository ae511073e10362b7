-- The partition of a key, as partitionOf() in src/reconciler.ts computes it: the first 32 bits of its MD5, modulo the count.
-- IMMUTABLE, so a scan can filter on it through an expression index.
CREATE OR REPLACE FUNCTION reconciler_partition(key text, partitions integer) RETURNS integer
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $$ SELECT (('x' || substr(md5(key), 1, 8))::bit(32)::bigint % partitions)::integer $$;--> statement-breakpoint
ALTER TABLE "reconciler_state" ADD COLUMN "partitions" integer DEFAULT 1 NOT NULL;--> statement-breakpoint
-- IF NOT EXISTS: on a large table, create it by hand first with CONCURRENTLY (README, "Partitions"), and this step is a no-op.
CREATE INDEX IF NOT EXISTS "returns_unsettled_by_partition" ON "returns" USING btree (reconciler_partition('return:' || "id"::text, 4),"id") WHERE "returns"."settled_at" IS NULL;