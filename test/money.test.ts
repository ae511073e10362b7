/** Money in minor units per ISO 4217 exponent (examples/returns/src/money.ts): what people read, exactly. */
import { describe, expect, it } from 'vitest';
import { minorPerMajor, minorUnitExponent, money } from '../examples/returns/src/money.js';

describe('money', () => {
  it('formats each currency by its ISO 4217 exponent, exactly', () => {
    expect(money(4_500, 'USD')).toBe('45.00 USD');
    expect(money(5, 'USD')).toBe('0.05 USD');
    expect(money(8_000, 'JPY')).toBe('8000 JPY');
    expect(money(4_250, 'KWD')).toBe('4.250 KWD');
    expect(money(7, 'KWD')).toBe('0.007 KWD');
    expect(money(-1_999, 'usd')).toBe('-19.99 USD');
    expect(money(900_719_925_474_099, 'JPY')).toBe('900719925474099 JPY'); // no floating point on the way
  });

  it('takes the exponent from ISO 4217, not from CLDR where the two differ', () => {
    expect([minorUnitExponent('USD'), minorUnitExponent('JPY'), minorUnitExponent('KWD'), minorUnitExponent('CLF')]).toEqual([2, 0, 3, 4]);
    expect([minorUnitExponent('HUF'), minorUnitExponent('IQD')]).toEqual([2, 3]); // CLDR says 0 for both
    expect([minorPerMajor('USD'), minorPerMajor('JPY'), minorPerMajor('KWD')]).toEqual([100, 1, 1_000]);
  });

  it('refuses what is not a currency, and an amount that is not a whole number of minor units', () => {
    expect(() => minorUnitExponent('XYZ')).toThrow('unknown currency "XYZ": expected an ISO 4217 code such as USD, JPY or KWD');
    expect(() => money(12.5, 'USD')).toThrow('not an amount in minor units: 12.5');
  });
});
