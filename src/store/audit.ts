/**
 * The `audit` table: what people did to failure memory and to items (retry, clear, a
 * reconciler's manual action), written in the same transaction as the change itself.
 */
import { and, desc, eq, sql, type SQL } from 'drizzle-orm';
import type { Db } from '../reconciler.js';
import { queryRows } from './database.js';
import { engineSchema, type audit } from './schema.js';

export type AuditRow = typeof audit.$inferSelect & { via: 'console' | 'cli' };
export type AuditRecord = Omit<typeof audit.$inferInsert, 'id' | 'at'> & { via: 'console' | 'cli' };

/** Records one action; returns its id. */
export async function recordAudit(db: Db, record: AuditRecord): Promise<number> {
  const rows = await db.insert(engineSchema().audit).values(record).returning({ id: engineSchema().audit.id });
  return rows[0]!.id;
}

/** The newest records first, of one reconciler and one key if given, and how many match in all. */
export async function listAudit(db: Db, options: { reconciler?: string; key?: string; limit: number }): Promise<{ entries: AuditRow[]; total: number }> {
  const { audit } = engineSchema();
  const where: SQL | undefined = and(
    options.reconciler === undefined ? undefined : eq(audit.reconciler, options.reconciler),
    options.key === undefined ? undefined : sql`${options.key} = ANY(${audit.keys})`,
  );
  const entries = (await db.select().from(audit).where(where).orderBy(desc(audit.id)).limit(options.limit)) as AuditRow[];
  const [count] = await queryRows<{ n: number }>(db, sql`SELECT count(*)::int AS n FROM ${audit} WHERE ${where ?? sql`true`}`);
  return { entries, total: Number(count?.n ?? 0) };
}
