CREATE TABLE "reconciler"."audit" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL,
	"actor" text NOT NULL,
	"via" text NOT NULL,
	"reconciler" text NOT NULL,
	"action" text NOT NULL,
	"target" text NOT NULL,
	"keys" text[] NOT NULL,
	"note" text,
	"result" text NOT NULL
);
--> statement-breakpoint
ALTER TABLE "reconciler"."replicas" ADD COLUMN "listening" text[] DEFAULT '{}'::text[] NOT NULL;--> statement-breakpoint
ALTER TABLE "reconciler"."runs" ADD COLUMN "oldest_item_at" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "audit_by_reconciler" ON "reconciler"."audit" USING btree ("reconciler","id");