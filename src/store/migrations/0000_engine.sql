-- The engine's objects, all in its own schema. "reconciler" is replaced by RECONCILER_SCHEMA when that is set.
CREATE SCHEMA IF NOT EXISTS "reconciler";
--> statement-breakpoint
-- Upgrade from the layout before engine schemas: the engine's tables stood beside the application's, as
-- reconciler_state, reconciler_runs and reconciler_failures, with the function reconciler_partition().
-- They move into the schema with their rows (leases, history, failure memory) and take the names below,
-- so that the CREATE ... IF NOT EXISTS statements after this one find them there already. An index the
-- application built on reconciler_partition() follows the function: it refers to it by identity, not name.
DO $$
BEGIN
  IF to_regclass('reconciler_state') IS NOT NULL AND to_regclass('"reconciler".state') IS NULL THEN
    ALTER TABLE reconciler_state SET SCHEMA "reconciler";
    ALTER TABLE "reconciler".reconciler_state RENAME TO state;
    ALTER TABLE "reconciler".state RENAME CONSTRAINT reconciler_state_reconciler_partition_pk TO state_pkey;
  END IF;
  IF to_regclass('reconciler_runs') IS NOT NULL AND to_regclass('"reconciler".runs') IS NULL THEN
    ALTER TABLE reconciler_runs SET SCHEMA "reconciler";
    ALTER TABLE "reconciler".reconciler_runs RENAME TO runs;
    ALTER TABLE "reconciler".runs RENAME CONSTRAINT reconciler_runs_pkey TO runs_pkey;
    ALTER SEQUENCE "reconciler".reconciler_runs_id_seq RENAME TO runs_id_seq;
    ALTER INDEX "reconciler".reconciler_runs_by_reconciler RENAME TO runs_by_reconciler;
    ALTER INDEX "reconciler".reconciler_runs_by_start RENAME TO runs_by_start;
  END IF;
  IF to_regclass('reconciler_failures') IS NOT NULL AND to_regclass('"reconciler".failures') IS NULL THEN
    ALTER TABLE reconciler_failures SET SCHEMA "reconciler";
    ALTER TABLE "reconciler".reconciler_failures RENAME TO failures;
    ALTER TABLE "reconciler".failures RENAME CONSTRAINT reconciler_failures_reconciler_key_pk TO failures_pkey;
    ALTER INDEX "reconciler".reconciler_failures_by_seen RENAME TO failures_by_seen;
  END IF;
  IF to_regprocedure('reconciler_partition(text, integer)') IS NOT NULL AND to_regprocedure('"reconciler".partition_of(text, integer)') IS NULL THEN
    ALTER FUNCTION reconciler_partition(text, integer) SET SCHEMA "reconciler";
    ALTER FUNCTION "reconciler".reconciler_partition(text, integer) RENAME TO partition_of;
  END IF;
END
$$;
--> statement-breakpoint
-- Adopted from a release before partitions: its state table has no partition count yet.
DO $$
BEGIN
  IF to_regclass('"reconciler".state') IS NOT NULL THEN
    ALTER TABLE "reconciler".state ADD COLUMN IF NOT EXISTS "partitions" integer DEFAULT 1 NOT NULL;
  END IF;
END
$$;
--> statement-breakpoint
CREATE TABLE IF NOT EXISTS "reconciler"."failures" (
	"reconciler" text NOT NULL,
	"key" text NOT NULL,
	"partition" integer DEFAULT 0 NOT NULL,
	"attempts" integer NOT NULL,
	"last_error" text NOT NULL,
	"first_failed_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_failed_at" timestamp with time zone DEFAULT now() NOT NULL,
	"next_attempt_at" timestamp with time zone NOT NULL,
	"dead_at" timestamp with time zone,
	"last_seen_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "failures_pkey" PRIMARY KEY("reconciler","key")
);
--> statement-breakpoint
CREATE TABLE IF NOT EXISTS "reconciler"."runs" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"reconciler" text NOT NULL,
	"partition" integer DEFAULT 0 NOT NULL,
	"trigger" text NOT NULL,
	"status" text NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"finished_at" timestamp with time zone,
	"duration_ms" integer,
	"found" integer DEFAULT 0 NOT NULL,
	"changed" integer DEFAULT 0 NOT NULL,
	"unchanged" integer DEFAULT 0 NOT NULL,
	"skipped" integer DEFAULT 0 NOT NULL,
	"failed" integer DEFAULT 0 NOT NULL,
	"deferred" integer DEFAULT 0 NOT NULL,
	"dead" integer DEFAULT 0 NOT NULL,
	"complete" boolean DEFAULT false NOT NULL,
	"host" text NOT NULL,
	"pid" integer NOT NULL,
	"error" text
);
--> statement-breakpoint
CREATE TABLE IF NOT EXISTS "reconciler"."state" (
	"reconciler" text NOT NULL,
	"partition" integer DEFAULT 0 NOT NULL,
	"partitions" integer DEFAULT 1 NOT NULL,
	"holder_id" uuid,
	"holder_host" text,
	"holder_pid" integer,
	"holder_since" timestamp with time zone,
	"lease_expires_at" timestamp with time zone,
	"current_run_id" bigint,
	"last_tick_at" timestamp with time zone,
	"last_started_at" timestamp with time zone,
	"last_finished_at" timestamp with time zone,
	"last_succeeded_at" timestamp with time zone,
	"last_status" text,
	"last_run_id" bigint,
	"skipped_ticks" bigint DEFAULT 0 NOT NULL,
	"last_skipped_tick_at" timestamp with time zone,
	CONSTRAINT "state_pkey" PRIMARY KEY("reconciler","partition")
);
--> statement-breakpoint
CREATE INDEX IF NOT EXISTS "failures_by_seen" ON "reconciler"."failures" USING btree ("reconciler","partition","last_seen_at");--> statement-breakpoint
CREATE INDEX IF NOT EXISTS "runs_by_reconciler" ON "reconciler"."runs" USING btree ("reconciler","id");--> statement-breakpoint
CREATE INDEX IF NOT EXISTS "runs_by_start" ON "reconciler"."runs" USING btree ("started_at");
--> statement-breakpoint
-- The partition of a key, as partitionOf() in src/reconciler.ts computes it: the first 32 bits of its MD5, modulo the count.
-- IMMUTABLE, so that a scan can filter on it through an expression index of the application's.
CREATE OR REPLACE FUNCTION "reconciler".partition_of(key text, partitions integer) RETURNS integer
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $fn$ SELECT (('x' || substr(md5(key), 1, 8))::bit(32)::bigint % partitions)::integer $fn$;
