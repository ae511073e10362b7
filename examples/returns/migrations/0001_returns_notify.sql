-- Wake-on-change for settle-returns (wakeOn: ['returns']): a notification after each statement that records returns.
-- Written by notifyTrigger('returns') from the engine's public API; test/wake.test.ts checks they agree.
CREATE OR REPLACE FUNCTION reconciler_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], '');
  RETURN NULL;
END
$$;
--> statement-breakpoint
DROP TRIGGER IF EXISTS "returns_reconciler_notify" ON "returns";
--> statement-breakpoint
CREATE TRIGGER "returns_reconciler_notify" AFTER INSERT ON "returns" FOR EACH STATEMENT EXECUTE FUNCTION reconciler_notify('returns');
