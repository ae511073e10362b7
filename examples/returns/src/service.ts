/**
 * Settling a return: decide charge, refund or nothing, and carry it out exactly once.
 *
 * The exactly-once recipe (README "How exactly-once works"):
 *  (a) intent first: the decision and the payment intent, with its amount frozen and an
 *      idempotency key derived from the return (`return:{public id}:{kind}:v1`), are written
 *      with the Fix locked; UNIQUE(return_id) makes a second intent impossible, so a later
 *      pass always finds this one;
 *  (b) the provider is called outside any transaction, with that key;
 *  (c) the outcome is recorded with a compare-and-set on the intent
 *      (`WHERE state IN ('pending', 'unknown')`), in one transaction with the return.
 * A timeout, reset, 5xx, 409 or 429 leaves the intent `unknown`: the next attempt (at the time
 * a 429's or 503's Retry-After names, if it named one) sends the same key and the same frozen
 * parameters, so the provider answers with the first result instead of applying the effect
 * again. An outcome that stays unknown is resolved by asking the provider (./resolution.ts).
 */
import { sql } from 'drizzle-orm';
import { TerminalError, inPartition, queryRows, type Db, type Partition, type ReconcileContext, type ReconcileResult } from 'reconciler';
import type { PaymentProvider } from './provider.js';
import { completeIntent } from './resolution.js';
import { decideSettlement, money, type Settlement } from './settlement.js';

/** An item of the settle-returns scan: a return whose money work is still missing. */
export interface ReturnToSettle {
  id: number;
  /** When the warehouse recorded it: since then its money work has been missing. */
  receivedAt: Date;
}


/**
 * settle-returns' key, `return:<id>` (see ../jobs/settle-returns.ts), as SQL over `returns.id`:
 * what its scan filters a partition on, and what the index returns_unsettled_by_partition holds
 * (test/partition-index.test.ts checks that index against `partitionIndexExpression(returnKeySql, 4)`).
 */
export const returnKeySql = sql`'return:' || id::text`;

/** Returns still to settle, in keyset pages by id, through the partial index `returns_unsettled`. */
export async function findReturnsToSettle(db: Db, afterId: number, limit: number, partition: Partition = { index: 0, count: 1 }): Promise<ReturnToSettle[]> {
  // One partition of the items keyed `return:<id>`: through index returns_unsettled_by_partition when the count is 4
  // (the count is a bound value, so the planner sees it and picks the index), through returns_unsettled when unpartitioned.
  const rows = await queryRows<{ id: number; received_ms: number }>(
    db,
    sql`SELECT id, (extract(epoch FROM received_at) * 1000)::float8 AS received_ms FROM returns
        WHERE settled_at IS NULL AND id > ${afterId} AND ${inPartition(returnKeySql, partition)} ORDER BY id LIMIT ${limit}`,
  ).catch(explainMissingTables);
  return rows.map((row) => ({ id: Number(row.id), receivedAt: new Date(Number(row.received_ms)) }));
}

/**
 * A scan's error, rethrown: when the example's tables or columns are missing (its migrations not
 * applied), one line that says how they come, and how to be rid of the example.
 */
export function explainMissingTables(error: unknown): never {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause ?? (error as { code?: string; message?: string });
  if (cause.code !== '42P01' && cause.code !== '42703') throw error;
  // The engine never creates the example's tables.
  throw new Error(
    `the returns example's migrations are not applied to this database (${cause.message}): \`npm start\` or \`npm run seed\` apply them; ` +
      'if you did not mean to run the example, delete its files from jobs/ (settle-returns.ts, close-fixes.ts) or set JOBS_DIR to your own jobs folder',
    { cause: error },
  );
}

export interface ReturnState {
  id: number;
  public_id: string;
  settled: boolean;
  fix_id: number;
  currency: string;
  styling_fee_minor: number;
  prepaid_minor: number;
  checkout_charge_ref: string | null;
  customer_name: string;
  customer_ref: string;
  payment_method: string;
  /** Every item of the Fix; `returned` when this return or one settled before it sent it back. */
  items: { priceMinor: number; returned: boolean }[] | null;
  /** What the Fix's other returns' intents moved: charges less refunds. */
  moved_minor: number;
  payment_id: number | null;
  kind: 'charge' | 'refund' | null;
  amount_minor: number | null;
  payment_currency: string | null;
  charge_ref: string | null;
  idempotency_key: string | null;
  key_version: number | null;
  intent_customer_ref: string | null;
  intent_payment_method: string | null;
  state: 'pending' | 'succeeded' | 'declined' | 'unknown' | null;
  provider_ref: string | null;
  last_error: string | null;
  replays: number | null;
  legacy_key: boolean | null;
  /** Another return of the Fix whose intent is not final yet (pending, unknown, or declined and not resolved): this one's decision waits for it. */
  waiting_for: string | null;
  hours_since_first_send: number | null;
  seconds_since_last_send: number | null;
  seconds_unknown: number | null;
  /** Seconds since the key could no longer apply (negative: it will be that far ahead). */
  seconds_since_spent: number | null;
}

export interface Intent {
  id: number;
  kind: 'charge' | 'refund';
  amountMinor: number;
  currency: string;
  /** Refunds: the charge refunded. */
  chargeRef: string | null;
  idempotencyKey: string;
  keyVersion: number;
  customerRef: string;
  paymentMethod: string;
  state: 'pending' | 'succeeded' | 'declined' | 'unknown';
  providerRef: string | null;
  lastError: string | null;
  /** Hours since the current key was first sent; null if it never was. */
  hoursSinceFirstSend: number | null;
  /** Seconds since the current key was last sent; null if it never was. */
  secondsSinceLastSend: number | null;
  /** Seconds the outcome has been unknown; null when it is not. */
  secondsUnknown: number | null;
  /** How many times in a row the provider replayed a saved error for the current key. */
  replays: number;
  /** Sent before migration 0004, without the metadata a lookup searches for. */
  legacyKey: boolean;
  /** Seconds since the current key could no longer apply; null while it still can. */
  secondsSinceSpent: number | null;
}

/** The return, its Fix and customer, what the Fix's other returns did, and its payment intent if it has one. */
export async function loadReturn(db: Db, returnId: number): Promise<ReturnState | undefined> {
  const [row] = await queryRows<ReturnState>(
    db,
    sql`SELECT r.id, r.public_id, r.settled_at IS NOT NULL AS settled, f.id AS fix_id, f.currency, f.styling_fee_minor, f.prepaid_minor, f.checkout_charge_ref,
               c.name AS customer_name, 'cus_' || c.id AS customer_ref, c.payment_method,
               (SELECT json_agg(json_build_object('priceMinor', fi.price_minor, 'returned', EXISTS (
                         SELECT 1 FROM return_items ri JOIN returns o ON o.id = ri.return_id
                         WHERE ri.fix_item_id = fi.id AND (o.id = r.id OR o.settled_at IS NOT NULL OR EXISTS (SELECT 1 FROM payments op WHERE op.return_id = o.id))))
                       ORDER BY fi.id)
                  FROM fix_items fi WHERE fi.fix_id = f.id) AS items,
               (SELECT coalesce(sum(CASE op.kind WHEN 'charge' THEN op.amount_minor ELSE -op.amount_minor END), 0)::int
                  FROM payments op JOIN returns o ON o.id = op.return_id
                 WHERE o.fix_id = f.id AND o.id <> r.id AND (op.state = 'succeeded' OR op.resolved_at IS NOT NULL)) AS moved_minor,
               (SELECT string_agg(format('return %s (its %s, %s)', o.id, op.kind, op.state), ', ')
                  FROM payments op JOIN returns o ON o.id = op.return_id
                 WHERE o.fix_id = f.id AND o.id <> r.id AND op.resolved_at IS NULL AND op.state IN ('pending', 'unknown', 'declined')) AS waiting_for,
               p.id AS payment_id, p.kind, p.amount_minor, p.currency AS payment_currency, p.charge_ref, p.idempotency_key, p.key_version, p.state,
               p.customer_ref AS intent_customer_ref, p.payment_method AS intent_payment_method, p.provider_ref, p.last_error, p.replays, p.legacy_key,
               extract(epoch FROM now() - p.first_sent_at)::float8 / 3600 AS hours_since_first_send,
               extract(epoch FROM now() - p.last_sent_at)::float8 AS seconds_since_last_send,
               extract(epoch FROM now() - p.unknown_since)::float8 AS seconds_unknown,
               extract(epoch FROM now() - p.key_spent_at)::float8 AS seconds_since_spent
        FROM returns r JOIN fixes f ON f.id = r.fix_id JOIN customers c ON c.id = f.customer_id
        LEFT JOIN payments p ON p.return_id = r.id
        WHERE r.id = ${returnId}`,
  );
  return row;
}

const numberOrNull = (value: number | string | null): number | null => (value === null ? null : Number(value));

export function intentOf(row: ReturnState): Intent | undefined {
  if (row.payment_id === null) return undefined;
  return {
    id: Number(row.payment_id),
    kind: row.kind!,
    amountMinor: Number(row.amount_minor),
    currency: row.payment_currency!,
    chargeRef: row.charge_ref,
    idempotencyKey: row.idempotency_key!,
    keyVersion: Number(row.key_version ?? 1),
    customerRef: row.intent_customer_ref!,
    paymentMethod: row.intent_payment_method!,
    state: row.state!,
    providerRef: row.provider_ref,
    lastError: row.last_error,
    hoursSinceFirstSend: numberOrNull(row.hours_since_first_send),
    secondsSinceLastSend: numberOrNull(row.seconds_since_last_send),
    secondsUnknown: numberOrNull(row.seconds_unknown),
    replays: Number(row.replays ?? 0),
    legacyKey: row.legacy_key === true,
    secondsSinceSpent: numberOrNull(row.seconds_since_spent),
  };
}

/** What settling the return takes, by the rule, from what `row` says (see decideAndRecord for the locked decision). */
export function settlementOf(row: ReturnState): Settlement {
  return decideSettlement({ currency: row.currency, stylingFeeMinor: row.styling_fee_minor, prepaidMinor: row.prepaid_minor, items: row.items ?? [], movedMinor: Number(row.moved_minor) });
}

/** The intent's version-free identity, sent as metadata `intent_key`: what a lookup searches for. */
export const intentKeyOf = (returnPublicId: string, kind: 'charge' | 'refund'): string => `return:${returnPublicId}:${kind}`;

/** The idempotency key of an intent's key version `n`. */
export const idempotencyKeyOf = (returnPublicId: string, kind: 'charge' | 'refund', version: number): string => `${intentKeyOf(returnPublicId, kind)}:v${version}`;

/**
 * (a) The decision and its intent, taken one return of a Fix at a time: the Fix's row is
 * locked (FOR UPDATE) while the rule reads what its other returns did and the intent (or the
 * "nothing due" mark) is written, so that two returns of one Fix settled at once by two
 * replicas decide one after the other, and their refunds never add up to more than was paid.
 * An intent freezes every parameter of the request; its key derives from the return's durable,
 * globally unique identity. If the return has an intent already, that one wins. Returns the
 * intent, or `none` when nothing is due (the return is then marked settled), or `settled`
 * when someone else settled it meanwhile.
 */
export async function decideAndRecord(db: Db, returnId: number): Promise<Intent | 'none' | 'settled'> {
  return db.transaction(async (tx) => {
    const t = tx as unknown as Db;
    await queryRows(t, sql`SELECT f.id FROM fixes f JOIN returns r ON r.fix_id = f.id WHERE r.id = ${returnId} FOR UPDATE OF f`);
    const row = await loadReturn(t, returnId);
    if (!row || row.settled) return 'settled';
    const existing = intentOf(row);
    if (existing) return existing;
    // What the Fix's other returns moved counts once it is final: until then, this decision would rest on money that may not move.
    if (row.waiting_for !== null) throw new Error(`return ${returnId} waits for the other returns of its Fix ${row.fix_id} to be settled first: ${row.waiting_for}`);
    const decision = settlementOf(row);
    if (decision.kind === 'none') {
      await queryRows(t, sql`UPDATE returns SET settled_at = now(), settlement = 'none' WHERE id = ${returnId} AND settled_at IS NULL`);
      return 'none';
    }
    const chargeRef = decision.kind === 'refund' ? await chargeToRefund(t, row, decision.amountMinor) : null;
    await queryRows(
      t,
      sql`INSERT INTO payments (return_id, kind, amount_minor, currency, charge_ref, customer_ref, payment_method, idempotency_key)
          VALUES (${row.id}, ${decision.kind}, ${decision.amountMinor}, ${decision.currency}, ${chargeRef},
                  ${row.customer_ref}, ${row.payment_method}, ${idempotencyKeyOf(row.public_id, decision.kind, 1)})`,
    );
    return intentOf((await loadReturn(t, returnId))!)!;
  });
}

/**
 * The charge a refund of `amountMinor` is made against: the Fix's checkout charge, else a charge
 * of one of its returns, the first with that much left unrefunded (its amount less the refund
 * intents against it). Called with the Fix locked. None: a dead item that says why.
 */
async function chargeToRefund(db: Db, row: ReturnState, amountMinor: number): Promise<string> {
  const charges = await queryRows<{ ref: string; left_minor: number }>(
    db,
    sql`WITH charges AS (
          SELECT f.checkout_charge_ref AS ref, f.prepaid_minor AS amount, 0 AS ord FROM fixes f WHERE f.id = ${row.fix_id} AND f.checkout_charge_ref IS NOT NULL
          UNION ALL
          SELECT p.provider_ref, p.amount_minor, p.id FROM payments p JOIN returns o ON o.id = p.return_id
           WHERE o.fix_id = ${row.fix_id} AND p.kind = 'charge' AND p.state = 'succeeded'
        )
        SELECT c.ref, (c.amount - coalesce((SELECT sum(r.amount_minor) FROM payments r WHERE r.kind = 'refund' AND r.charge_ref = c.ref AND r.state <> 'declined'), 0))::int AS left_minor
        FROM charges c ORDER BY c.ord`,
  );
  const charge = charges.find((c) => Number(c.left_minor) >= amountMinor);
  if (charge) return charge.ref;
  const what = charges.length === 0 ? 'it has no charge to refund it against (no checkout charge recorded in fixes.checkout_charge_ref, and no charge of its returns)' : `no charge of it has that much left (${charges.map((c) => `${c.ref}: ${money(Number(c.left_minor), row.currency)} left`).join(', ')})`;
  throw new TerminalError(`return ${row.id} needs a refund of ${money(amountMinor, row.currency)}, but its Fix ${row.fix_id}: ${what}; ${settleByHandAdvice(row.id)}`);
}

/** What a decline tells the operator to do: settle the money outside the provider, then record it with the action settled-by-hand. */
export function settleByHandAdvice(returnId: number): string {
  return `settle it by hand, then: reconciler act settle-returns return:${returnId} settled-by-hand --note "…"`;
}

/** Fault injection for the crash tests: RECONCILER_CRASH_AT=<point> kills this process with SIGKILL there. */
export function crashPoint(point: 'before-call' | 'after-call' | 'during-record'): void {
  if (process.env.RECONCILER_CRASH_AT === point) process.kill(process.pid, 'SIGKILL');
}

export const past = { charge: 'charged', refund: 'refunded' } as const;

/** `45.00 USD to customer cus_7 (return 12)`: the customer by reference, not by name (errors are stored and shown to operators, and items that fail alike group together). */
export const describeIntent = (intent: Pick<Intent, 'kind' | 'amountMinor' | 'currency' | 'customerRef'>, returnId: number): string =>
  `${money(intent.amountMinor, intent.currency)} to customer ${intent.customerRef} (return ${returnId})`;

/**
 * Settles one return. Idempotent: a settled return is `unchanged`; an intent left by an
 * earlier attempt is completed with its own key and parameters, never duplicated; an outcome
 * that stays unknown is resolved by asking the provider (./resolution.ts).
 */
export async function settleReturn(returnId: number, ctx: ReconcileContext, provider: (ctx: ReconcileContext) => PaymentProvider | Promise<PaymentProvider>): Promise<ReconcileResult> {
  const { db } = ctx;
  const client = ctx.dryRun ? undefined : await provider(ctx); // a missing provider fails here, before any intent is written
  const row = await loadReturn(db, returnId);
  if (!row || row.settled) return 'unchanged';
  let intent = intentOf(row);

  if (!intent) {
    if (ctx.dryRun) {
      const decision = settlementOf(row);
      if (decision.kind === 'none') return { outcome: 'changed', note: `nothing to charge or refund for return ${returnId}: would mark it settled` };
      return { outcome: 'changed', note: `would ${decision.kind} ${money(decision.amountMinor, decision.currency)} to ${row.customer_name} (return ${returnId})` };
    }
    const decided = await decideAndRecord(db, returnId);
    if (decided === 'settled') return { outcome: 'unchanged', note: `return ${returnId} was settled by someone else while this attempt decided it: nothing sent` };
    if (decided === 'none') return { outcome: 'changed', note: `return ${returnId}: nothing to charge or refund` };
    intent = decided;
  }

  const what = describeIntent(intent, returnId);
  if (intent.state === 'succeeded') {
    if (ctx.dryRun) return { outcome: 'changed', note: `already ${past[intent.kind]} ${what}: would mark the return settled` };
    return (await recordOutcome(db, intent, returnId, { id: intent.providerRef! })) ? { outcome: 'changed', note: `return ${returnId} settled` } : 'unchanged';
  }
  if (intent.state === 'declined') {
    throw new TerminalError(`declined: the ${intent.kind} of ${what}: ${intent.lastError ?? 'no reason given'}; ${settleByHandAdvice(returnId)}`);
  }
  return completeIntent({ ctx, client, intent, returnId, publicId: row.public_id, what });
}

/** What the provider says it applied, and how we learnt it. */
export interface KnownEffect {
  id: string;
  amountMinor?: number;
  currency?: string;
  knownBy?: 'answer' | 'lookup';
}

/** Marks the intent succeeded and the return settled; false if another attempt got there first. The return is settled only by a succeeded payment. */
export async function recordOutcome(db: Db, intent: Intent, returnId: number, effect: KnownEffect): Promise<boolean> {
  return db.transaction(async (tx) => {
    await queryRows(
      tx as unknown as Db,
      sql`UPDATE payments SET state = 'succeeded', provider_ref = ${effect.id}, settled_at = now(), updated_at = now(), last_error = NULL, unknown_since = NULL,
                              provider_amount_minor = coalesce(${effect.amountMinor ?? null}::int, provider_amount_minor),
                              provider_currency = coalesce(${effect.currency ?? null}, provider_currency),
                              known_by = coalesce(${effect.knownBy ?? null}, known_by)
          WHERE id = ${intent.id} AND state IN ('pending', 'unknown')`,
    );
    crashPoint('during-record');
    const settled = await queryRows(
      tx as unknown as Db,
      sql`UPDATE returns SET settled_at = now(), settlement = ${intent.kind}
          WHERE id = ${returnId} AND settled_at IS NULL AND EXISTS (SELECT 1 FROM payments WHERE id = ${intent.id} AND state = 'succeeded')
          RETURNING id`,
    );
    return settled.length > 0;
  });
}
