/**
 * Settling a return: decide charge, refund or nothing, and carry it out exactly once.
 *
 * The exactly-once recipe (README "How exactly-once works"):
 *  (a) intent first: one statement inserts the payment intent with its amount frozen and an
 *      idempotency key derived from the return (`return:{id}:{kind}:v1`); UNIQUE(return_id)
 *      makes a second intent impossible, so a later pass always finds this one;
 *  (b) the provider is called outside any transaction, with that key;
 *  (c) the outcome is recorded with a compare-and-set on the intent
 *      (`WHERE state IN ('pending', 'unknown')`), in one transaction with the return.
 * A timeout, reset, 5xx, 409 or 429 leaves the intent `unknown`: the next attempt (at the time
 * a 429's or 503's Retry-After names, if it named one) sends the same key and the same frozen
 * parameters, so the provider answers with the first result instead of applying the effect again.
 */
import { sql } from 'drizzle-orm';
import { TerminalError, coerceError, errorSummary, inPartition, queryRows, type Db, type Partition, type ReconcileContext, type ReconcileResult } from 'reconciler';
import { ProviderError, type PaymentProvider } from './provider.js';
import { decideSettlement, money } from './settlement.js';

/** An item of the settle-returns scan: a return whose money work is still missing. */
export interface ReturnToSettle {
  id: number;
  /** When the warehouse recorded it: since then its money work has been missing. */
  receivedAt: Date;
}

/** Providers forget idempotency keys after about 24 hours; stop retrying an unknown intent well before. */
export const KEY_LIFETIME_HOURS = 20;

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
  ).catch((error: unknown) => {
    const code = (error as { cause?: { code?: string }; code?: string }).cause?.code ?? (error as { code?: string }).code;
    if (code !== '42P01') throw error;
    // The engine never creates the example's tables: say how they come, and how to be rid of the example.
    throw new Error(
      'the returns example has no tables in this database (relation "returns" does not exist): `npm start` or `npm run seed` apply its migrations; ' +
        'if you did not mean to run the example, delete jobs/settle-returns.ts or set JOBS_DIR to your own jobs folder',
      { cause: error },
    );
  });
  return rows.map((row) => ({ id: Number(row.id), receivedAt: new Date(Number(row.received_ms)) }));
}

export interface ReturnState {
  id: number;
  public_id: string;
  settled: boolean;
  currency: string;
  styling_fee_minor: number;
  prepaid_minor: number;
  customer_name: string;
  customer_ref: string;
  payment_method: string;
  items: { priceMinor: number; returned: boolean }[] | null;
  payment_id: number | null;
  kind: 'charge' | 'refund' | null;
  amount_minor: number | null;
  payment_currency: string | null;
  idempotency_key: string | null;
  intent_customer_ref: string | null;
  intent_payment_method: string | null;
  state: 'pending' | 'succeeded' | 'declined' | 'unknown' | null;
  provider_ref: string | null;
  last_error: string | null;
  hours_since_first_send: number | null;
}

export interface Intent {
  id: number;
  kind: 'charge' | 'refund';
  amountMinor: number;
  currency: string;
  idempotencyKey: string;
  customerRef: string;
  paymentMethod: string;
  state: 'pending' | 'succeeded' | 'declined' | 'unknown';
  providerRef: string | null;
  lastError: string | null;
  /** Hours since the key was first sent; null if it never was. */
  hoursSinceFirstSend: number | null;
}

export async function loadReturn(db: Db, returnId: number): Promise<ReturnState | undefined> {
  const [row] = await queryRows<ReturnState>(
    db,
    sql`SELECT r.id, r.public_id, r.settled_at IS NOT NULL AS settled, f.currency, f.styling_fee_minor, f.prepaid_minor,
               c.name AS customer_name, 'cus_' || c.id AS customer_ref, c.payment_method,
               (SELECT json_agg(json_build_object('priceMinor', fi.price_minor, 'returned', ri.return_id IS NOT NULL) ORDER BY fi.id)
                  FROM fix_items fi LEFT JOIN return_items ri ON ri.fix_item_id = fi.id AND ri.return_id = r.id
                 WHERE fi.fix_id = f.id) AS items,
               p.id AS payment_id, p.kind, p.amount_minor, p.currency AS payment_currency, p.idempotency_key, p.state,
               p.customer_ref AS intent_customer_ref, p.payment_method AS intent_payment_method,
               p.provider_ref, p.last_error, extract(epoch FROM now() - p.first_sent_at)::float8 / 3600 AS hours_since_first_send
        FROM returns r JOIN fixes f ON f.id = r.fix_id JOIN customers c ON c.id = f.customer_id
        LEFT JOIN payments p ON p.return_id = r.id
        WHERE r.id = ${returnId}`,
  );
  return row;
}

export function intentOf(row: ReturnState): Intent | undefined {
  if (row.payment_id === null) return undefined;
  return {
    id: Number(row.payment_id),
    kind: row.kind!,
    amountMinor: Number(row.amount_minor),
    currency: row.payment_currency!,
    idempotencyKey: row.idempotency_key!,
    customerRef: row.intent_customer_ref!,
    paymentMethod: row.intent_payment_method!,
    state: row.state!,
    providerRef: row.provider_ref,
    lastError: row.last_error,
    hoursSinceFirstSend: row.hours_since_first_send === null ? null : Number(row.hours_since_first_send),
  };
}

/**
 * (a) The intent, inserted once, with every parameter of the request frozen; if one exists
 * already, that one wins. The key derives from the return's durable, globally unique
 * identity, so it never collides with another database's return of the same number.
 */
export async function ensureIntent(db: Db, row: ReturnState, kind: 'charge' | 'refund', amountMinor: number, currency: string): Promise<Intent> {
  const key = `return:${row.public_id}:${kind}:v1`;
  await queryRows(
    db,
    sql`INSERT INTO payments (return_id, kind, amount_minor, currency, customer_ref, payment_method, idempotency_key)
        SELECT ${row.id}, ${kind}, ${amountMinor}, ${currency}, ${row.customer_ref}, ${row.payment_method}, ${key}
        WHERE EXISTS (SELECT 1 FROM returns WHERE id = ${row.id} AND settled_at IS NULL)
        ON CONFLICT DO NOTHING`,
  );
  const reloaded = await loadReturn(db, row.id);
  const intent = reloaded && intentOf(reloaded);
  if (!intent) throw new Error(`return ${row.id} was settled by someone else while its intent was being written; the next pass will see it`);
  return intent;
}

/** What a decline tells the operator to do: settle the money outside the provider, then record it with the action settled-by-hand. */
export function settleByHandAdvice(returnId: number): string {
  return `settle it by hand, then: reconciler act settle-returns return:${returnId} settled-by-hand --note "…"`;
}

/** Fault injection for the crash tests: RECONCILER_CRASH_AT=<point> kills this process with SIGKILL there. */
function crashPoint(point: 'before-call' | 'after-call' | 'during-record'): void {
  if (process.env.RECONCILER_CRASH_AT === point) process.kill(process.pid, 'SIGKILL');
}

const past = { charge: 'charged', refund: 'refunded' } as const;
const to = { charge: 'to', refund: 'to' } as const;

/**
 * Settles one return. Idempotent: a settled return is `unchanged`; an intent left by an
 * earlier attempt is completed with its own key and parameters, never duplicated.
 */
export async function settleReturn(returnId: number, ctx: ReconcileContext, provider: (ctx: ReconcileContext) => PaymentProvider | Promise<PaymentProvider>): Promise<ReconcileResult> {
  const { db } = ctx;
  const client = ctx.dryRun ? undefined : await provider(ctx); // a missing provider fails here, before any intent is written
  const row = await loadReturn(db, returnId);
  if (!row || row.settled) return 'unchanged';
  let intent = intentOf(row);

  if (!intent) {
    const decision = decideSettlement({ currency: row.currency, stylingFeeMinor: row.styling_fee_minor, prepaidMinor: row.prepaid_minor, items: row.items ?? [] });
    if (decision.kind === 'none') {
      if (ctx.dryRun) return { outcome: 'changed', note: `nothing to charge or refund for return ${returnId}: would mark it settled` };
      const marked = await queryRows(
        db,
        sql`UPDATE returns SET settled_at = now(), settlement = 'none'
            WHERE id = ${returnId} AND settled_at IS NULL AND NOT EXISTS (SELECT 1 FROM payments WHERE return_id = ${returnId})
            RETURNING id`,
      );
      return marked.length > 0 ? { outcome: 'changed', note: `return ${returnId}: nothing to charge or refund` } : 'unchanged';
    }
    if (ctx.dryRun) {
      return { outcome: 'changed', note: `would ${decision.kind} ${money(decision.amountMinor, decision.currency)} ${to[decision.kind]} ${row.customer_name} (return ${returnId})` };
    }
    intent = await ensureIntent(db, row, decision.kind, decision.amountMinor, decision.currency);
  }

  // The customer by reference, not by name: errors are stored and shown to operators, and items that fail alike group together.
  const what = `${money(intent.amountMinor, intent.currency)} ${to[intent.kind]} customer ${row.customer_ref} (return ${returnId})`;
  if (intent.state === 'succeeded') {
    if (ctx.dryRun) return { outcome: 'changed', note: `already ${past[intent.kind]} ${what}: would mark the return settled` };
    return (await recordOutcome(db, intent, returnId, intent.providerRef)) ? { outcome: 'changed', note: `return ${returnId} settled` } : 'unchanged';
  }
  if (intent.state === 'declined') {
    throw new TerminalError(`declined: the ${intent.kind} of ${what}: ${intent.lastError ?? 'no reason given'}; ${settleByHandAdvice(returnId)}`);
  }
  if (intent.hoursSinceFirstSend !== null && intent.hoursSinceFirstSend > KEY_LIFETIME_HOURS) {
    throw new TerminalError(
      `parked: the ${intent.kind} of ${what} is still ${intent.state} ${Math.floor(intent.hoursSinceFirstSend)} hours after its key was first sent; the provider may have ` +
        'forgotten the key, so retrying could apply it twice: look it up at the provider, record the outcome on the payment, then `reconciler retry`',
    );
  }
  if (ctx.dryRun) return { outcome: 'changed', note: `would ${intent.state === 'unknown' ? 'retry' : 'send'} the ${intent.kind} of ${what}` };

  // (b) The call, outside any transaction, with the intent's key and frozen parameters.
  crashPoint('before-call');
  // A compare-and-set, the fence against settled-by-hand (./by-hand.ts): that action locks the return, then
  // resolves the intent only if it was never sent, so either it sees this stamp and refuses, or this finds the
  // intent resolved (or the return settled) and sends nothing.
  const sending = await queryRows(
    db,
    sql`UPDATE payments p SET attempts = p.attempts + 1, first_sent_at = coalesce(p.first_sent_at, now()), updated_at = now()
        FROM returns r
        WHERE p.id = ${intent.id} AND r.id = p.return_id AND r.settled_at IS NULL AND p.state IN ('pending', 'unknown') AND p.resolved_at IS NULL
        RETURNING p.id`,
  );
  if (sending.length === 0) return { outcome: 'unchanged', note: `return ${returnId} was settled, or its ${intent.kind} resolved, by someone else meanwhile: nothing sent` };
  const request = { idempotencyKey: intent.idempotencyKey, amountMinor: intent.amountMinor, currency: intent.currency, customer: intent.customerRef, paymentMethod: intent.paymentMethod, returnId };
  let providerRef: string;
  try {
    providerRef = (await (intent.kind === 'charge' ? client!.charge(request, ctx.signal) : client!.refund(request, ctx.signal))).id;
  } catch (error) {
    if (error instanceof ProviderError) return await recordFailure(db, intent, returnId, error, what);
    // Aborted (item timeout, shutdown, lost lease) while the request was out: its outcome is unknown.
    await queryRows(db, sql`UPDATE payments SET state = 'unknown', last_error = ${errorSummary(coerceError(error), 500)}, updated_at = now() WHERE id = ${intent.id} AND state IN ('pending', 'unknown')`).catch(() => undefined);
    throw error;
  }
  crashPoint('after-call');

  // (c) The outcome, by compare-and-set on the intent, with the return, in one transaction.
  const recorded = await recordOutcome(db, intent, returnId, providerRef);
  ctx.log.info({ event: 'returns:effect', returnId, kind: intent.kind, amountMinor: intent.amountMinor, providerRef, idempotencyKey: intent.idempotencyKey }, `${past[intent.kind]} ${what}: ${providerRef}`);
  return recorded ? { outcome: 'changed', note: `${past[intent.kind]} ${what}: ${providerRef}` } : 'unchanged';
}

/** Marks the intent succeeded and the return settled; false if another attempt got there first. The return is settled only by a succeeded payment. */
async function recordOutcome(db: Db, intent: Intent, returnId: number, providerRef: string | null): Promise<boolean> {
  return db.transaction(async (tx) => {
    await queryRows(
      tx as unknown as Db,
      sql`UPDATE payments SET state = 'succeeded', provider_ref = ${providerRef}, settled_at = now(), updated_at = now(), last_error = NULL
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

/** Records what the provider said, then throws what the engine should do next. */
async function recordFailure(db: Db, intent: Intent, returnId: number, error: ProviderError, what: string): Promise<never> {
  if (error.failure === 'declined') {
    await queryRows(
      db,
      sql`UPDATE payments SET state = 'declined', last_error = ${errorSummary(error, 500)}, updated_at = now()
          WHERE id = ${intent.id} AND state IN ('pending', 'unknown')`,
    );
    throw new TerminalError(`declined: the ${intent.kind} of ${what} (${error.message}); ${settleByHandAdvice(returnId)}`);
  }
  // A request that cannot have reached the provider leaves the intent as it was: nothing happened there.
  const state = error.failure === 'retryable' && error.sent ? 'unknown' : intent.state;
  await queryRows(db, sql`UPDATE payments SET state = ${state}, last_error = ${errorSummary(error, 500)}, updated_at = now() WHERE id = ${intent.id} AND state IN ('pending', 'unknown')`);
  // Says what happened, and the key a retry sends: not that one will come (the item may be dead).
  // The provider's error is the cause: its `retryAfter` (a 429's or 503's Retry-After) tells the engine when to come back.
  if (error.failure === 'retryable' && !error.sent) throw new Error(`not sent: the ${intent.kind} of ${what}: ${error.message}`, { cause: error });
  if (error.failure === 'retryable') throw new Error(`outcome unknown: the ${intent.kind} of ${what}: ${error.message} (idempotency key ${intent.idempotencyKey})`, { cause: error });
  if (error.status === 401 || error.status === 403) throw new Error(`the provider refused our credentials (${error.message}): check PAYMENT_PROVIDER_KEY`);
  if (error.status === 404) throw new Error(`the provider has no such endpoint (${error.message}): check PAYMENT_PROVIDER_URL`);
  throw new TerminalError(`rejected: the ${intent.kind} of ${what}: ${error.message}; not retried, as the same request would be rejected again`);
}
