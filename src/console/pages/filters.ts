/** The filters of a reconciler's pass history: a GET form, so that a filtered page has its own address (and refreshes live). */
import type { Reconciler } from '../../reconciler.js';
import { html, type Html } from '../html.js';

export interface HistoryFilter {
  status?: string;
  trigger?: string;
  partition?: number;
}

const STATUSES = ['running', 'succeeded', 'failed', 'error', 'aborted', 'abandoned'];
const TRIGGERS = ['schedule', 'manual', 'startup', 'retry', 'wake', 'handover', 'handback'];

/** The filter's fields from the query; unknown values are dropped (and so not shown as chosen). */
export function parseHistoryFilter(query: URLSearchParams, partitions: number): HistoryFilter {
  const status = query.get('status') ?? '';
  const trigger = query.get('trigger') ?? '';
  const partition = Number(query.get('partition') ?? '');
  return {
    status: STATUSES.includes(status) ? status : undefined,
    trigger: TRIGGERS.includes(trigger) ? trigger : undefined,
    partition: query.get('partition') && Number.isInteger(partition) && partition >= 0 && partition < partitions ? partition : undefined,
  };
}

function select(name: string, label: string, values: readonly string[], chosen: string | undefined): Html {
  return html`<label>${label} <select name="${name}"><option value="">any</option>${values.map(
    (v) => html`<option value="${v}"${v === chosen ? html` selected` : ''}>${v}</option>`,
  )}</select></label>`;
}

/** The form; it keeps the failure filters (group, dead) as they are. */
export function historyFilters(r: Reconciler, filter: HistoryFilter & { group?: string; dead: boolean }): Html {
  const partitions = Array.from({ length: r.partitions }, (_, i) => String(i));
  return html`<form method="get" action="/reconcilers/${encodeURIComponent(r.name)}" class="filters" data-autosubmit>
    ${select('status', 'Status', STATUSES, filter.status)}
    ${select('trigger', 'Trigger', TRIGGERS, filter.trigger)}
    ${r.partitions > 1 ? select('partition', 'Partition', partitions, filter.partition === undefined ? undefined : String(filter.partition)) : ''}
    ${filter.group ? html`<input type="hidden" name="group" value="${filter.group}">` : ''}
    ${filter.dead ? html`<input type="hidden" name="dead" value="1">` : ''}
    <button type="submit">Filter</button>
  </form>`;
}
