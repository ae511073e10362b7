/**
 * `POST /reconcilers/<name>/actions`: the form's fields as one call to the operator layer
 * (retry, clear or a manual action, audited there with the actor's token name), and its
 * outcome as a redirect with a flash line (a form) or as JSON (a script).
 */
import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { clearItems, retryItems, runManualAction, ActionRefused, type ActionOutcome, type Actor, type Target } from '../operator/actions.js';
import type { OperatorContext } from '../operator/views.js';
import { HttpError, redirect, returnPath, sendJson, withFlash } from './http.js';

export interface ActionRequest {
  reconciler: string;
  fields: Record<string, string>;
  actor: Actor;
  ctx: OperatorContext;
  log: Logger;
  json: boolean;
}

const OPS = ['retry', 'clear', 'act'] as const;
const SCOPES = ['key', 'group', 'all'] as const;
type Op = (typeof OPS)[number];

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
  const target: Target = scope === 'key' ? { key: needed('key') } : scope === 'group' ? { group: needed('group') } : { all: true };
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
  let outcome: ActionOutcome;
  try {
    const parsed = parse(request.fields);
    outcome = await perform(request, parsed.op, parsed.target, parsed.action, parsed.note);
  } catch (error) {
    if (!(error instanceof ActionRefused) && !(error instanceof HttpError)) throw error;
    const status = error instanceof HttpError ? error.status : error.notFound ? 404 : 400;
    if (request.json) return sendJson(res, status, { error: error.message });
    return redirect(res, withFlash(back, 'error', error.message));
  }
  if (request.json) return sendJson(res, 200, { ok: true, result: outcome.result, keys: outcome.keys, auditId: outcome.auditId });
  return redirect(res, withFlash(back, 'done', outcome.result));
}
