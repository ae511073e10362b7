CREATE TABLE "reconciler_failures" (
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
	CONSTRAINT "reconciler_failures_reconciler_key_pk" PRIMARY KEY("reconciler","key")
);
--> statement-breakpoint
CREATE TABLE "reconciler_runs" (
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
CREATE TABLE "reconciler_state" (
	"reconciler" text NOT NULL,
	"partition" integer DEFAULT 0 NOT NULL,
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
	CONSTRAINT "reconciler_state_reconciler_partition_pk" PRIMARY KEY("reconciler","partition")
);
--> statement-breakpoint
CREATE INDEX "reconciler_failures_by_seen" ON "reconciler_failures" USING btree ("reconciler","partition","last_seen_at");--> statement-breakpoint
CREATE INDEX "reconciler_runs_by_reconciler" ON "reconciler_runs" USING btree ("reconciler","id");--> statement-breakpoint
CREATE INDEX "reconciler_runs_by_start" ON "reconciler_runs" USING btree ("started_at");