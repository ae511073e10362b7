/**
 * Completing a payment intent: send it with its key, and resolve an outcome that stays unknown
 * by asking the provider rather than a person. The rules (docs/guarantees.md, "Unknown outcomes"):
 *
 * - Unknown for longer than LOOKUP_AFTER_SECONDS, or a saved error replayed (once is enough: the
 *   provider never runs that key again): look the intent up at the provider (its metadata
 *   `intent_key`).
 *   - Found: adopt it (its id, amount and currency are recorded; the return is settled; no POST).
 *   - Found with another amount or currency: a dead item with both figures, never adopted.
 *   - Not found, and the key can still apply: go on sending the same key.
 * - A key can no longer apply once the provider replayed a saved answer for it (it never runs
 *   that key again), or once it is retired: KEY_RETIRE_HOURS after its first send, well before
 *   the provider forgets it (Stripe: 24 h), it is never sent again, and it can no longer apply
 *   STILL_IN_FLIGHT_SECONDS after its last send. No POST ever reuses an expired key.
 * - Not found, with the key spent: the absence counts only for a lookup made the provider's
 *   search lag after the key could last apply (refunds are listed, with no lag). Before that the
 *   item waits; after it, the intent moves to a new key version with the same frozen
 *   parameters, and the superseded key, and why, is recorded on the intent (`key_history`).
 * - The provider cannot answer lookups (no search API, or it refuses): with the key spent, the
 *   item is parked for a person, with what is unknown and the manual action that resolves it.
 *   A provider that is down is tried again, as any unknown outcome.
 */
import { sql } from 'drizzle-orm';
import { TerminalError, coerceError, errorSummary, queryRows, type Db, type ReconcileContext, type ReconcileResult } from 'reconciler';
import type { SQL } from 'drizzle-orm';
import { ProviderError, type Effect, type EffectRequest, type PaymentProvider } from './provider.js';
import { crashPoint, idempotencyKeyOf, intentKeyOf, intentOf, loadReturn, past, recordOutcome, settleByHandAdvice, type Intent } from './service.js';
import { money } from './settlement.js';

/** An outcome unknown for this long is looked up before the next send. */
export const LOOKUP_AFTER_SECONDS = 5 * 60;
/** A key is retired (never sent again) this long after its first send; providers forget keys after about 24 hours. */
export const KEY_RETIRE_HOURS = 20;
/** A request sent this long ago can no longer be running at the provider. */
export const STILL_IN_FLIGHT_SECONDS = 120;

interface Completion {
  ctx: ReconcileContext;
  /** Undefined under --dry-run: nothing is sent or looked up. */
  client: PaymentProvider | undefined;
  intent: Intent;
  returnId: number;
  publicId: string;
  /** `45.00 USD to customer cus_7 (return 12)` */
  what: string;
}

/** Why the current key can no longer apply, and for how many seconds it has not (negative: not yet); undefined while it still can. */
function spentKey(intent: Intent): { why: string; sinceSeconds: number } | undefined {
  if (intent.replays > 0) {
    return { why: `the provider replayed a saved error for key ${intent.idempotencyKey} ${intent.replays} time(s), so it will never run that key again`, sinceSeconds: intent.secondsSinceSpent ?? 0 };
  }
  if (intent.hoursSinceFirstSend !== null && intent.hoursSinceFirstSend >= KEY_RETIRE_HOURS) {
    return {
      why: `key ${intent.idempotencyKey} was first sent ${Math.floor(intent.hoursSinceFirstSend)} h ago and is retired ${KEY_RETIRE_HOURS} h after its first send, before the provider forgets it`,
      sinceSeconds: (intent.secondsSinceLastSend ?? 0) - STILL_IN_FLIGHT_SECONDS,
    };
  }
  return undefined;
}

/**
 * The spent rule again, in SQL over `payments`, for the writes that depend on it (a new key
 * version, settled-by-hand): the row is checked as it is when written, not as an earlier read saw
 * it, so an attempt that sent the key meanwhile (moving `last_sent_at`) makes the write match
 * nothing. True when the current key was sent, can no longer apply, and has not for `lagMs`.
 */
export function keySpentForSql(lagMs: number): SQL {
  const lag = sql`${lagMs}::int * interval '1 millisecond'`;
  return sql`(first_sent_at IS NOT NULL AND NOT legacy_key AND CASE
                WHEN replays > 0 THEN key_spent_at <= now() - ${lag}
                ELSE first_sent_at <= now() - ${KEY_RETIRE_HOURS}::int * interval '1 hour'
                 AND last_sent_at <= now() - ${STILL_IN_FLIGHT_SECONDS}::int * interval '1 second' - ${lag} END)`;
}

/** The current key was sent, will never apply again, and has not for `lagMs` (a search made now would show its effect): nothing sent with it can still move money. */
export function keyCanNoLongerApply(intent: Intent, lagMs: number): boolean {
  const spent = spentKey(intent);
  return intent.hoursSinceFirstSend !== null && !intent.legacyKey && spent !== undefined && spent.sinceSeconds >= lagMs / 1_000;
}

function lookupDue(intent: Intent): boolean {
  if (spentKey(intent)) return true;
  return intent.state === 'unknown' && (intent.secondsUnknown ?? 0) >= LOOKUP_AFTER_SECONDS;
}

/** Sends the intent, or first resolves its unknown outcome by a lookup (see the rules above). */
export async function completeIntent(c: Completion): Promise<ReconcileResult> {
  const { ctx, client, intent, returnId, what } = c;
  let current = intent;
  if (lookupDue(intent)) {
    if (!client) return { outcome: 'changed', note: `would look the ${intent.kind} of ${what} up at the provider (its outcome is unknown) before sending anything` };
    const resolved = await resolveByLookup({ ...c, client });
    if (resolved !== 'send') return resolved;
    // The lookup may have moved the intent to a new key version (here, or in another attempt): send what it is now.
    const reloaded = await loadReturn(ctx.db, returnId);
    current = (reloaded && intentOf(reloaded)) ?? intent;
  }
  if (!client) return { outcome: 'changed', note: `would ${intent.state === 'unknown' ? 'retry' : 'send'} the ${intent.kind} of ${what}` };
  const spent = spentKey(current);
  // Spent and not replaced (another attempt is resolving it): never send it again.
  if (spent) throw new Error(`not sent: the ${current.kind} of ${what}: ${spent.why}; a lookup resolves it`);
  return send({ ...c, client, intent: current });
}

/**
 * Asks the provider for the intent's effects. Returns what to do next: `send` (the key can
 * still apply, or a new key version replaced it), or the item's result (adopted; or waiting).
 */
async function resolveByLookup(c: Completion & { client: PaymentProvider }): Promise<ReconcileResult | 'send'> {
  const { ctx, client, intent, returnId, what } = c;
  const spent = spentKey(intent);
  const lookup = { kind: intent.kind, intentKey: intentKeyOf(c.publicId, intent.kind), ...(intent.chargeRef ? { charge: intent.chargeRef } : {}) };
  if (intent.legacyKey) {
    // Sent before the intent's metadata existed (migration 0004): no lookup can find its effect, so it is never re-keyed.
    if (!spent) return 'send';
    throw new TerminalError(parkedReason(c, spent.why, 'it was sent before settle-returns tagged its requests with metadata, so no lookup can find its effect'));
  }
  let found: Effect[] | undefined;
  try {
    found = await client.find(lookup, ctx.signal);
  } catch (error) {
    if (ctx.signal.aborted) throw error;
    if (!spent) return 'send'; // the key still works: sending it again resolves the outcome as well
    const why = errorSummary(coerceError(error), 300);
    if (error instanceof ProviderError && error.failure === 'permanent') throw new TerminalError(parkedReason(c, spent.why, `the provider refused the lookup (${why})`));
    throw new Error(`outcome unknown: the ${intent.kind} of ${what}: ${spent.why}, and the lookup failed (${why}); looking it up again`, { cause: error });
  }
  if (found === undefined) {
    if (!spent) return 'send';
    throw new TerminalError(parkedReason(c, spent.why, 'the provider cannot answer lookups (it has no search API)'));
  }
  // A declined charge can leave a failed charge object: no money moved. The same key, sent again, replays its decline.
  found = found.filter((effect) => effect.status !== 'failed' && effect.status !== 'canceled');
  await noteLookup(ctx.db, intent, found.length === 0 ? 'nothing found' : `found ${found.map((e) => e.id).join(', ')}`);
  if (found.length > 1) {
    throw new TerminalError(
      `duplicate at the provider: the ${intent.kind} of ${what} was applied ${found.length} times (${found.map((e) => `${e.id} ${money(e.amountMinor, e.currency)}`).join(', ')}); ` +
        `refund all but one at the provider, then record the one kept: reconciler act settle-returns return:${returnId} adopt-effect --note <its id>`,
    );
  }
  const [effect] = found;
  if (effect) return adopt(c, effect);
  if (!spent) return 'send'; // not found, and the same key can still apply: it resolves the outcome
  return confirmAbsence(c, spent);
}

/** An effect the lookup found: adopt it if it is what the intent asked for, and never otherwise. */
async function adopt(c: Completion, effect: Effect): Promise<ReconcileResult> {
  const { ctx, intent, returnId, what } = c;
  if (effect.amountMinor !== intent.amountMinor || effect.currency.toUpperCase() !== intent.currency.toUpperCase() || effect.kind !== intent.kind) {
    throw new TerminalError(
      `mismatch at the provider: the ${intent.kind} of ${what} was found as ${effect.id}, a ${effect.kind} of ${money(effect.amountMinor, effect.currency)}, ` +
        `not ${money(intent.amountMinor, intent.currency)}; not adopted: look at both at the provider and settle it by hand`,
    );
  }
  if (effect.status === 'pending') throw new Error(`pending at the provider: the ${intent.kind} of ${what} is ${effect.id}, still pending; looking again`);
  if (effect.status !== 'succeeded') {
    throw new TerminalError(`the ${intent.kind} of ${what} was found at the provider as ${effect.id}, ${effect.status}; ${settleByHandAdvice(returnId)}`);
  }
  const recorded = await recordOutcome(ctx.db, intent, returnId, { id: effect.id, amountMinor: effect.amountMinor, currency: effect.currency.toUpperCase(), knownBy: 'lookup' });
  ctx.log.info({ event: 'returns:adopted', returnId, kind: intent.kind, amountMinor: intent.amountMinor, currency: intent.currency, providerRef: effect.id, idempotencyKey: effect.idempotencyKey }, `found at the provider: ${past[intent.kind]} ${what}: ${effect.id}`);
  return recorded ? { outcome: 'changed', note: `found at the provider by lookup: ${past[intent.kind]} ${what}: ${effect.id}` } : 'unchanged';
}

/**
 * Nothing found, and the key can no longer apply: once the search has had its lag since then,
 * the absence is confirmed and the intent moves to a new key version; before, the item waits.
 */
async function confirmAbsence(c: Completion & { client: PaymentProvider }, spent: { why: string; sinceSeconds: number }): Promise<ReconcileResult | 'send'> {
  const { ctx, client, intent, what } = c;
  const lagSeconds = intent.kind === 'refund' ? 0 : client.searchLagMs / 1_000; // refunds are listed: no lag
  const since = spent.sinceSeconds;
  if (since < lagSeconds) {
    const waitMs = Math.max(1_000, Math.ceil((lagSeconds - since) * 1_000));
    const error = new Error(`outcome unknown: the ${intent.kind} of ${what}: ${spent.why}; not found at the provider yet, and its search may lag ${Math.round(lagSeconds)} s: looking again in ${Math.ceil(waitMs / 1_000)} s before it counts as absent`);
    throw Object.assign(error, { retryAfter: waitMs });
  }
  const version = intent.keyVersion + 1;
  const key = idempotencyKeyOf(c.publicId, intent.kind, version);
  const why = `${spent.why}; not found at the provider ${Math.round(since)} s later (search lag ${Math.round(lagSeconds)} s)`;
  const moved = await queryRows(
    ctx.db,
    sql`UPDATE payments SET key_history = key_history || jsonb_build_array(jsonb_build_object(
              'key', idempotency_key, 'version', key_version, 'firstSentAt', first_sent_at, 'lastSentAt', last_sent_at, 'retiredAt', now(), 'why', ${why}::text)),
            idempotency_key = ${key}, key_version = ${version}, state = 'pending', first_sent_at = NULL, last_sent_at = NULL,
            unknown_since = NULL, replays = 0, key_spent_at = NULL, updated_at = now()
        WHERE id = ${intent.id} AND idempotency_key = ${intent.idempotencyKey} AND state IN ('pending', 'unknown') AND ${keySpentForSql(lagSeconds * 1_000)}
        RETURNING id`,
  );
  if (moved.length === 0) return 'send'; // another attempt moved or sent it meanwhile: the reload sees which, and sends only a key that can apply
  ctx.log.warn({ event: 'returns:new-key', kind: intent.kind, idempotencyKey: key, previousKey: intent.idempotencyKey, why }, `the ${intent.kind} of ${what}: new key version ${version} (${key}), because ${why}`);
  return 'send';
}

async function noteLookup(db: Db, intent: Intent, note: string): Promise<void> {
  await queryRows(db, sql`UPDATE payments SET looked_up_at = now(), lookup_note = ${note}, updated_at = now() WHERE id = ${intent.id}`);
}

/** A parked item's reason: what is unknown, and which action resolves it. */
function parkedReason(c: Completion, spent: string, cannot: string): string {
  const { intent, returnId, what } = c;
  return (
    `parked: whether the ${intent.kind} of ${what} was applied is unknown: ${spent}, and ${cannot}. ` +
    `Look it up at the provider (metadata intent_key ${intentKeyOf(c.publicId, intent.kind)}, idempotency key ${intent.idempotencyKey}): ` +
    `if it is there, reconciler act settle-returns return:${returnId} adopt-effect --note <its id>; if it is not, ${settleByHandAdvice(returnId)}`
  );
}

/** (b) and (c): the call with the intent's current key and frozen parameters, then its outcome. */
async function send(c: Completion & { client: PaymentProvider }): Promise<ReconcileResult> {
  const { ctx, client, intent, returnId, what } = c;
  const { db } = ctx;
  crashPoint('before-call');
  // A compare-and-set, the fence against settled-by-hand (./by-hand.ts): that action locks the return, then
  // resolves the intent only if it was never sent, so either it sees this stamp and refuses, or this finds the
  // intent resolved (or the return settled) and sends nothing. The key must be the one loaded (not replaced meanwhile).
  const sending = await queryRows(
    db,
    sql`UPDATE payments p SET attempts = p.attempts + 1, first_sent_at = coalesce(p.first_sent_at, now()), last_sent_at = now(), updated_at = now()
        FROM returns r
        WHERE p.id = ${intent.id} AND r.id = p.return_id AND r.settled_at IS NULL AND p.state IN ('pending', 'unknown') AND p.resolved_at IS NULL
          AND p.idempotency_key = ${intent.idempotencyKey}
          -- never a spent key: one the provider replayed a saved answer for, or one retired before the provider forgets it
          AND p.replays = 0 AND (p.first_sent_at IS NULL OR p.first_sent_at > now() - ${KEY_RETIRE_HOURS}::int * interval '1 hour')
        RETURNING p.id`,
  );
  if (sending.length === 0) return { outcome: 'unchanged', note: `return ${returnId} was settled, or its ${intent.kind} resolved, re-keyed or spent, by someone else meanwhile: nothing sent` };
  const request: EffectRequest = {
    kind: intent.kind,
    idempotencyKey: intent.idempotencyKey,
    intentKey: intentKeyOf(c.publicId, intent.kind),
    amountMinor: intent.amountMinor,
    currency: intent.currency,
    customer: intent.customerRef,
    paymentMethod: intent.paymentMethod,
    ...(intent.chargeRef ? { charge: intent.chargeRef } : {}),
    metadata: { return_id: String(returnId), return_public_id: c.publicId },
  };
  let answer;
  try {
    answer = await (intent.kind === 'charge' ? client.charge(request, ctx.signal) : client.refund(request, ctx.signal));
  } catch (error) {
    if (error instanceof ProviderError) return await recordFailure(db, intent, returnId, error, what);
    // Aborted (item timeout, shutdown, lost lease) while the request was out: its outcome is unknown.
    await queryRows(
      db,
      sql`UPDATE payments SET state = 'unknown', unknown_since = coalesce(unknown_since, now()), last_error = ${errorSummary(coerceError(error), 500)}, updated_at = now()
          WHERE id = ${intent.id} AND state IN ('pending', 'unknown')`,
    ).catch(() => undefined);
    throw error;
  }
  crashPoint('after-call');
  if (answer.amountMinor !== intent.amountMinor || answer.currency.toUpperCase() !== intent.currency.toUpperCase()) {
    throw new TerminalError(
      `mismatch at the provider: the ${intent.kind} of ${what} was answered as ${answer.id}, ${money(answer.amountMinor, answer.currency)}, not ${money(intent.amountMinor, intent.currency)}; not recorded: look at it at the provider`,
    );
  }
  const recorded = await recordOutcome(db, intent, returnId, { id: answer.id, amountMinor: answer.amountMinor, currency: answer.currency.toUpperCase(), knownBy: 'answer' });
  if (!recorded) await refuseSecondEffect(db, intent, answer.id, what);
  ctx.log.info(
    { event: 'returns:effect', returnId, kind: intent.kind, amountMinor: intent.amountMinor, currency: intent.currency, providerRef: answer.id, idempotencyKey: intent.idempotencyKey, replayed: answer.replayed },
    `${past[intent.kind]} ${what}: ${answer.id}`,
  );
  return recorded ? { outcome: 'changed', note: `${past[intent.kind]} ${what}: ${answer.id}` } : 'unchanged';
}

/** The intent was recorded succeeded by another attempt: with another effect than `id`, that is a duplicate at the provider, for a person. */
async function refuseSecondEffect(db: Db, intent: Intent, id: string, what: string): Promise<void> {
  const [row] = await queryRows<{ provider_ref: string | null }>(db, sql`SELECT provider_ref FROM payments WHERE id = ${intent.id} AND state = 'succeeded'`);
  if (row?.provider_ref && row.provider_ref !== id) {
    throw new TerminalError(`duplicate at the provider: the ${intent.kind} of ${what} is recorded as ${row.provider_ref}, and the provider also applied ${id}: refund ${id} at the provider`);
  }
}

/** Records what the provider said, then throws what the engine should do next. */
async function recordFailure(db: Db, intent: Intent, returnId: number, error: ProviderError, what: string): Promise<never> {
  const lastError = errorSummary(error, 500);
  if (error.failure === 'declined') {
    await queryRows(db, sql`UPDATE payments SET state = 'declined', unknown_since = NULL, last_error = ${lastError}, updated_at = now() WHERE id = ${intent.id} AND state IN ('pending', 'unknown')`);
    throw new TerminalError(`declined: the ${intent.kind} of ${what} (${error.message}); ${settleByHandAdvice(returnId)}`);
  }
  if (error.failure === 'retryable' && error.sent) {
    // Its outcome is unknown. A replayed (saved) error also says the provider will never run this key again.
    await queryRows(
      db,
      sql`UPDATE payments SET state = 'unknown', unknown_since = coalesce(unknown_since, now()), last_error = ${lastError}, updated_at = now(),
                              replays = CASE WHEN ${error.replayed} THEN replays + 1 ELSE replays END,
                              key_spent_at = CASE WHEN ${error.replayed} THEN coalesce(key_spent_at, now()) ELSE key_spent_at END
          WHERE id = ${intent.id} AND state IN ('pending', 'unknown')`,
    );
    const replayed = error.replayed ? `; the provider replayed its saved answer, so this key will never run again: looking the ${intent.kind} up next` : '';
    throw new Error(`outcome unknown: the ${intent.kind} of ${what}: ${error.message} (idempotency key ${intent.idempotencyKey})${replayed}`, { cause: error });
  }
  // A request that cannot have reached the provider (or was refused as it stands) leaves the intent as it was: nothing happened there.
  await queryRows(db, sql`UPDATE payments SET last_error = ${lastError}, updated_at = now() WHERE id = ${intent.id} AND state IN ('pending', 'unknown')`);
  // Says what happened, and the key a retry sends: not that one will come (the item may be dead).
  // The provider's error is the cause: its `retryAfter` (a 429's or 503's Retry-After) tells the engine when to come back.
  if (error.failure === 'retryable') throw new Error(`not sent: the ${intent.kind} of ${what}: ${error.message}`, { cause: error });
  if (error.status === 401 || error.status === 403) throw new Error(`the provider refused our credentials (${error.message}): check PAYMENT_PROVIDER_KEY`);
  if (error.status === 404 && error.code !== 'resource_missing') throw new Error(`the provider has no such endpoint (${error.message}): check PAYMENT_PROVIDER_URL`);
  throw new TerminalError(`rejected: the ${intent.kind} of ${what}: ${error.message}; not retried, as the same request would be rejected again`);
}

