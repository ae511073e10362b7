/**
 * How a reconciler's scan reaches its rows, for `reconciler list`: through an index, or by
 * reading a table whole. A scan that reads a table whole costs O(table), not O(work): fine
 * at a thousand rows, a slow pass and a loaded database at ten million. This shows it while
 * the table is still small.
 *
 * The scan's first page runs against a stand-in connection that records each statement and
 * answers "no rows" without sending anything; each recorded statement is then EXPLAINed on the
 * live database with sequential scans disabled. A sequential scan still in the plan means no
 * index can serve that statement (a dropped index, a missing one). An index scan that filters
 * what it reads (a keyset scan walking the primary key, checking `pdf_url IS NULL` row by row)
 * reads the whole table as surely, only in order: it is flagged too. A partial index on the
 * "work missing" condition serves the scan with no filter.
 */
import { drizzle } from 'drizzle-orm/node-postgres';
import type { Db, Reconciler } from '../reconciler.js';
import type { Database, PlanNode, Statement } from '../store/database.js';
import { coerceError, errorSummary } from '../errors.js';
import { within } from '../timeout.js';

export interface ScanPlan {
  /**
   * `index`: every table its statements read is reached through an index that holds just what
   * the scan asks for; `filtered-index`: an index is read, but its rows are then filtered (it
   * reads rows it does not return: as many as the table holds, in the worst case);
   * `table-scan`: some table is read whole; `none`: its first page sent no statement (it reads
   * no table); `unknown`: the scan or EXPLAIN failed (see `detail`).
   */
  access: 'index' | 'filtered-index' | 'table-scan' | 'none' | 'unknown';
  /** Indexes the plans use. */
  indexes: string[];
  /** Tables the plans read whole. */
  tableScans: string[];
  /** Conditions checked row by row after an index scan read the rows: `reads <table> through <index> and filters <condition>`. */
  filters: string[];
  /** How many statements the first page sent. */
  statements: number;
  /** One line for people: `index returns_unsettled_by_partition`, `reads returns whole (no index fits)`. */
  detail: string;
}

/** A pg client that records what it is asked and answers with no rows. */
function recordingClient(statements: Statement[]) {
  return {
    async query(query: string | { text: string; values?: unknown[] }, params?: unknown[]) {
      const text = typeof query === 'string' ? query : query.text;
      statements.push({ text, params: params ?? (typeof query === 'string' ? [] : query.values ?? []) });
      return { rows: [], fields: [], rowCount: 0, command: 'SELECT' };
    },
  };
}

/** How long the first page of a scan may take here: it sends no SQL anywhere, but it may wait on something else. */
const FIRST_PAGE_TIMEOUT_MS = 3_000;
/** Statements that read no table: a scan's transaction and session settings. */
const NOT_A_QUERY = /^\s*(BEGIN|START|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE|SET|RESET|SHOW)\b/i;

/**
 * The statements the first page of the scan sends (partition 0 of a partitioned reconciler).
 * A scan that waits on something other than the database (an HTTP call that never answers) is
 * given up after FIRST_PAGE_TIMEOUT_MS, with its signal aborted.
 */
async function firstPageStatements(reconciler: Reconciler): Promise<Statement[]> {
  const statements: Statement[] = [];
  const db = drizzle({ client: recordingClient(statements) as never }) as unknown as Db;
  const signal = AbortSignal.timeout(FIRST_PAGE_TIMEOUT_MS);
  const firstPage = async () => {
    const page = reconciler.scan({ db, after: undefined, limit: reconciler.pageSize, signal, partition: { index: 0, count: reconciler.partitions } });
    if (typeof (page as AsyncIterable<unknown>)[Symbol.asyncIterator] === 'function') {
      const iterator = (page as AsyncIterable<unknown>)[Symbol.asyncIterator]();
      await iterator.next();
      await iterator.return?.();
    } else {
      await page;
    }
  };
  const tooLong = () => new Error(`its scan did not finish its first page within ${FIRST_PAGE_TIMEOUT_MS / 1000}s (no SQL is run here: it waits on something else)`);
  await within(firstPage(), FIRST_PAGE_TIMEOUT_MS, tooLong, { unref: true });
  return statements.filter((statement) => !NOT_A_QUERY.test(statement.text));
}

function walk(node: PlanNode, visit: (node: PlanNode) => void): void {
  visit(node);
  for (const child of node.Plans ?? []) walk(child, visit);
}

export async function planScan(database: Database, reconciler: Reconciler): Promise<ScanPlan> {
  let statements: Statement[];
  try {
    statements = await firstPageStatements(reconciler);
  } catch (error) {
    return { access: 'unknown', indexes: [], tableScans: [], filters: [], statements: 0, detail: `not known: ${errorSummary(coerceError(error), 160)}` };
  }
  if (statements.length === 0) return { access: 'none', indexes: [], tableScans: [], filters: [], statements: 0, detail: 'its scan sends no SQL' };
  let plans: PlanNode[];
  try {
    plans = await database.explain(statements);
  } catch (error) {
    return { access: 'unknown', indexes: [], tableScans: [], filters: [], statements: statements.length, detail: `EXPLAIN failed: ${errorSummary(coerceError(error), 160)}` };
  }
  const indexes = new Set<string>();
  const tableScans = new Set<string>();
  const filters = new Set<string>();
  for (const plan of plans) {
    walk(plan, (node) => {
      if (node['Index Name']) indexes.add(node['Index Name']);
      if (node['Node Type'] === 'Seq Scan' && node['Relation Name']) tableScans.add(node['Relation Name']);
      // An index scan (or the heap scan of a bitmap) that checks a condition on each row it read.
      if (node.Filter && /Index Scan|Index Only Scan|Bitmap Heap Scan/.test(node['Node Type'])) {
        const through = new Set<string>();
        walk(node, (inner) => inner['Index Name'] && through.add(inner['Index Name']));
        filters.add(`reads ${node['Relation Name'] ?? '?'} through ${[...through].join(', ') || 'an index'} and filters ${node.Filter}`);
      }
    });
  }
  const result = { indexes: [...indexes].sort(), tableScans: [...tableScans].sort(), filters: [...filters].sort(), statements: statements.length };
  if (tableScans.size > 0) return { access: 'table-scan', ...result, detail: `reads ${result.tableScans.join(', ')} whole: no index fits its scan` };
  if (filters.size > 0) {
    return { access: 'filtered-index', ...result, detail: `${result.filters.join('; ')}: rows it does not return (a partial index on that condition reads none)` };
  }
  if (indexes.size > 0) return { access: 'index', ...result, detail: `index ${result.indexes.join(', ')}` };
  return { access: 'none', ...result, detail: 'its scan reads no table' };
}
