/**
 * The example business: customers receive Fixes (boxes of items), keep some and send the
 * rest back. A warehouse associate records a return; the money work (charge or refund) is
 * left to the settle-returns reconciler. The payments ledger holds one intent per return.
 */
import { sql } from 'drizzle-orm';
import { boolean, check, index, integer, jsonb, pgTable, primaryKey, serial, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core';

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

export const customers = pgTable('customers', {
  id: serial('id').primaryKey(),
  name: text('name').notNull(),
  email: text('email').notNull(),
  /** The provider's reference for the customer's card. */
  paymentMethod: text('payment_method').notNull(),
  createdAt: ts('created_at').notNull().default(sql`now()`),
});

/**
 * A shipment of items to a customer, with a styling fee, and what the customer prepaid at
 * checkout. Amounts are in the currency's minor units, by its ISO 4217 exponent (USD cents,
 * JPY yen, KWD fils: see ../src/money.ts). The prepaid amount was charged at checkout: that
 * charge, the Fix's original payment, is what its refunds are made against.
 */
export const fixes = pgTable(
  'fixes',
  {
    id: serial('id').primaryKey(),
    /** Durable identity: the checkout charge's idempotency key and metadata derive from it. */
    publicId: uuid('public_id').notNull().default(sql`gen_random_uuid()`),
    customerId: integer('customer_id').notNull().references(() => customers.id),
    currency: text('currency').notNull().default('USD'),
    stylingFeeMinor: integer('styling_fee_minor').notNull(),
    prepaidMinor: integer('prepaid_minor').notNull().default(0),
    /** The provider's id of the checkout charge (`ch_…`) that took `prepaid_minor`; null when nothing was prepaid. */
    checkoutChargeRef: text('checkout_charge_ref'),
    shippedAt: ts('shipped_at').notNull().default(sql`now()`),
    /** When close-fixes closed it: every return settled, and nothing more can come back (../src/close-fixes.ts). Null while open. */
    closedAt: ts('closed_at'),
  },
  (t) => [
    check('fixes_amounts_not_negative', sql`${t.stylingFeeMinor} >= 0 AND ${t.prepaidMinor} >= 0`),
    uniqueIndex('fixes_public_id').on(t.publicId),
    // close-fixes' scan: the open Fixes only, by id, so that a pass costs O(open Fixes), however many are closed.
    index('fixes_open').on(t.id).where(sql`${t.closedAt} IS NULL`),
  ],
);

export const fixItems = pgTable(
  'fix_items',
  {
    id: serial('id').primaryKey(),
    fixId: integer('fix_id').notNull().references(() => fixes.id),
    sku: text('sku').notNull(),
    description: text('description').notNull(),
    priceMinor: integer('price_minor').notNull(),
  },
  (t) => [index('fix_items_by_fix').on(t.fixId), check('fix_items_price_not_negative', sql`${t.priceMinor} >= 0`)],
);

/**
 * A return: which items of a Fix came back, and when. A Fix may come back in several returns,
 * each settled on its own (its refunds are partial refunds of the Fix's checkout charge). `settled_at` is set once its money
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
    index('returns_by_fix').on(t.fixId),
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
 *
 * An outcome that stays unknown is resolved by asking the provider (../src/resolution.ts):
 * an effect found is adopted; a confirmed absence, once the key can no longer apply, lets the
 * intent move to a new key version with the same frozen parameters (`key_version`, and the
 * superseded keys with why in `key_history`).
 */
export const payments = pgTable(
  'payments',
  {
    id: serial('id').primaryKey(),
    returnId: integer('return_id').notNull().references(() => returns.id),
    /** charge | refund */
    kind: text('kind').notNull(),
    /** In the currency's minor units (ISO 4217 exponent). */
    amountMinor: integer('amount_minor').notNull(),
    currency: text('currency').notNull(),
    /** For a refund: the charge it refunds (the Fix's checkout charge), as the provider requires. */
    chargeRef: text('charge_ref'),
    /** Frozen with the amount: every attempt sends the same parameters with the same key. */
    customerRef: text('customer_ref').notNull(),
    paymentMethod: text('payment_method').notNull(),
    /** `return:<public id>:<kind>:v<key_version>`: the version moves only after a confirmed absence (see key_history). */
    idempotencyKey: text('idempotency_key').notNull(),
    keyVersion: integer('key_version').notNull().default(1),
    /** The keys this intent sent before its current one: `[{ key, firstSentAt, lastSentAt, retiredAt, why }]`. */
    keyHistory: jsonb('key_history').notNull().default(sql`'[]'::jsonb`),
    /** Sent before migration 0004, without the metadata a lookup searches for: never re-keyed, and parked once spent. */
    legacyKey: boolean('legacy_key').notNull().default(false),
    /** pending → succeeded | declined | unknown (unknown → succeeded | declined on a later attempt) */
    state: text('state').notNull().default('pending'),
    providerRef: text('provider_ref'),
    attempts: integer('attempts').notNull().default(0),
    /** When the current key was first sent: the provider's memory of it (about 24 h) counts from here. */
    firstSentAt: ts('first_sent_at'),
    /** When the current key was last sent: it can apply no later than this plus the request timeout. */
    lastSentAt: ts('last_sent_at'),
    /** Since when the outcome has been unknown (null once known). */
    unknownSince: ts('unknown_since'),
    /** How many times in a row the provider replayed a saved error for the current key. */
    replays: integer('replays').notNull().default(0),
    /** When the current key could no longer apply: the provider replayed a saved answer for it, or it was retired before its expiry. */
    keySpentAt: ts('key_spent_at'),
    /** The last lookup at the provider: when, and what it said. */
    lookedUpAt: ts('looked_up_at'),
    lookupNote: text('lookup_note'),
    /** What the provider says it applied (from its answer, or found by a lookup). */
    providerAmountMinor: integer('provider_amount_minor'),
    providerCurrency: text('provider_currency'),
    /** How the effect became known: `answer` (the provider's answer to a POST) or `lookup` (found by asking after the fact). */
    knownBy: text('known_by'),
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
    check('payments_amount_positive', sql`${t.amountMinor} > 0`),
    check('payments_known_by', sql`${t.knownBy} IS NULL OR ${t.knownBy} IN ('answer', 'lookup')`),
    check('payments_succeeded_has_reference', sql`${t.state} <> 'succeeded' OR ${t.providerRef} IS NOT NULL`),
    check('payments_resolved_by_someone', sql`(${t.resolvedAt} IS NULL) = (${t.resolvedBy} IS NULL)`),
  ],
);
