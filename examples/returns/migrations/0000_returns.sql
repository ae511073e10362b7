CREATE TABLE "customers" (
	"id" serial PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"email" text NOT NULL,
	"payment_method" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "fix_items" (
	"id" serial PRIMARY KEY NOT NULL,
	"fix_id" integer NOT NULL,
	"sku" text NOT NULL,
	"description" text NOT NULL,
	"price_cents" integer NOT NULL,
	CONSTRAINT "fix_items_price_not_negative" CHECK ("fix_items"."price_cents" >= 0)
);
--> statement-breakpoint
CREATE TABLE "fixes" (
	"id" serial PRIMARY KEY NOT NULL,
	"customer_id" integer NOT NULL,
	"currency" text DEFAULT 'USD' NOT NULL,
	"styling_fee_cents" integer NOT NULL,
	"prepaid_cents" integer DEFAULT 0 NOT NULL,
	"shipped_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "fixes_amounts_not_negative" CHECK ("fixes"."styling_fee_cents" >= 0 AND "fixes"."prepaid_cents" >= 0)
);
--> statement-breakpoint
CREATE TABLE "payments" (
	"id" serial PRIMARY KEY NOT NULL,
	"return_id" integer NOT NULL,
	"kind" text NOT NULL,
	"amount_cents" integer NOT NULL,
	"currency" text NOT NULL,
	"customer_ref" text NOT NULL,
	"payment_method" text NOT NULL,
	"idempotency_key" text NOT NULL,
	"state" text DEFAULT 'pending' NOT NULL,
	"provider_ref" text,
	"attempts" integer DEFAULT 0 NOT NULL,
	"first_sent_at" timestamp with time zone,
	"last_error" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"settled_at" timestamp with time zone,
	CONSTRAINT "payments_kind" CHECK ("payments"."kind" IN ('charge', 'refund')),
	CONSTRAINT "payments_state" CHECK ("payments"."state" IN ('pending', 'succeeded', 'declined', 'unknown')),
	CONSTRAINT "payments_amount_positive" CHECK ("payments"."amount_cents" > 0),
	CONSTRAINT "payments_succeeded_has_reference" CHECK ("payments"."state" <> 'succeeded' OR "payments"."provider_ref" IS NOT NULL)
);
--> statement-breakpoint
CREATE TABLE "return_items" (
	"return_id" integer NOT NULL,
	"fix_item_id" integer NOT NULL,
	CONSTRAINT "return_items_return_id_fix_item_id_pk" PRIMARY KEY("return_id","fix_item_id")
);
--> statement-breakpoint
CREATE TABLE "returns" (
	"id" serial PRIMARY KEY NOT NULL,
	"public_id" uuid DEFAULT gen_random_uuid() NOT NULL,
	"fix_id" integer NOT NULL,
	"received_at" timestamp with time zone DEFAULT now() NOT NULL,
	"recorded_by" text DEFAULT 'warehouse' NOT NULL,
	"settled_at" timestamp with time zone,
	"settlement" text
);
--> statement-breakpoint
ALTER TABLE "fix_items" ADD CONSTRAINT "fix_items_fix_id_fixes_id_fk" FOREIGN KEY ("fix_id") REFERENCES "public"."fixes"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "fixes" ADD CONSTRAINT "fixes_customer_id_customers_id_fk" FOREIGN KEY ("customer_id") REFERENCES "public"."customers"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "payments" ADD CONSTRAINT "payments_return_id_returns_id_fk" FOREIGN KEY ("return_id") REFERENCES "public"."returns"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "return_items" ADD CONSTRAINT "return_items_return_id_returns_id_fk" FOREIGN KEY ("return_id") REFERENCES "public"."returns"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "return_items" ADD CONSTRAINT "return_items_fix_item_id_fix_items_id_fk" FOREIGN KEY ("fix_item_id") REFERENCES "public"."fix_items"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "returns" ADD CONSTRAINT "returns_fix_id_fixes_id_fk" FOREIGN KEY ("fix_id") REFERENCES "public"."fixes"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "fix_items_by_fix" ON "fix_items" USING btree ("fix_id");--> statement-breakpoint
CREATE UNIQUE INDEX "payments_one_per_return" ON "payments" USING btree ("return_id");--> statement-breakpoint
CREATE UNIQUE INDEX "payments_idempotency_key" ON "payments" USING btree ("idempotency_key");--> statement-breakpoint
CREATE UNIQUE INDEX "returns_one_per_fix" ON "returns" USING btree ("fix_id");--> statement-breakpoint
CREATE UNIQUE INDEX "returns_public_id" ON "returns" USING btree ("public_id");--> statement-breakpoint
CREATE INDEX "returns_unsettled" ON "returns" USING btree ("id") WHERE "returns"."settled_at" IS NULL;