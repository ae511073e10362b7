/**
 * The business rule, as a pure function: what settling a return takes.
 *
 * The customer owes the styling fee plus the price of every item they kept. They may have
 * prepaid at checkout. If they owe more than they paid, charge the difference (say, the
 * styling fee and the kept items of a Fix nothing was paid for); if they paid more than they
 * owe, refund the difference (items they paid for and sent back); otherwise nothing is due.
 */
export interface FixForSettlement {
  currency: string;
  stylingFeeMinor: number;
  prepaidMinor: number;
  /** Every item of the Fix, and whether it came back. */
  items: { priceMinor: number; returned: boolean }[];
}

export type Settlement = { kind: 'charge' | 'refund'; amountMinor: number; currency: string } | { kind: 'none'; currency: string };

export function decideSettlement(fix: FixForSettlement): Settlement {
  const keptMinor = fix.items.filter((item) => !item.returned).reduce((sum, item) => sum + item.priceMinor, 0);
  const owedMinor = fix.stylingFeeMinor + keptMinor;
  if (owedMinor > fix.prepaidMinor) return { kind: 'charge', amountMinor: owedMinor - fix.prepaidMinor, currency: fix.currency };
  if (fix.prepaidMinor > owedMinor) return { kind: 'refund', amountMinor: fix.prepaidMinor - owedMinor, currency: fix.currency };
  return { kind: 'none', currency: fix.currency };
}

/** `45.00 USD` */
export function money(cents: number, currency: string): string {
  return `${(cents / 100).toFixed(2)} ${currency}`;
}
