-- Issue 17: money in minor units (ISO 4217 exponent), several returns per Fix refunded against its
-- checkout charge, and unknown outcomes resolved by asking the provider (key versions, lookups).
ALTER TABLE "fixes" RENAME COLUMN "styling_fee_cents" TO "styling_fee_minor";--> statement-breakpoint
ALTER TABLE "fixes" RENAME COLUMN "prepaid_cents" TO "prepaid_minor";--> statement-breakpoint
ALTER TABLE "fix_items" RENAME COLUMN "price_cents" TO "price_minor";--> statement-breakpoint
ALTER TABLE "payments" RENAME COLUMN "amount_cents" TO "amount_minor";--> statement-breakpoint
ALTER TABLE "fixes" ADD COLUMN "public_id" uuid DEFAULT gen_random_uuid() NOT NULL;--> statement-breakpoint
ALTER TABLE "fixes" ADD COLUMN "checkout_charge_ref" text;--> statement-breakpoint
CREATE UNIQUE INDEX "fixes_public_id" ON "fixes" USING btree ("public_id");--> statement-breakpoint
DROP INDEX "returns_one_per_fix";--> statement-breakpoint
CREATE INDEX "returns_by_fix" ON "returns" USING btree ("fix_id");--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "charge_ref" text;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "key_version" integer DEFAULT 1 NOT NULL;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "key_history" jsonb DEFAULT '[]'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "last_sent_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "unknown_since" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "replays" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "key_spent_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "looked_up_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "lookup_note" text;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "provider_amount_minor" integer;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "provider_currency" text;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "known_by" text;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "legacy_key" boolean DEFAULT false NOT NULL;--> statement-breakpoint
-- An intent sent before this migration was sent at the latest when it was last touched, and unknown since then if it is unknown.
UPDATE "payments" SET "last_sent_at" = "updated_at" WHERE "first_sent_at" IS NOT NULL;--> statement-breakpoint
UPDATE "payments" SET "unknown_since" = "updated_at" WHERE "state" = 'unknown';--> statement-breakpoint
-- Its requests carried no intent_key metadata: no lookup can find what they did, so such an intent is never re-keyed.
UPDATE "payments" SET "legacy_key" = true WHERE "first_sent_at" IS NOT NULL AND "state" IN ('pending', 'unknown');--> statement-breakpoint
UPDATE "payments" SET "known_by" = 'answer' WHERE "state" = 'succeeded';--> statement-breakpoint
ALTER TABLE "payments" ADD CONSTRAINT "payments_known_by" CHECK ("payments"."known_by" IS NULL OR "payments"."known_by" IN ('answer', 'lookup'));
