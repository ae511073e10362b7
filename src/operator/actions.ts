/**
 * Every change a person makes through the console or the CLI: retry or clear failing items (one,
 * an error group, or all of a reconciler), or run a reconciler's manual action on one item. Each
 * is recorded in the audit log in the same transaction as the change: both happen, or neither.
 */
import { hostname, userInfo } from 'node:os';
import pino from 'pino';
import { UserError, coerceError, errorSummary, oneLine } from '../errors.js';
import { scrub } from '../secrets.js';
import { formatDuration } from '../duration.js';
import { didYouMean } from '../suggest.js';
import { formatLoadError } from '../engine/load.js';
import { recordAudit } from '../store/audit.js';
import { GROUP_ID } from '../store/failure-groups.js';
import { clearFailures, describeTarget, listFailures, retryFailures, type FailureTarget } from '../store/failures.js';
import type { Db } from '../reconciler.js';
import type { OperatorContext } from './context.js';

/** One item, one error group (`reconciler failures --group`), or every failing item of the reconciler. */
export type Target = FailureTarget;

/** Who acts: a console token's name, or the CLI's user. */
export interface Actor {
  name: string;
  via: 'console' | 'cli';
}

export interface ActionOutcome {
  /** The items it changed. */
  keys: string[];
  /** One line for people, also in the audit record. */
  result: string;
  /** Its audit record; null when it changed nothing (`all` when no item was failing), which is not recorded. */
  auditId: number | null;
}

/**
 * How long a manual action may take before its `signal` aborts. An action that throws then is
 * rolled back; one that finishes anyway is recorded, with a note that it was late.
 */
export const MANUAL_ACTION_TIMEOUT_MS = 30_000;

/** An action refused, with a line for the operator: `notFound` when what it names does not exist (HTTP 404). */
export class ActionRefused extends UserError {
  override name = 'ActionRefused';
  constructor(
    message: string,
    readonly notFound = false,
  ) {
    super(message);
  }
}

/** The CLI's actor: `cli:<user>@<host>`. */
export function cliActor(): Actor {
  let user: string;
  try {
    user = userInfo().username;
  } catch {
    user = process.env.USER ?? 'unknown';
  }
  return { name: `cli:${user}@${hostname()}`, via: 'cli' };
}


/**
 * Checks a reconciler's name as a person typed it. Names a person may use: loaded reconcilers,
 * and any the database still has `records` of (`recorded`; by default failures) when its job
 * file was removed or did not load. Anything else is refused, with the closest known name.
 */
export async function checkReconcilerName(
  ctx: OperatorContext,
  name: string,
  recorded = async () => (await listFailures(ctx.db, { reconciler: name, limit: 1 })).total > 0,
  records = 'failures',
): Promise<void> {
  if (ctx.reconcilers.some((r) => r.name === name)) return;
  if (await recorded()) return;
  const broken = ctx.loadErrors.find((e) => e.name === name);
  if (broken) throw new ActionRefused(`${name} did not load, and has no ${records} on record: ${formatLoadError(broken)}`, true);
  const known = ctx.reconcilers.map((r) => r.name);
  throw new ActionRefused(`unknown reconciler \`${name}\`${didYouMean(name, known) || (known.length ? ` (known: ${known.join(', ')})` : '')}`, true);
}

async function changeFailures(
  verb: 'retry' | 'clear',
  ctx: OperatorContext,
  actor: Actor,
  reconciler: string,
  target: Target,
  note: string | undefined,
): Promise<ActionOutcome> {
  await checkReconcilerName(ctx, reconciler);
  if ('group' in target && !GROUP_ID.test(target.group)) {
    throw new ActionRefused(`${JSON.stringify(target.group)} is not an error group id (10 hex characters, see \`reconciler failures ${reconciler} --group\`)`);
  }
  return ctx.db.transaction(async (tx) => {
    const keys = await (verb === 'retry' ? retryFailures : clearFailures)(tx as unknown as Db, reconciler, target);
    if (keys.length === 0 && !('all' in target)) {
      const what = 'key' in target ? `key ${JSON.stringify(target.key)}` : `error group ${target.group}`;
      throw new ActionRefused(`${reconciler} has no failing item for ${what} (see \`reconciler failures ${reconciler}\`)`, true);
    }
    if (keys.length === 0) return { keys, result: `${reconciler} has no ${'deadOnly' in target && target.deadOnly ? 'dead' : 'failing'} items: nothing to ${verb}`, auditId: null };
    const result =
      verb === 'retry'
        ? `${keys.length} item(s) of ${reconciler} due now with a fresh attempt budget; the next pass retries them`
        : `${keys.length} item(s) of ${reconciler} forgotten; any the scan still finds start over as new`;
    const auditId = await recordAudit(tx as unknown as Db, {
      actor: actor.name, via: actor.via, reconciler, action: verb, target: describeTarget(target), keys, note: note?.trim() ? scrub(note.trim()) : null, result,
    });
    ctx.log?.info({ event: 'operator:action', auditId, reconciler, action: verb, target: describeTarget(target), actor: actor.name, items: keys.length }, `${actor.name}: ${verb} ${describeTarget(target)}: ${result}`);
    return { keys, result, auditId };
  }).then((outcome) => afterAction(ctx, reconciler, outcome));
}

/** Once the change is committed: an early pass, where a daemon runs one (see OperatorContext.passSoon). */
function afterAction(ctx: OperatorContext, reconciler: string, outcome: ActionOutcome): ActionOutcome {
  if (outcome.keys.length > 0 && ctx.reconcilers.some((r) => r.name === reconciler)) ctx.passSoon?.(reconciler);
  return outcome;
}

/** Makes failing items due now with a fresh attempt budget, dead or not. */
export const retryItems = (ctx: OperatorContext, actor: Actor, reconciler: string, target: Target, note?: string) => changeFailures('retry', ctx, actor, reconciler, target, note);

/** Forgets failing items' failure memory. */
export const clearItems = (ctx: OperatorContext, actor: Actor, reconciler: string, target: Target, note?: string) => changeFailures('clear', ctx, actor, reconciler, target, note);

/**
 * Runs `reconciler`'s manual action `action` on the item `key`, with the operator's `note`, in
 * one transaction with its audit record. The action's own refusal (it threw) rolls both back.
 */
export async function runManualAction(ctx: OperatorContext, actor: Actor, reconciler: string, key: string, action: string, note: string): Promise<ActionOutcome> {
  const r = ctx.reconcilers.find((x) => x.name === reconciler);
  if (!r) {
    await checkReconcilerName(ctx, reconciler);
    throw new ActionRefused(`${reconciler} did not load: its manual actions are unavailable until its job file loads`, true);
  }
  const names = Object.keys(r.actions);
  const manual = Object.hasOwn(r.actions, action) ? r.actions[action] : undefined;
  if (!manual) {
    throw new ActionRefused(
      names.length === 0
        ? `${reconciler} declares no manual actions (see docs/writing-reconcilers.md, "Manual actions")`
        : `${reconciler} has no manual action \`${action}\`${didYouMean(action, names) || ` (its actions: ${names.join(', ')})`}`,
      true,
    );
  }
  if (key.trim() === '') throw new ActionRefused('name the item: a key such as those `reconciler failures` shows');
  if (note.trim() === '') throw new ActionRefused(`a note is required for ${action}: say why, in a few words (it goes into the audit log)`);
  const log = (ctx.log ?? pino({ level: 'silent' })).child({ reconciler, action, key, actor: actor.name });
  const controller = new AbortController();
  const limitMs = ctx.actionTimeoutMs ?? MANUAL_ACTION_TIMEOUT_MS;
  const timer = setTimeout(() => controller.abort(new Error(`${action} did not finish within ${formatDuration(limitMs)}`)), limitMs);
  try {
    return await ctx.db.transaction(async (tx) => {
      let said: string | void;
      try {
        said = await manual.run(key, { db: tx as unknown as Db, log, actor: actor.name, note: note.trim(), signal: controller.signal });
      } catch (error) {
        throw new ActionRefused(`${reconciler} ${action} ${key}: ${errorSummary(coerceError(error), 500)}`);
      }
      // It finished: whatever it did outside the database happened, so it is recorded even when late (a rollback would invite a second one).
      const late = controller.signal.aborted ? ` (finished after its ${formatDuration(limitMs)} limit)` : '';
      const result = scrub(`${typeof said === 'string' && said.trim() !== '' ? oneLine(said, 500) : `${action} done on ${key}`}${late}`);
      const auditId = await recordAudit(tx as unknown as Db, { actor: actor.name, via: actor.via, reconciler, action: `act:${action}`, target: `key ${key}`, keys: [key], note: scrub(note.trim()), result });
      log.info({ event: 'operator:action', auditId }, `${actor.name} ran ${action} on ${reconciler} ${key}: ${result}`);
      return { keys: [key], result, auditId };
    }).then((outcome) => afterAction(ctx, reconciler, outcome));
  } finally {
    clearTimeout(timer);
  }
}
