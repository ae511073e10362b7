/**
 * What the operator commands (`failures`, `audit`, `act`, `retry`, `clear`) share: the operator
 * layer's context from a command's, and, for the read-only ones, the check of a reconciler's
 * name (the actions check theirs in src/operator/actions.ts).
 */
import { UserError } from '../../errors.js';
import { formatLoadError } from '../../engine/load.js';
import { didYouMean } from '../../suggest.js';
import type { CommandContext } from '../../context.js';
import type { OperatorContext } from '../../operator/views.js';

export function operatorContext(context: CommandContext): OperatorContext {
  return { db: context.database.db, reconcilers: context.reconcilers, loadErrors: context.loadErrors, log: context.log };
}

/**
 * Names a person may use: loaded reconcilers, plus any the database still has records of
 * (`recorded`: failures, or audit entries) when its job file was removed or did not load.
 */
export async function checkName(context: CommandContext, name: string, recorded: () => Promise<boolean>, records = 'failures'): Promise<void> {
  if (context.reconcilers.some((r) => r.name === name)) return;
  if (await recorded()) return;
  const broken = context.loadErrors.find((e) => e.name === name);
  if (broken) throw new UserError(`${name} did not load, and has no ${records} on record: ${formatLoadError(broken)}`);
  const known = context.reconcilers.map((r) => r.name);
  throw new UserError(`unknown reconciler \`${name}\`${didYouMean(name, known) || (known.length ? ` (known: ${known.join(', ')})` : '')}`);
}

/** The label of a lane: `settle-returns`, or `settle-returns partition 2` when the reconciler is partitioned. */
export function laneLabel(context: Pick<CommandContext, 'reconcilers'>, reconciler: string, partition: number): string {
  const partitions = context.reconcilers.find((r) => r.name === reconciler)?.partitions ?? 1;
  return partitions > 1 || partition > 0 ? `${reconciler} partition ${partition}` : reconciler;
}
