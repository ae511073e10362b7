/**
 * The values `history --status` and `--trigger` accept: what `runs.status` and `runs.trigger`
 * hold (`PassStatus` and `Trigger` in src/engine/result.ts, plus `running`). A module of its
 * own, without imports, so that `reconciler --help` stays fast.
 */
export const STATUSES = ['running', 'succeeded', 'failed', 'error', 'aborted', 'abandoned'] as const;
export const TRIGGERS = ['schedule', 'manual', 'startup', 'retry', 'wake', 'handover', 'handback'] as const;
