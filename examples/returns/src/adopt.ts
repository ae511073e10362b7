/**
 * adopt-effect: settle-returns' manual action for an outcome a person resolved at the provider.
 * When an item is parked because the provider cannot answer lookups (see ./resolution.ts), a
 * person finds the charge or refund in the provider's dashboard and records it:
 * `reconciler act settle-returns return:16 adopt-effect --note "ch_3Nf… found in the dashboard"`.
 *
 * The note names the effect's id. The action retrieves it from the provider (before taking any
 * lock), and adopts it only if it is what the intent asked for: the same kind, amount and
 * currency, succeeded, and not tagged with another intent. Nothing is sent to the provider.
 */
import { queryRows, sql, type ActionContext, type ManualAction } from 'reconciler';
import { parseReturnKey } from './by-hand.js';
import { paymentProviderFromEnv } from './provider.js';
import { describeIntent, intentKeyOf, intentOf, loadReturn, past, recordOutcome } from './service.js';
import { money } from './settlement.js';

export const adoptEffect: ManualAction = {
  description: "records a charge or refund found at the provider for this return (--note names its id, ch_… or re_…): checked against the payment intent, then the return is settled; nothing is sent",
  run: adopt,
};

/** How long the provider has to answer the retrieval. */
const RETRIEVE_TIMEOUT_MS = 15_000;

async function adopt(key: string, ctx: ActionContext): Promise<string> {
  const returnId = parseReturnKey(key);
  const id = /\b(ch|re|py)_[A-Za-z0-9]+\b/.exec(ctx.note)?.[0];
  if (!id) throw new Error('--note must name the provider\'s id of the charge or refund, e.g. --note "ch_3Nf0… found in the dashboard"');
  const before = await loadReturn(ctx.db, returnId);
  if (!before) throw new Error(`there is no return ${returnId}`);
  const planned = intentOf(before);
  if (!planned) throw new Error(`return ${returnId} has no payment intent: nothing was ever sent for it, so there is nothing to adopt; \`reconciler run settle-returns --key return:${returnId}\` settles it`);
  const provider = await paymentProviderFromEnv(ctx);
  const effect = await provider.retrieve(planned.kind, id, AbortSignal.timeout(RETRIEVE_TIMEOUT_MS));

  // Now the locks, in the order settleReturn's decision takes them (the Fix, then the return), and the intent as it is now.
  await queryRows(ctx.db, sql`SELECT f.id FROM fixes f JOIN returns r ON r.fix_id = f.id WHERE r.id = ${returnId} FOR UPDATE OF f`);
  await queryRows(ctx.db, sql`SELECT id FROM returns WHERE id = ${returnId} FOR UPDATE`);
  const row = (await loadReturn(ctx.db, returnId))!;
  const intent = intentOf(row)!;
  const what = `${intent.kind} of ${describeIntent(intent, returnId)}`;
  if (row.settled) throw new Error(`return ${returnId} is already settled`);
  if (intent.state === 'succeeded') throw new Error(`the provider already confirmed the ${what} (${intent.providerRef}): run \`reconciler run settle-returns --key return:${returnId}\``);
  if (effect.kind !== intent.kind || effect.amountMinor !== intent.amountMinor || effect.currency.toUpperCase() !== intent.currency.toUpperCase()) {
    throw new Error(`${id} is a ${effect.kind} of ${money(effect.amountMinor, effect.currency)}, not the ${what}: not adopted`);
  }
  if (effect.intentKey !== undefined && effect.intentKey !== intentKeyOf(row.public_id, intent.kind)) {
    throw new Error(`${id} belongs to another intent (${effect.intentKey}), not the ${what}: not adopted`);
  }
  if (effect.status !== 'succeeded') throw new Error(`${id} is ${effect.status} at the provider, not succeeded: not adopted`);
  const settled = await recordOutcome(ctx.db, intent, returnId, { id, amountMinor: effect.amountMinor, currency: effect.currency.toUpperCase(), knownBy: 'lookup' });
  if (!settled) throw new Error(`the ${what} changed while this action ran: look at it again`);
  return `return ${returnId} settled: ${past[intent.kind]} ${describeIntent(intent, returnId)} as ${id}, found at the provider`;
}
