/**
 * What the operator commands (`failures`, `audit`, `act`, `retry`, `clear`) share: the operator
 * layer's context from a command's, and, for the read-only ones, the check of a reconciler's
 * name (the actions check theirs in src/operator/actions.ts).
 */
import { passLabel } from '../../engine/result.js';
import { checkReconcilerName } from '../../operator/actions.js';
import type { CommandContext } from '../../context.js';
import type { OperatorContext } from '../../operator/views.js';

export function operatorContext(context: CommandContext): OperatorContext {
  return { db: context.database.db, reconcilers: context.reconcilers, loadErrors: context.loadErrors, log: context.log };
}

/** A reconciler's name as typed, checked as the operator layer checks it (see checkReconcilerName). */
export function checkName(context: CommandContext, name: string, recorded: () => Promise<boolean>, records = 'failures'): Promise<void> {
  return checkReconcilerName(operatorContext(context), name, recorded, records);
}

/** The label of a lane: `settle-returns`, or `settle-returns partition 2` when the reconciler is partitioned. */
export function laneLabel(context: Pick<CommandContext, 'reconcilers'>, reconciler: string, partition: number): string {
  const partitions = context.reconcilers.find((r) => r.name === reconciler)?.partitions ?? 1;
  return passLabel(reconciler, { index: partition, count: Math.max(partitions, partition + 1) });
}
