/**
 * HTML built one way: the `html` tagged template escapes every interpolation. Keys, errors and
 * notes come from outside (the database, the operator's form); none of them may become markup.
 * A fragment already built with `html` is inserted as it is; `raw()` marks other trusted
 * markup (an SVG chart built from numbers), and nothing from the database should reach it.
 */

/** Markup that is safe to insert as it is. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

/** What an interpolation may be: text (escaped), a fragment, a list of them, or nothing. */
export type HtmlValue = Html | string | number | boolean | null | undefined | readonly HtmlValue[];

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

/** Text with every character that means something in HTML (content or a quoted attribute) escaped. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"'`]/g, (c) => ENTITIES[c]!);
}

function render(value: HtmlValue): string {
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return value.map(render).join('');
  if (value === null || value === undefined || value === false || value === true) return '';
  return escapeHtml(String(value));
}

/** `html\`<td>${key}</td>\``: a fragment; strings and numbers escaped, fragments kept, lists joined, null/false left out. */
export function html(strings: TemplateStringsArray, ...values: readonly HtmlValue[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1]!;
  return new Html(out);
}

/** Marks markup as already rendered. Only for fragments built from trusted parts, never for text from the database. */
export function raw(markup: string): Html {
  return new Html(markup);
}
