/** The read models the pages render: the operator layer's (src/operator/views.ts), which the CLI shares. */
import type { FailureRow } from '../../operator/views.js';

export type { AuditRow, ChartBucket, FailureGroup, ItemView, LaneView, LastPass, Overview, OperatorContext, PassError, ReconcilerSummary, RunRow } from '../../operator/views.js';

/** A failing item with its error group, as `failingItems` lists it. */
export type FailingItem = FailureRow & { group: string };

/** A manual action, as people see it. */
export interface ActionInfo {
  name: string;
  description: string;
}
