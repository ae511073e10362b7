/**
 * The action forms: retry or clear one item, one error group or all, and a reconciler's manual
 * actions. Each takes a note for the audit log (optional; a manual action's is required). They
 * show only to a signed-in person; everyone else reads why not.
 * Every form posts to `/reconcilers/<name>/actions` with the session's CSRF token and the page
 * to return to; destructive ones carry `data-confirm`, which console.js asks about first.
 */
import { html, type Html } from '../html.js';
import type { Viewer } from './layout.js';
import type { ActionInfo } from './model.js';

/** What a form aims at: one item, one error group or all; in the dead view, only the dead ones (`dead=1`). */
type Scope = { key: string } | { group: string; deadOnly: boolean } | { all: true; deadOnly: boolean };

function scopeFields(scope: Scope): Html {
  if ('key' in scope) return html`<input type="hidden" name="scope" value="key"><input type="hidden" name="key" value="${scope.key}">`;
  const dead = scope.deadOnly ? html`<input type="hidden" name="dead" value="1">` : '';
  if ('group' in scope) return html`<input type="hidden" name="scope" value="group"><input type="hidden" name="group" value="${scope.group}">${dead}`;
  return html`<input type="hidden" name="scope" value="all">${dead}`;
}

function common(viewer: Viewer): Html {
  return html`<input type="hidden" name="csrf" value="${viewer.session?.csrf ?? ''}"><input type="hidden" name="return_to" value="${viewer.returnTo}">`;
}

function actionUrl(reconciler: string): string {
  return `/reconcilers/${encodeURIComponent(reconciler)}/actions`;
}

/** Why there are no buttons: not signed in (with the way in), or no tokens configured. */
export function accessNote(viewer: Viewer): Html {
  if (viewer.session) return html``;
  if (viewer.actionsEnabled) return html`<p class="access"><a href="/sign-in?return_to=${encodeURIComponent(viewer.returnTo)}">Sign in to act</a> (retry, clear, or resolve by hand).</p>`;
  return html`<p class="access muted">Read-only (CONSOLE_TOKENS not set): use <code>reconciler retry</code>, <code>clear</code> or <code>act</code> from a shell.</p>`;
}

interface RetryClear {
  retry: string;
  clear: string;
  /** The questions console.js asks before submitting (none: it does not ask). */
  confirmRetry?: string;
  confirmClear: string;
}

/** One form, two buttons: the pressed one sends `op` (retry or clear), with the scope and an optional note for the audit log. */
function retryClearForm(reconciler: string, viewer: Viewer, scope: Scope, f: RetryClear): Html {
  if (!viewer.session) return html``;
  return html`<form method="post" action="${actionUrl(reconciler)}" class="actions">
    ${common(viewer)}${scopeFields(scope)}
    <input type="text" name="note" maxlength="2000" placeholder="note for the audit log (optional)" aria-label="Note for the audit log (optional)">
    <button type="submit" name="op" value="retry"${f.confirmRetry ? html` data-confirm="${f.confirmRetry}"` : ''}>${f.retry}</button>
    <button type="submit" name="op" value="clear" class="danger" data-confirm="${f.confirmClear}">${f.clear}</button>
  </form>`;
}

/** Retry and clear for one item. */
export function itemButtons(reconciler: string, key: string, viewer: Viewer): Html {
  return retryClearForm(reconciler, viewer, { key }, {
    retry: 'Retry now', clear: 'Clear (forget the failure)',
    confirmClear: `Forget the failure of ${key}? The next pass tries it again from attempt 1.`,
  });
}

/**
 * Retry and clear for the items of one error group: all of them, or (in the dead view) its dead
 * ones. The count is the group's own (`count`, or `dead`), never the rows on the page.
 */
export function groupButtons(reconciler: string, group: { id: string; count: number; dead: number }, deadOnly: boolean, viewer: Viewer): Html {
  const n = deadOnly ? group.dead : group.count;
  const what = deadOnly ? `${n} dead` : `${n}`;
  return retryClearForm(reconciler, viewer, { group: group.id, deadOnly }, {
    retry: `Retry ${what}`, clear: `Clear ${what}`,
    confirmClear: `Forget the failures of all ${n}${deadOnly ? ' dead' : ''} item(s) with this error?`,
  });
}

/**
 * Retry and clear for every failing item of the reconciler, or (in the dead view) every dead
 * one. `total` is the count of the same filter in the database (`failingItems(...).total`).
 */
export function allButtons(reconciler: string, total: number, deadOnly: boolean, viewer: Viewer): Html {
  const items = deadOnly ? `dead item(s)` : `failing item(s)`;
  return retryClearForm(reconciler, viewer, { all: true, deadOnly }, {
    retry: `Retry all ${total}${deadOnly ? ' dead' : ''}`, clear: `Clear all ${total}${deadOnly ? ' dead' : ''}`,
    confirmRetry: `Retry all ${total} ${items} of ${reconciler} now?`, confirmClear: `Forget the failures of all ${total} ${items} of ${reconciler}?`,
  });
}

/** One form per manual action the reconciler declares, each with its required note. */
export function manualActionForms(reconciler: string, key: string, actions: readonly ActionInfo[], viewer: Viewer): Html {
  if (actions.length === 0) return html``;
  if (!viewer.session) {
    return html`<ul class="plain">${actions.map((a) => html`<li><strong>${a.name}</strong>: ${a.description}</li>`)}</ul>`;
  }
  return html`${actions.map(
    (a, i) => html`<form method="post" action="${actionUrl(reconciler)}" class="manual">
      ${common(viewer)}<input type="hidden" name="op" value="act"><input type="hidden" name="action" value="${a.name}">${scopeFields({ key })}
      <p><strong>${a.name}</strong>: ${a.description}</p>
      <label for="note-${i}">Note (required: why, for the audit log)</label>
      <textarea id="note-${i}" name="note" rows="2" required maxlength="2000"></textarea>
      <button type="submit">${a.name}</button>
    </form>`,
  )}`;
}
