/**
 * The business rule, as a pure function: what settling a return takes.
 *
 * The customer owes the styling fee plus the price of every item they kept. They may have
 * prepaid at checkout. If they owe more than they paid, charge the difference (say, the
 * styling fee and the kept items of a Fix nothing was paid for); if they paid more than they
 * owe, refund the difference (items they paid for and sent back); otherwise nothing is due.
 *
 * A Fix may come back in several returns. Each settles what it changes: the items it and the
 * Fix's returns settled before it sent back count as returned, and what those returns already
 * moved (their charges, less their refunds) counts as paid. So two partial refunds of one Fix
 * add up to what a single return of the same items would refund, and never to more than the
 * prepaid amount, provided the decisions are taken one at a time (the service locks the Fix).
 * Amounts are in the currency's minor units (./money.ts).
 */
export interface FixForSettlement {
  currency: string;
  stylingFeeMinor: number;
  prepaidMinor: number;
  /** Every item of the Fix, and whether it came back (in this return, or one settled before it). */
  items: { priceMinor: number; returned: boolean }[];
  /** What the Fix's earlier returns moved: their charges less their refunds (0 when this is its first). */
  movedMinor?: number;
}

export type Settlement = { kind: 'charge' | 'refund'; amountMinor: number; currency: string } | { kind: 'none'; currency: string };

export function decideSettlement(fix: FixForSettlement): Settlement {
  const keptMinor = fix.items.filter((item) => !item.returned).reduce((sum, item) => sum + item.priceMinor, 0);
  const owedMinor = fix.stylingFeeMinor + keptMinor;
  const paidMinor = fix.prepaidMinor + (fix.movedMinor ?? 0);
  if (owedMinor > paidMinor) return { kind: 'charge', amountMinor: owedMinor - paidMinor, currency: fix.currency };
  if (paidMinor > owedMinor) return { kind: 'refund', amountMinor: paidMinor - owedMinor, currency: fix.currency };
  return { kind: 'none', currency: fix.currency };
}

/** A settled amount as it moves the Fix's balance: a charge adds, a refund takes away. */
export const signedMinor = (kind: 'charge' | 'refund', amountMinor: number): number => (kind === 'charge' ? amountMinor : -amountMinor);

export { money } from './money.js';
