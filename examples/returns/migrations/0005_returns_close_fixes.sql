-- Issue 18: close-fixes closes a Fix once every return of it is settled and nothing more can come back.
-- Every existing Fix starts open; the first pass closes the ones that are ready.
ALTER TABLE "fixes" ADD COLUMN "closed_at" timestamp with time zone;--> statement-breakpoint
-- close-fixes' scan, by id over the open Fixes only. IF NOT EXISTS: on a large table, create it by hand
-- first with CONCURRENTLY (a plain CREATE INDEX blocks writes to fixes while it builds); this then skips it.
CREATE INDEX IF NOT EXISTS "fixes_open" ON "fixes" USING btree ("id") WHERE "fixes"."closed_at" IS NULL;
