-- settled-by-hand (the manual action of settle-returns): who resolved a payment intent by hand, when and why.
ALTER TABLE "payments" ADD COLUMN "resolved_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "resolved_by" text;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "resolution_note" text;--> statement-breakpoint
ALTER TABLE "payments" ADD CONSTRAINT "payments_resolved_by_someone" CHECK (("payments"."resolved_at" IS NULL) = ("payments"."resolved_by" IS NULL));