/**
 * The read models and actions the pages use: src/operator/ (views and actions), shared with the CLI.
 * TEMPORARY: until the operator layer lands on main, the types are declared here from its
 * agreed API and the functions are loaded at run time; after the merge this file re-exports.
 */
import type { LoadError } from '../../engine/load.js';
import type { PassCounts } from '../../engine/result.js';
import type { Db, Reconciler } from '../../reconciler.js';
import type { FailureRow } from '../../store/failures.js';
import type { RunRow } from '../../store/runs.js';

export type { RunRow, FailureRow };
export interface OperatorContext { db: Db; reconcilers: readonly Reconciler[]; loadErrors: readonly LoadError[] }
export interface ActionInfo { name: string; description: string }
export interface ChartBucket { start: Date; passes: number; found: number; changed: number; failed: number; maxDurationMs: number; avgDurationMs: number }
export interface LastPass { id: number; status: string; trigger: string; startedAt: Date; durationMs: number | null; counts: PassCounts; complete: boolean; error: string | null }
export interface LaneView {
  reconciler: string; partition: number; partitions: number; schedule: string; timezone: string; nextRun: Date | null;
  lastPass: LastPass | null; running: { host: string; pid: number; since: Date; runId: number | null } | null;
  stalenessMs: number | null; backlog: number | null; inBackoff: number; dead: number;
  wakes: { channels: string[]; listening: boolean } | null; failingSince: Date | null;
}
export interface ReconcilerSummary {
  name: string; description: string; file: string; schedule: string; timezone: string; partitions: number;
  actions: ActionInfo[]; inBackoff: number; dead: number; lanes: LaneView[]; chart: ChartBucket[];
}
export interface Overview { reconcilers: ReconcilerSummary[]; broken: { name: string; file: string; error: string }[] }
export interface FailureGroup { id: string; reconciler: string; error: string; sample: string; count: number; dead: number; firstSeen: Date; lastSeen: Date; sampleKeys: string[] }
export type FailingItem = FailureRow & { group: string };
export interface PassError { reconciler: string; partition: number; failingSince: Date; lastAt: Date; passes: number; error: string }
export interface AuditRow { id: number; at: Date; actor: string; via: 'console' | 'cli'; reconciler: string; action: string; target: string; keys: string[]; note: string | null; result: string }
export interface ItemView { reconciler: string; key: string; failure: FailingItem | null; audit: AuditRow[]; actions: ActionInfo[] }

export interface Views {
  overview(ctx: OperatorContext, now?: Date): Promise<Overview>;
  passHistory(db: Db, options: { reconciler?: string; status?: string; trigger?: string; partition?: number; limit: number }): Promise<{ runs: RunRow[]; total: number }>;
  failureGroups(db: Db, options: { reconciler?: string; deadOnly?: boolean; limit: number }): Promise<{ groups: FailureGroup[]; total: number }>;
  failingItems(db: Db, options: { reconciler?: string; deadOnly?: boolean; group?: string; limit: number }): Promise<{ items: FailingItem[]; total: number }>;
  passErrors(db: Db, reconciler?: string): Promise<PassError[]>;
  itemView(ctx: OperatorContext, reconciler: string, key: string): Promise<ItemView>;
  auditLog(db: Db, options: { reconciler?: string; key?: string; limit: number }): Promise<{ entries: AuditRow[]; total: number }>;
}

let loaded: Views | undefined;
/** The operator layer's views (TEMPORARY: a run-time import until it lands; tests may set their own). */
export async function views(): Promise<Views> {
  loaded ??= (await import('../../operator/views.js' as string)) as Views;
  return loaded;
}
export function setViews(v: Views): void {
  loaded = v;
}
