/**
 * `POST /reconcilers/<name>/actions`: the form's fields as one call to the operator layer
 * (retry, clear or a manual action, audited there with the actor's token name), and its
 * outcome as a redirect with a flash line (a form; the line in a cookie, see flash.ts) or as JSON
 * (a script: the first MAX_ANSWER_KEYS keys and their count).
 */
import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { clearItems, retryItems, runManualAction, ActionRefused, type ActionOutcome, type Actor, type Target } from '../operator/actions.js';
import type { OperatorContext } from '../operator/views.js';
import { flashCookie, type Flash } from './flash.js';
import { HttpError, redirect, returnPath, sendJson } from './http.js';

export interface ActionRequest {
  reconciler: string;
  fields: Record<string, string>;
  actor: Actor;
  ctx: OperatorContext;
  log: Logger;
  json: boolean;
  /** The request came over https: the flash cookie is Secure. */
  secure: boolean;
}

const OPS = ['retry', 'clear', 'act'] as const;
const SCOPES = ['key', 'group', 'all'] as const;
type Op = (typeof OPS)[number];

/** Keys a JSON answer lists at most: a bulk action may change hundreds of thousands (the audit record keeps them all). */
export const MAX_ANSWER_KEYS = 100;

/** The `dead` field: `1`/`true` narrows a group or all to the dead items (the dead view's forms send it). */
function deadOnly(fields: Record<string, string>, scope: string): boolean {
  const value = (fields.dead ?? '').trim().toLowerCase();
  if (value === '' || value === '0' || value === 'false') return false;
  if (value !== '1' && value !== 'true') throw new HttpError(400, 'dead must be 1, true, 0 or false');
  if (scope === 'key') throw new HttpError(400, 'dead applies to scope group or all, not to one key');
  return true;
}

/** What the fields ask for; a missing or unknown field is a 400 naming it. */
function parse(fields: Record<string, string>): { op: Op; target: Target; action: string; note: string | undefined } {
  const op = fields.op as Op;
  if (!OPS.includes(op)) throw new HttpError(400, `op must be one of ${OPS.join(', ')}`);
  const scope = fields.scope ?? (op === 'act' ? 'key' : undefined);
  if (!SCOPES.includes(scope as (typeof SCOPES)[number])) throw new HttpError(400, `scope must be one of ${SCOPES.join(', ')}`);
  if (op === 'act' && scope !== 'key') throw new HttpError(400, 'a manual action applies to one item: scope must be key');
  const needed = (name: 'key' | 'group' | 'action') => {
    const value = fields[name];
    if (value === undefined || value === '') throw new HttpError(400, `${name} is missing`);
    return value;
  };
  const dead = deadOnly(fields, scope!);
  const target: Target = scope === 'key' ? { key: needed('key') } : scope === 'group' ? { group: needed('group'), deadOnly: dead } : { all: true, deadOnly: dead };
  const note = fields.note?.trim() ? fields.note.trim() : undefined;
  return { op, target, action: op === 'act' ? needed('action') : '', note };
}

function perform(request: ActionRequest, op: Op, target: Target, action: string, note: string | undefined): Promise<ActionOutcome> {
  const { actor, reconciler } = request;
  const ctx = { ...request.ctx, log: request.log }; // the operator layer logs `operator:action`
  if (op === 'retry') return retryItems(ctx, actor, reconciler, target, note);
  if (op === 'clear') return clearItems(ctx, actor, reconciler, target, note);
  return runManualAction(ctx, actor, reconciler, (target as { key: string }).key, action, note ?? '');
}

/** Runs the action and answers. A refusal is a 400 (404 for an unknown reconciler, action or item), or a flash line. */
export async function handleAction(request: ActionRequest, res: ServerResponse): Promise<void> {
  const back = returnPath(request.fields.return_to);
  const withFlash = (flash: Flash) => redirect(res, back, { 'set-cookie': flashCookie(flash, request.secure) });
  let outcome: ActionOutcome;
  try {
    const parsed = parse(request.fields);
    outcome = await perform(request, parsed.op, parsed.target, parsed.action, parsed.note);
  } catch (error) {
    if (!(error instanceof ActionRefused) && !(error instanceof HttpError)) throw error;
    const status = error instanceof HttpError ? error.status : error.notFound ? 404 : 400;
    if (request.json) return sendJson(res, status, { error: error.message });
    return withFlash({ kind: 'error', text: error.message });
  }
  const { result, keys, auditId } = outcome;
  if (request.json) return sendJson(res, 200, { ok: true, result, count: keys.length, keys: keys.slice(0, MAX_ANSWER_KEYS), auditId });
  return withFlash({ kind: 'done', text: result });
}
