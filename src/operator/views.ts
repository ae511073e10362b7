/**
 * The operator's read models: what the console's pages and the CLI's commands show, each
 * computed once here so that both say the same. "What is stuck, since when, why, and how do I
 * fix it": lanes (a reconciler partition) with their last pass, holder, staleness and failures;
 * failures grouped by error; passes that keep breaking; one item with its audit record.
 */
import { sql } from 'drizzle-orm';
import type { Reconciler } from '../reconciler.js';
import { formatLoadError } from '../engine/load.js';
import { emptyCounts, type PassCounts } from '../engine/result.js';
import { nextTick } from '../scheduler/cron.js';
import { queryRows } from '../store/database.js';
import { listAudit, type AuditRow } from '../store/audit.js';
import { deadSummaries, failureGroups, type FailureGroup } from '../store/failure-groups.js';
import { listFailures, type FailureRow } from '../store/failures.js';
import { holderOfRow } from '../store/lease.js';
import { wakesListening } from '../store/replicas.js';
import { listRuns, passChart, passErrors, readRuns, type ChartBucket, type PassError, type RunFilter, type RunRow } from '../store/runs.js';
import { engineSchema } from '../store/schema.js';
import { readStates, type StateRow } from '../store/state.js';
import { actionsOf, type OperatorContext } from './context.js';

export type { AuditRow, ChartBucket, FailureGroup, FailureRow, OperatorContext, PassError, RunRow };

export interface LastPass {
  id: number;
  status: string;
  trigger: string;
  startedAt: Date;
  durationMs: number | null;
  counts: PassCounts;
  complete: boolean;
  error: string | null;
}

/** One reconciler partition (a lane), as the overview shows it. */
export interface LaneView {
  reconciler: string;
  partition: number;
  partitions: number;
  schedule: string;
  timezone: string;
  nextRun: Date | null;
  lastPass: LastPass | null;
  /** The pass running now, and where. */
  running: { host: string; pid: number; since: Date; runId: number | null } | null;
  /** Age of the oldest item the last finished pass found (reconcilers with `since`), at `now`. */
  stalenessMs: number | null;
  /** Items the last finished pass found. */
  backlog: number | null;
  inBackoff: number;
  dead: number;
  /** Null when the reconciler does not wake on notifications. */
  wakes: { channels: string[]; listening: boolean } | null;
  /** Set while this lane's passes keep breaking. */
  failingSince: Date | null;
}

export interface ReconcilerSummary {
  name: string;
  description: string;
  file: string;
  schedule: string;
  timezone: string;
  partitions: number;
  actions: { name: string; description: string }[];
  inBackoff: number;
  dead: number;
  lanes: LaneView[];
  /** When it has dead items: since when the first died, and the error most of them share (its group). */
  deadItems: { since: Date; group: string; error: string; count: number } | null;
  /** The last 24 hours, in 15-minute buckets (empty ones left out). */
  chart: ChartBucket[];
}

export interface Overview {
  reconcilers: ReconcilerSummary[];
  /** Job files that did not load. */
  broken: { name: string; file: string; error: string }[];
}

const laneKey = (name: string, partition: number) => `${name}#${partition}`;

/** Items in backoff and dead per lane, each failure placed by its key under the reconciler's current partition count. */
async function failureCounts(ctx: OperatorContext): Promise<Map<string, { backoff: number; dead: number }>> {
  const t = engineSchema();
  const names = ctx.reconcilers.map((r) => r.name);
  if (names.length === 0) return new Map();
  const rows = await queryRows<{ reconciler: string; partition: number; backoff: number; dead: number }>(
    ctx.db,
    sql`SELECT f.reconciler, CASE WHEN c.n > 1 THEN ${t.partitionOf}(f.key, c.n) ELSE 0 END AS partition,
               count(*) FILTER (WHERE f.dead_at IS NULL)::int AS backoff, count(*) FILTER (WHERE f.dead_at IS NOT NULL)::int AS dead
        FROM ${t.failures} f
        JOIN unnest(${`{${names.join(',')}}`}::text[], ${`{${ctx.reconcilers.map((r) => r.partitions).join(',')}}`}::int[]) AS c(name, n) ON c.name = f.reconciler
        GROUP BY 1, 2`,
  );
  return new Map(rows.map((r) => [laneKey(r.reconciler, Number(r.partition)), { backoff: Number(r.backoff), dead: Number(r.dead) }]));
}

function lastPassOf(run: RunRow | undefined): LastPass | null {
  if (!run) return null;
  const counts = emptyCounts();
  for (const k of Object.keys(counts) as (keyof PassCounts)[]) counts[k] = run[k];
  return { id: run.id, status: run.status, trigger: run.trigger, startedAt: run.startedAt, durationMs: run.durationMs, counts, complete: run.complete, error: run.error };
}

interface LaneSources {
  states: Map<string, StateRow>;
  runs: Map<number, RunRow>;
  failures: Map<string, { backoff: number; dead: number }>;
  errors: Map<string, PassError>;
  listening: Map<string, boolean>;
}

function laneView(r: Reconciler, partition: number, s: LaneSources, now: Date): LaneView {
  const key = laneKey(r.name, partition);
  const state = s.states.get(key);
  const last = state?.lastRunId ? s.runs.get(state.lastRunId) : undefined;
  const holder = state?.leaseLive ? holderOfRow(state) : undefined;
  return {
    reconciler: r.name, partition, partitions: r.partitions, schedule: r.schedule, timezone: r.timezone,
    nextRun: safeNextTick(r, now),
    lastPass: lastPassOf(last),
    running: holder ? { host: holder.host, pid: holder.pid, since: holder.since, runId: holder.runId } : null,
    stalenessMs: last?.oldestItemAt ? Math.max(0, now.getTime() - last.oldestItemAt.getTime()) : last && r.since && last.found === 0 ? 0 : null,
    backlog: last ? last.found : null,
    inBackoff: s.failures.get(key)?.backoff ?? 0,
    dead: s.failures.get(key)?.dead ?? 0,
    wakes: r.wakeOn.length > 0 ? { channels: [...r.wakeOn], listening: s.listening.get(r.name) ?? false } : null,
    failingSince: s.errors.get(key)?.failingSince ?? null,
  };
}

function safeNextTick(r: Reconciler, now: Date): Date | null {
  try {
    return nextTick(r.schedule, r.timezone, now);
  } catch {
    return null;
  }
}

/** Every loaded reconciler with its lanes and chart, and the job files that did not load. */
export async function overview(ctx: OperatorContext, now = new Date()): Promise<Overview> {
  const states = new Map((await readStates(ctx.db)).map((s) => [laneKey(s.reconciler, s.partition), s]));
  const runs = new Map((await readRuns(ctx.db, [...states.values()].flatMap((s) => (s.lastRunId ? [s.lastRunId] : [])))).map((r) => [r.id, r]));
  const sources: LaneSources = {
    states, runs,
    failures: await failureCounts(ctx),
    errors: new Map((await passErrors(ctx.db)).map((e) => [laneKey(e.reconciler, e.partition), e])),
    listening: await wakesListening(ctx.db, new Map(ctx.reconcilers.filter((r) => r.wakeOn.length > 0).map((r) => [r.name, r.wakeOn]))),
  };
  const chart = await passChart(ctx.db);
  const dead = new Map((await deadSummaries(ctx.db)).map((d) => [d.reconciler, d]));
  return {
    reconcilers: ctx.reconcilers.map((r) => {
      const lanes = Array.from({ length: r.partitions }, (_, p) => laneView(r, p, sources, now));
      return {
        name: r.name, description: r.description, file: r.file, schedule: r.schedule, timezone: r.timezone, partitions: r.partitions,
        actions: actionsOf(ctx, r.name),
        inBackoff: lanes.reduce((n, l) => n + l.inBackoff, 0),
        dead: lanes.reduce((n, l) => n + l.dead, 0),
        lanes,
        deadItems: dead.has(r.name) ? (({ reconciler: _, ...d }) => d)(dead.get(r.name)!) : null,
        chart: chart.get(r.name) ?? [],
      };
    }),
    broken: ctx.loadErrors.map((e) => ({ name: e.name, file: e.file, error: formatLoadError(e) })),
  };
}

/** Passes, newest first, filtered; and how many match. */
export const passHistory = listRuns;
export type { RunFilter };
export { failureGroups, passErrors };

/** Failing items with their error group (oldest failure first), filtered; and how many match. */
export const failingItems = listFailures;

export interface ItemView {
  reconciler: string;
  key: string;
  /** Null when the item has no failure on record (never failed, or forgotten). */
  failure: (FailureRow & { group: string }) | null;
  /** Newest first. */
  audit: AuditRow[];
  actions: { name: string; description: string }[];
}

/** One item: its failure memory, the actions taken on it, and the manual actions it offers. */
export async function itemView(ctx: OperatorContext, reconciler: string, key: string): Promise<ItemView> {
  const [failure] = (await listFailures(ctx.db, { reconciler, key, limit: 1 })).items;
  return {
    reconciler, key,
    failure: failure ?? null,
    audit: (await listAudit(ctx.db, { reconciler, key, limit: 100 })).entries,
    actions: actionsOf(ctx, reconciler),
  };
}

/** The audit log, newest first; and how many records match. */
export const auditLog = listAudit;
