/**
 * The trigger behind `wakeOn`: after each statement that changes rows of a table,
 * it sends a notification on a channel (with an empty payload: the pass scans state anyway).
 * One per statement, not per row, and PostgreSQL folds identical notifications of one
 * transaction into one: a bulk insert costs one notification.
 */

/** `"name"` or `"schema"."name"`, quoted as PostgreSQL identifiers. */
function quoteQualified(name: string): string {
  return name
    .split('.')
    .map((part) => `"${part.replace(/"/g, '""')}"`)
    .join('.');
}

const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;

export type TableEvent = 'INSERT' | 'UPDATE' | 'DELETE';

/**
 * SQL for a migration: a trigger on `table` (optionally schema-qualified) that notifies
 * `channel` (default: the table's name) after every statement of the given kinds (default
 * INSERT: new rows are what usually creates work). Statements are separated by drizzle-kit's breakpoint marker (an SQL
 * comment to other tools), and it can be applied again safely.
 *
 * Mind your own writes: if the reconciler updates the table it wakes on, each pass that
 * changes something wakes one more pass (which finds nothing and stops). Add UPDATE or
 * DELETE only when those create work for it.
 *
 *     npx drizzle-kit generate --custom --name returns_notify   # then paste notifyTrigger('returns')
 */
export function notifyTrigger(table: string, channel = table.split('.').pop()!, events: readonly TableEvent[] = ['INSERT']): string {
  if (table.trim() === '' || channel === '') throw new Error('notifyTrigger(table, channel): both must be non-empty');
  if (events.length === 0 || events.some((e) => !['INSERT', 'UPDATE', 'DELETE'].includes(e))) throw new Error(`notifyTrigger: events must be some of INSERT, UPDATE, DELETE, got ${JSON.stringify(events)}`);
  const trigger = quoteQualified(`${table.split('.').pop()!}_reconciler_notify`);
  return [
    `CREATE OR REPLACE FUNCTION reconciler_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], '');
  RETURN NULL;
END
$$;`,
    `DROP TRIGGER IF EXISTS ${trigger} ON ${quoteQualified(table)};`,
    `CREATE TRIGGER ${trigger} AFTER ${[...new Set(events)].join(' OR ')} ON ${quoteQualified(table)} FOR EACH STATEMENT EXECUTE FUNCTION reconciler_notify(${literal(channel)});`,
  ].join('\n--> statement-breakpoint\n');
}
