/**
 * `sqlArray(values, type)`: a JavaScript array as one PostgreSQL array parameter, for set-based
 * statements (`WHERE id = ANY(${sqlArray(ids, 'bigint')})`). drizzle's `sql` spreads an array
 * into a list of parameters, which `= ANY(…)` does not take, and whose size PostgreSQL caps at
 * 65,535; this sends one text parameter in array syntax, cast to `type[]`, on pg and PGlite alike.
 */
import { sql, type SQL } from 'drizzle-orm';

/** The element types an array parameter may have. */
export type SqlArrayType = 'int' | 'bigint' | 'text' | 'uuid';

/** An element in PostgreSQL's array syntax: quoted, with `"` and `\` escaped. */
const element = (value: string | number | bigint) => `"${String(value).replace(/[\\"]/g, '\\$&')}"`;

export function sqlArray(values: readonly (string | number | bigint)[], type: SqlArrayType): SQL {
  for (const value of values) {
    if (value === null || value === undefined) throw new TypeError(`sqlArray(): an array of ${type} may not hold ${String(value)}`);
    if (typeof value === 'number' && !Number.isFinite(value)) throw new TypeError(`sqlArray(): ${value} is not a ${type}`);
  }
  return sql`${`{${values.map(element).join(',')}}`}::${sql.raw(type)}[]`;
}
