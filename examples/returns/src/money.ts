/**
 * Money in minor units, by each currency's ISO 4217 exponent: USD 2 (cents), JPY 0 (yen),
 * KWD 3 (fils). Amounts are integers of minor units everywhere (the model, provider requests,
 * logs); only `money()` turns them into the major unit, for people.
 *
 * The exponents are ISO 4217's (its list A.1): 2 unless listed below. The runtime's Intl data
 * says which codes exist; its digits are CLDR's, which differ from ISO 4217 for some (HUF, IQD).
 */

/** ISO 4217 currencies whose minor unit is not the hundredth. */
const NOT_TWO: Readonly<Record<string, number>> = {
  ...Object.fromEntries(['BIF', 'CLP', 'DJF', 'GNF', 'ISK', 'JPY', 'KMF', 'KRW', 'PYG', 'RWF', 'UGX', 'UYI', 'VND', 'VUV', 'XAF', 'XOF', 'XPF'].map((c) => [c, 0])),
  ...Object.fromEntries(['BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND'].map((c) => [c, 3])),
  CLF: 4,
  UYW: 4,
};

let codes: Set<string> | undefined;
/** ISO 4217's codes: those the runtime knows, and the fund codes it leaves out (CLF, UYI, UYW). */
const known = () => (codes ??= new Set([...Intl.supportedValuesOf('currency'), ...Object.keys(NOT_TWO)]));

/** The ISO 4217 exponent of `currency` (`USD` → 2, `JPY` → 0, `KWD` → 3); throws for a code that is not a currency. */
export function minorUnitExponent(currency: string): number {
  const code = currency.toUpperCase();
  if (!/^[A-Z]{3}$/.test(code) || !known().has(code)) {
    throw new Error(`unknown currency ${JSON.stringify(currency)}: expected an ISO 4217 code such as USD, JPY or KWD`);
  }
  return NOT_TWO[code] ?? 2;
}

/** `4500, 'USD'` → `45.00 USD`; `4500, 'JPY'` → `4500 JPY`; `1250, 'KWD'` → `1.250 KWD`. Exact: no floating point. */
export function money(minor: number, currency: string): string {
  if (!Number.isSafeInteger(minor)) throw new Error(`not an amount in minor units: ${minor}`);
  const exponent = minorUnitExponent(currency);
  const digits = String(Math.abs(minor)).padStart(exponent + 1, '0');
  const major = exponent === 0 ? digits : `${digits.slice(0, -exponent)}.${digits.slice(-exponent)}`;
  return `${minor < 0 ? '-' : ''}${major} ${currency.toUpperCase()}`;
}

/** How many minor units make one major unit of `currency`: 100 for USD, 1 for JPY, 1000 for KWD. */
export function minorPerMajor(currency: string): number {
  return 10 ** minorUnitExponent(currency);
}
