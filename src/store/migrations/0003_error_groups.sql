-- Error groups (src/store/failure-groups.ts): what varies between errors of one kind is replaced, in
-- this order: uuids, quoted values holding a digit or longer than 40 characters (short codes such as
-- "card_declined" stay), words holding a digit (ids, amounts, counts), then numbers with decimals. A group is named by 10 hex characters of the reconciler and the normalised error;
-- failures.error_group is generated from it, so every writer (and every row from before) agrees.
CREATE OR REPLACE FUNCTION "reconciler".normalised_error(error text) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $fn$ SELECT regexp_replace(regexp_replace(regexp_replace(regexp_replace(left(error, 1000),
    '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '<id>', 'g'),
    '"([^"]*[0-9][^"]*|[^"]{41,})"', '"…"', 'g'),
    '\m\w*[0-9]\w*\M', 'N', 'g'),
    'N([.,]N)+', 'N', 'g') $fn$;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION "reconciler".error_group(reconciler text, error text) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $fn$ SELECT left(md5(reconciler || E'\n' || "reconciler".normalised_error(error)), 10) $fn$;
--> statement-breakpoint
ALTER TABLE "reconciler"."failures" ADD COLUMN "error_group" text GENERATED ALWAYS AS ("reconciler".error_group(reconciler, last_error)) STORED NOT NULL;--> statement-breakpoint
CREATE INDEX "failures_by_group" ON "reconciler"."failures" USING btree ("reconciler","error_group","last_failed_at");--> statement-breakpoint
CREATE INDEX "failures_by_failed" ON "reconciler"."failures" USING btree ("reconciler","last_failed_at");