/**
 * The example business: customers receive Fixes (boxes of items), keep some and send the
 * rest back. A warehouse associate records a return; the money work (charge or refund) is
 * left to the settle-returns reconciler. The payments ledger holds one intent per return.
 */
import { sql } from 'drizzle-orm';
import { check, index, integer, pgTable, primaryKey, serial, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core';

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

export const customers = pgTable('customers', {
  id: serial('id').primaryKey(),
  name: text('name').notNull(),
  email: text('email').notNull(),
  /** The provider's reference for the customer's card. */
  paymentMethod: text('payment_method').notNull(),
  createdAt: ts('created_at').notNull().default(sql`now()`),
});

/** A shipment of items to a customer, with a styling fee, and what the customer prepaid at checkout. */
export const fixes = pgTable(
  'fixes',
  {
    id: serial('id').primaryKey(),
    customerId: integer('customer_id').notNull().references(() => customers.id),
    currency: text('currency').notNull().default('USD'),
    stylingFeeCents: integer('styling_fee_cents').notNull(),
    prepaidCents: integer('prepaid_cents').notNull().default(0),
    shippedAt: ts('shipped_at').notNull().default(sql`now()`),
  },
  (t) => [check('fixes_amounts_not_negative', sql`${t.stylingFeeCents} >= 0 AND ${t.prepaidCents} >= 0`)],
);

export const fixItems = pgTable(
  'fix_items',
  {
    id: serial('id').primaryKey(),
    fixId: integer('fix_id').notNull().references(() => fixes.id),
    sku: text('sku').notNull(),
    description: text('description').notNull(),
    priceCents: integer('price_cents').notNull(),
  },
  (t) => [index('fix_items_by_fix').on(t.fixId), check('fix_items_price_not_negative', sql`${t.priceCents} >= 0`)],
);

/**
 * A return: which items of a Fix came back, and when. `settled_at` is set once its money
 * work is done (or found unnecessary); the partial index makes "returns still to settle"
 * cost O(unsettled), however many settled returns there are.
 */
export const returns = pgTable(
  'returns',
  {
    id: serial('id').primaryKey(),
    /** Globally unique, durable identity: idempotency keys derive from it, so they never collide across databases (a re-created database, staging and production sharing a provider account). */
    publicId: uuid('public_id').notNull().default(sql`gen_random_uuid()`),
    fixId: integer('fix_id').notNull().references(() => fixes.id),
    receivedAt: ts('received_at').notNull().default(sql`now()`),
    recordedBy: text('recorded_by').notNull().default('warehouse'),
    settledAt: ts('settled_at'),
    /** charge | refund | none | by-hand: what settling it took (by-hand: a person, through the action settled-by-hand; see its payment's resolved_*). */
    settlement: text('settlement'),
  },
  (t) => [
    uniqueIndex('returns_one_per_fix').on(t.fixId),
    uniqueIndex('returns_public_id').on(t.publicId),
    index('returns_unsettled').on(t.id).where(sql`${t.settledAt} IS NULL`),
    // settle-returns' scan of one of its 4 partitions (see ../jobs/settle-returns.ts), on the engine's
    // partition function: a new count needs a new index. It is what partitionIndexExpression(returnKeySql, 4)
    // writes (written out here, so that drizzle-kit reads this file without the engine);
    // test/partition-index.test.ts fails if the two drift apart.
    index('returns_unsettled_by_partition').on(sql`reconciler.partition_of('return:' || ${t.id}::text, 4)`, t.id).where(sql`${t.settledAt} IS NULL`),
  ],
);

export const returnItems = pgTable(
  'return_items',
  {
    returnId: integer('return_id').notNull().references(() => returns.id),
    fixItemId: integer('fix_item_id').notNull().references(() => fixItems.id),
  },
  (t) => [primaryKey({ columns: [t.returnId, t.fixItemId] })],
);

/**
 * The payments ledger: one intent per return, written before the provider is called, with
 * its amount frozen and an idempotency key derived from the return. UNIQUE(return_id) makes
 * a second effect for the same return impossible; UNIQUE(idempotency_key) makes a second
 * intent with the same key impossible.
 */
export const payments = pgTable(
  'payments',
  {
    id: serial('id').primaryKey(),
    returnId: integer('return_id').notNull().references(() => returns.id),
    /** charge | refund */
    kind: text('kind').notNull(),
    amountCents: integer('amount_cents').notNull(),
    currency: text('currency').notNull(),
    /** Frozen with the amount: every attempt sends the same parameters with the same key. */
    customerRef: text('customer_ref').notNull(),
    paymentMethod: text('payment_method').notNull(),
    idempotencyKey: text('idempotency_key').notNull(),
    /** pending → succeeded | declined | unknown (unknown → succeeded | declined on a later attempt) */
    state: text('state').notNull().default('pending'),
    providerRef: text('provider_ref'),
    attempts: integer('attempts').notNull().default(0),
    /** When the key was first sent: the provider's memory of it (about 24 h) counts from here. */
    firstSentAt: ts('first_sent_at'),
    lastError: text('last_error'),
    createdAt: ts('created_at').notNull().default(sql`now()`),
    updatedAt: ts('updated_at').notNull().default(sql`now()`),
    settledAt: ts('settled_at'),
    /**
     * Resolved by a person (the action settled-by-hand): when, who (the audit log's actor) and
     * why (their note). `state` stays what the provider said (declined, or pending if the key
     * was never sent); a resolved intent is never sent again (the send is a compare-and-set on
     * `resolved_at IS NULL`).
     */
    resolvedAt: ts('resolved_at'),
    resolvedBy: text('resolved_by'),
    resolutionNote: text('resolution_note'),
  },
  (t) => [
    uniqueIndex('payments_one_per_return').on(t.returnId),
    uniqueIndex('payments_idempotency_key').on(t.idempotencyKey),
    check('payments_kind', sql`${t.kind} IN ('charge', 'refund')`),
    check('payments_state', sql`${t.state} IN ('pending', 'succeeded', 'declined', 'unknown')`),
    check('payments_amount_positive', sql`${t.amountCents} > 0`),
    check('payments_succeeded_has_reference', sql`${t.state} <> 'succeeded' OR ${t.providerRef} IS NOT NULL`),
    check('payments_resolved_by_someone', sql`(${t.resolvedAt} IS NULL) = (${t.resolvedBy} IS NULL)`),
  ],
);
