/**
 * Issue 19, tracing, against a real OTLP/HTTP receiver (testkit/otlp.ts): the span tree of a
 * manual pass with a failing item and a retried one, the `traceparent` the provider saw, secrets
 * in no span, the daemon traced the same way (its last spans flushed at shutdown), and tracing
 * off loading nothing of OpenTelemetry. Real child processes, the real SDK, real PostgreSQL.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { appendFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../testkit/otlp.js';
import { tracingConfigured } from '../src/tracing/index.js';
import { useTestDatabase } from './helpers/db.js';
import { API, REPO_ROOT, jobsDir, type JobsDir } from './helpers/jobs.js';
import { runCli, startProcess, useCleanup, type LogLine } from './helpers/processes.js';
import { makeDue, seedWithCheckout, settleEnv, startProvider, type Provider } from './helpers/returns.js';

const t = useTestDatabase({ resetEngineTables: true, returns: true });
const { children, dirs } = useCleanup();

let receiver: OtlpReceiver;
beforeEach(async () => {
  receiver = await startOtlpReceiver();
});
afterEach(async () => {
  await receiver.close();
});

const SERVICE = 'reconciler-tracing-test';
/** The OTEL_* environment of a traced process: OTLP over HTTP with JSON bodies, to this test's receiver. */
const otel = (extra: Record<string, string> = {}) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_SERVICE_NAME: SERVICE, ...extra });

/**
 * A job over three fixed items: "bad" always throws, "flaky" throws at its first attempt only,
 * "healthy" succeeds. Each logs from inside its reconcile. A 1 ms backoff: the next pass retries.
 */
const tracedJob = ({ schedule = '0 0 1 1 *', backoff = '1ms' } = {}) => `
import { defineReconciler } from ${JSON.stringify(API)};
export default defineReconciler({
  schedule: '${schedule}',
  retry: { maxAttempts: 5, backoff: { initial: '${backoff}', max: '${backoff}' } },
  scan: async ({ after }) => (after ? [] : [{ key: 'bad' }, { key: 'flaky' }, { key: 'healthy' }]),
  key: (item) => item.key,
  reconcile: async (item, ctx) => {
    ctx.log.info({ event: 'test:item', key: item.key, attempt: ctx.attempt }, 'reconciling ' + item.key);
    if (item.key === 'bad') throw new Error('bad is always broken');
    if (item.key === 'flaky' && ctx.attempt === 1) throw new Error('flaky fails at its first attempt');
    return 'changed';
  },
});
`;

function tracedJobs(files: Record<string, string> = { 'traced.ts': tracedJob() }): JobsDir {
  const dir = jobsDir(files);
  dirs.push(dir);
  return dir;
}

/** The JSON log lines of a CLI's stderr (it logs JSON there when not a terminal). */
const logLines = (text: string): LogLine[] =>
  text.split('\n').flatMap((line) => {
    try {
      const parsed = JSON.parse(line) as unknown;
      return parsed && typeof parsed === 'object' ? [parsed as LogLine] : [];
    } catch {
      return [];
    }
  });

const byTrace = (spans: ReceivedSpan[]) => {
  const traces = new Map<string, ReceivedSpan[]>();
  for (const span of spans) traces.set(span.traceId, [...(traces.get(span.traceId) ?? []), span]);
  return traces;
};

/** The root spans named `name`, each with every span of its trace. */
const passTraces = (spans: ReceivedSpan[], name: string) => {
  const traces = byTrace(spans);
  return spans.filter((span) => span.parentSpanId === undefined && span.name === name).map((root) => ({ root, spans: traces.get(root.traceId)! }));
};

/** What a span tree looks like, for a failure message. */
const tree = (spans: ReceivedSpan[]) => spans.map((s) => `${s.name} ${s.spanId}<-${s.parentSpanId ?? 'root'} ${JSON.stringify(s.attributes)}`).join('\n');

/**
 * The structure every traced pass has: one root `pass <name>`, everything else in its trace below
 * it, the engine's database steps and the items its direct children, the database spans with
 * their `db.*` and `server.*` attributes.
 */
function expectPassTree(spans: ReceivedSpan[], name: string, databaseName: string, options: { complete?: boolean } = {}): { root: ReceivedSpan; items: ReceivedSpan[]; children: (of: ReceivedSpan) => ReceivedSpan[] } {
  const roots = spans.filter((span) => span.parentSpanId === undefined);
  expect(roots.map((span) => span.name), tree(spans)).toEqual([`pass ${name}`]);
  const root = roots[0]!;
  expect(new Set(spans.map((span) => span.traceId)).size).toBe(1);
  const ids = new Set(spans.map((span) => span.spanId));
  expect(spans.filter((span) => span !== root && !ids.has(span.parentSpanId!)), 'spans whose parent is not in the trace').toEqual([]);
  expect(root.kind).toBe(1);
  expect(root.resource['service.name']).toBe(SERVICE);
  const children = (of: ReceivedSpan) => spans.filter((span) => span.parentSpanId === of.spanId);
  const direct = children(root);
  for (const step of ['lease reconciler.leases', 'scan page ' + name, 'record reconciler.runs']) {
    const found = direct.filter((span) => span.name === step);
    expect(found.length, `${step} under the pass\n${tree(spans)}`).toBeGreaterThanOrEqual(1);
    for (const span of found) {
      expect(span.kind).toBe(3);
      expect(span.attributes).toMatchObject({ 'db.system.name': 'postgresql', 'db.namespace': databaseName, 'server.address': '127.0.0.1', 'server.port': 5432, 'db.operation.name': step.split(' ').slice(0, -1).join(' ') });
      expect(typeof span.attributes['db.collection.name']).toBe('string');
    }
  }
  expect(direct.filter((span) => span.name === 'lease reconciler.leases')).toHaveLength(1);
  // The fixture jobs' scans find one short page: it, and the empty page that ends the scan (unless a shutdown stopped the pass).
  if (options.complete !== false) expect(direct.filter((span) => span.name === 'scan page ' + name)).toHaveLength(2);
  expect(direct.filter((span) => span.name === 'record reconciler.runs')).toHaveLength(1);
  // Every item span is a child of the pass, in the pass's trace.
  const items = spans.filter((span) => span.name === `item ${name}`);
  for (const item of items) {
    expect(item.parentSpanId).toBe(root.spanId);
    expect(item.kind).toBe(1);
    expect(item.attributes['reconciler.name']).toBe(name);
  }
  for (const span of spans) expect(span.resource['service.name']).toBe(SERVICE);
  return { root, items, children };
}

const itemOf = (items: ReceivedSpan[], key: string) => {
  const found = items.filter((span) => span.attributes['reconciler.item.key'] === key);
  expect(found, `one item span of ${key}`).toHaveLength(1);
  return found[0]!;
};

/** A failed item's span: status ERROR with the message, `error.type`, an exception event, and the failure recorded as its child. */
function expectFailedItem(item: ReceivedSpan, children: (of: ReceivedSpan) => ReceivedSpan[], message: string): void {
  expect(item.attributes['reconciler.item.outcome']).toBe('failed');
  expect(item.status.code).toBe(2);
  expect(item.status.message).toContain(message);
  expect(item.attributes['error.type']).toBe('Error');
  const exception = item.events.find((event) => event.name === 'exception');
  expect(exception, JSON.stringify(item.events)).toBeDefined();
  expect(exception!.attributes['exception.message']).toContain(message);
  expect(exception!.attributes['exception.type']).toBe('Error');
  const recorded = children(item).filter((span) => span.name === 'record reconciler.failures');
  expect(recorded).toHaveLength(1);
  expect(recorded[0]!.kind).toBe(3);
  expect(recorded[0]!.attributes['db.collection.name']).toBe('reconciler.failures');
}

/** Each `test:item` line the job logged carries the trace and span ids of that item's span. */
function expectItemLogsInSpans(stderr: string, items: ReceivedSpan[]): void {
  const lines = logLines(stderr).filter((line) => line.event === 'test:item');
  expect(lines.map((line) => line.key).sort()).toEqual(['bad', 'flaky', 'healthy']);
  for (const line of lines) {
    const span = items.find((item) => item.attributes['reconciler.item.key'] === line.key && item.attributes['reconciler.item.attempt'] === line.attempt);
    expect(span, `the item span of ${String(line.key)} attempt ${String(line.attempt)}`).toBeDefined();
    expect({ trace_id: line.trace_id, span_id: line.span_id }).toEqual({ trace_id: span!.traceId, span_id: span!.spanId });
  }
}

describe('a manual pass (`reconciler run`)', () => {
  it('is a trace: the pass, its lease, scan pages, items and records; a failing item, then its retry in the next pass', async () => {
    const jobs = tracedJobs();
    const env = { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info', ...otel() };

    const first = await runCli(['run', 'traced'], env);
    expect(first.code, first.stderr).toBe(1); // items failed
    await receiver.waitFor((spans) => passTraces(spans, 'pass traced').length === 1);
    const [pass1] = passTraces(receiver.spans, 'pass traced');
    const one = expectPassTree(pass1!.spans, 'traced', t.name);
    expect(one.root.status.code).not.toBe(2); // failed items do not make the pass an error
    expect(one.root.attributes).toMatchObject({
      'reconciler.name': 'traced',
      'reconciler.trigger': 'manual',
      'reconciler.dry_run': false,
      'reconciler.pass.ran': true,
      'reconciler.pass.status': 'failed',
      'reconciler.pass.complete': true,
      'reconciler.pass.found': 3,
      'reconciler.pass.changed': 1,
      'reconciler.pass.failed': 2,
      'reconciler.pass.deferred': 0,
      'reconciler.pass.dead': 0,
    });
    expect(one.root.attributes).not.toHaveProperty('reconciler.partition');
    expect(typeof one.root.attributes['reconciler.pass.id']).toBe('number');
    expect(one.items).toHaveLength(3);
    for (const key of ['bad', 'flaky', 'healthy']) expect(itemOf(one.items, key).attributes['reconciler.item.attempt']).toBe(1);
    expectFailedItem(itemOf(one.items, 'bad'), one.children, 'bad is always broken');
    expectFailedItem(itemOf(one.items, 'flaky'), one.children, 'flaky fails at its first attempt');
    expect(itemOf(one.items, 'healthy').attributes['reconciler.item.outcome']).toBe('changed');
    expect(itemOf(one.items, 'healthy').status.code).not.toBe(2);
    expectItemLogsInSpans(first.stderr, one.items);

    // The next pass: the backoff (1 ms) is over, both failed items are retried; flaky succeeds at attempt 2.
    const second = await runCli(['run', 'traced'], env);
    expect(second.code, second.stderr).toBe(1); // bad failed again
    await receiver.waitFor((spans) => passTraces(spans, 'pass traced').length === 2);
    const pass2 = passTraces(receiver.spans, 'pass traced').find((pass) => pass.root.traceId !== pass1!.root.traceId)!;
    const two = expectPassTree(pass2.spans, 'traced', t.name);
    expect(two.root.attributes).toMatchObject({ 'reconciler.trigger': 'manual', 'reconciler.pass.status': 'failed', 'reconciler.pass.found': 3, 'reconciler.pass.changed': 2, 'reconciler.pass.failed': 1 });
    expect(two.root.attributes['reconciler.pass.id']).not.toBe(one.root.attributes['reconciler.pass.id']);
    const flaky = itemOf(two.items, 'flaky');
    expect(flaky.attributes).toMatchObject({ 'reconciler.item.key': 'flaky', 'reconciler.item.attempt': 2, 'reconciler.item.outcome': 'changed' });
    expect(flaky.status.code).not.toBe(2);
    expect(two.children(flaky).map((span) => span.name), 'its failure record forgotten, under its span').toEqual(['record reconciler.failures']);
    expect(itemOf(two.items, 'bad').attributes['reconciler.item.attempt']).toBe(2);
    expectFailedItem(itemOf(two.items, 'bad'), two.children, 'bad is always broken');
    expectItemLogsInSpans(second.stderr, two.items);
  }, 60_000);

  it('traces a set-based reconciler as a batch span with its items under it, the poison one failed', async () => {
    const jobs = tracedJobs({
      'batched.ts': `
import { defineReconciler } from ${JSON.stringify(API)};
export default defineReconciler({
  schedule: '0 0 1 1 *',
  scan: async ({ after }) => (after ? [] : [{ key: 'a' }, { key: 'poison' }, { key: 'c' }]),
  key: (item) => item.key,
  reconcileBatch: async (items) => {
    if (items.some((item) => item.key === 'poison')) throw new Error('the batch met poison');
    return Object.fromEntries(items.map((item) => [item.key, 'changed']));
  },
});
`,
    });
    const result = await runCli(['run', 'batched'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, ...otel() });
    expect(result.code, result.stderr).toBe(1);
    await receiver.waitFor((spans) => passTraces(spans, 'pass batched').length === 1);
    const [pass] = passTraces(receiver.spans, 'pass batched');
    const batches = pass!.spans.filter((span) => span.name === 'batch batched');
    expect(batches).toHaveLength(1);
    expect(batches[0]!.parentSpanId).toBe(pass!.root.spanId);
    expect(batches[0]!.attributes['reconciler.batch.size']).toBe(3);
    const items = pass!.spans.filter((span) => span.name === 'item batched');
    expect(items.map((span) => span.parentSpanId)).toEqual([batches[0]!.spanId, batches[0]!.spanId, batches[0]!.spanId]);
    expect(Object.fromEntries(items.map((span) => [span.attributes['reconciler.item.key'], span.attributes['reconciler.item.outcome']]))).toEqual({ a: 'changed', poison: 'failed', c: 'changed' });
    const poison = items.find((span) => span.attributes['reconciler.item.key'] === 'poison')!;
    expect(poison.status).toMatchObject({ code: 2, message: expect.stringContaining('the batch met poison') });
  }, 60_000);
});

/** Canaries: values that must never reach a span, an OTLP body or the CLI's output. */
const DB_CANARY = 'CanaryTracePw5Xk';
const KEY_CANARY = 'sk_canary_Tr4ce9Q';
const HEADER_CANARY = 'otlpCanaryH3ad7Z';
const CANARY_ROLE = 'reconciler_trace_canary';

describe('the returns example, traced', () => {
  let provider: Provider;
  beforeAll(async () => {
    provider = await startProvider([], KEY_CANARY);
  }, 60_000);
  afterAll(async () => {
    await provider?.stop();
  });
  beforeEach(async () => {
    await t.rows(sql`TRUNCATE payments, return_items, returns, fix_items, fixes, customers CASCADE`); // ids go on: keys never repeat at the simulator
  });

  /** What the simulator recorded of the requests that carried a `traceparent`, oldest first. */
  const tracedRequests = async (): Promise<{ method: string; path: string; traceparent: string; idempotencyKey?: string }[]> => {
    const response = await fetch(`${provider.url}/v1/_simulator/traceparents`, { headers: { authorization: `Bearer ${KEY_CANARY}` } });
    expect(response.status).toBe(200);
    return ((await response.json()) as { data: { method: string; path: string; traceparent: string; idempotencyKey?: string }[] }).data;
  };

  it("sends each provider call's span as the traceparent the provider sees, under the item's span", async () => {
    await seedWithCheckout(t, provider, 8, 5, { apiKey: KEY_CANARY });
    const before = (await tracedRequests()).length; // the seed's checkout charges (untraced: this process has no SDK) and earlier tests'
    const result = await runCli(['run', 'settle-returns', '--wait'], { ...settleEnv(t, provider, { PAYMENT_PROVIDER_KEY: KEY_CANARY, PAYMENT_PROVIDER_TIMEOUT: '20s' }), ...otel() });
    expect(result.code, result.stderr).toBe(0);
    await receiver.waitFor((spans) => passTraces(spans, 'pass settle-returns').length === 4); // one pass per partition
    const seen = (await tracedRequests()).slice(before);

    const calls = receiver.spans.filter((span) => span.kind === 3 && span.attributes['http.request.method'] !== undefined);
    expect(calls.length).toBeGreaterThan(0);
    // Each call's span is the parent the provider was told about, and each traced request the provider saw is one of those spans.
    expect(seen.map((request) => request.traceparent).sort()).toEqual(calls.map((span) => `00-${span.traceId}-${span.spanId}-01`).sort());
    const spans = new Map(receiver.spans.map((span) => [span.spanId, span]));
    for (const call of calls) {
      const request = seen.find((r) => r.traceparent === `00-${call.traceId}-${call.spanId}-01`)!;
      expect(call.name).toBe(call.attributes['http.request.method']);
      expect(call.name).toBe(request.method);
      expect(call.attributes).toMatchObject({ 'url.path': request.path, 'server.address': '127.0.0.1', 'server.port': Number(new URL(provider.url).port), 'http.response.status_code': 200 });
      expect(call.attributes['url.full']).toBe(`${provider.url}${request.path}`);
      const item = spans.get(call.parentSpanId!);
      expect(item?.name, `the parent of ${call.name} ${request.path}`).toBe('item settle-returns');
      expect(item!.traceId).toBe(call.traceId);
      const pass = spans.get(item!.parentSpanId!);
      expect(pass?.name).toBe('pass settle-returns');
      expect(pass!.parentSpanId).toBeUndefined();
      expect(pass!.attributes['reconciler.partition']).toEqual(expect.any(Number));
    }
    const charges = seen.filter((request) => request.method === 'POST' && request.path === '/v1/charges');
    expect(charges.length, 'charge POSTs among the traced calls').toBeGreaterThan(0);
    for (const charge of charges) expect(charge.idempotencyKey).toMatch(/\S/);
  }, 60_000);

  it('keeps the database password, the provider key and the OTLP header out of every span and all output, failures included', async () => {
    await seedWithCheckout(t, provider, 8, 6, { apiKey: KEY_CANARY });
    // A role whose password is the canary: the CLI really connects with it.
    await t.rows(sql.raw(`DROP ROLE IF EXISTS ${CANARY_ROLE}; CREATE ROLE ${CANARY_ROLE} LOGIN SUPERUSER PASSWORD '${DB_CANARY}'`));
    const url = new URL(t.url);
    url.username = CANARY_ROLE;
    url.password = DB_CANARY;
    // settle-returns, and a job whose failure message carries the database URL, its password and the OTLP headers as it read them.
    const jobs = tracedJobs({
      'settle-returns.ts': `export { default } from ${JSON.stringify(join(REPO_ROOT, 'examples', 'returns', 'jobs', 'settle-returns.js'))};\n`,
      'leaky.ts': `
import { defineReconciler } from ${JSON.stringify(API)};
export default defineReconciler({
  schedule: '0 0 1 1 *',
  scan: async ({ after }) => (after ? [] : [{ key: 'leak' }]),
  key: (item) => item.key,
  reconcile: async (item, ctx) => {
    const password = new URL(process.env.DATABASE_URL).password;
    ctx.log.info({ event: 'test:item', key: item.key }, 'connecting to ' + process.env.DATABASE_URL);
    throw new Error('cannot connect to ' + process.env.DATABASE_URL + ' with password ' + password + ' (otlp ' + process.env.OTEL_EXPORTER_OTLP_HEADERS + ')');
  },
});
`,
    });
    const env = { ...settleEnv(t, provider, { PAYMENT_PROVIDER_KEY: KEY_CANARY, PAYMENT_PROVIDER_TIMEOUT: '20s' }), JOBS_DIR: jobs.dir, DATABASE_URL: url.toString(), LOG_LEVEL: 'debug', ...otel({ OTEL_EXPORTER_OTLP_HEADERS: `x-api-key=${HEADER_CANARY}` }) };
    const outputs: string[] = [];
    try {
      // A wrong key (every call refused) and the leaky job; then, their backoff over, the right key with the provider failing every call (a 500).
      const refused = await runCli(['run', 'settle-returns', 'leaky', '--wait'], { ...env, PAYMENT_PROVIDER_KEY: `${KEY_CANARY}-wrong` });
      await makeDue(t);
      await provider.setFaults({ errorRate: 1 });
      const settled = await runCli(['run', 'settle-returns', '--wait'], env);
      for (const result of [refused, settled]) outputs.push(result.stdout, result.stderr);
      expect([refused.code, settled.code], outputs.join('\n')).toEqual([1, 1]);
      expect(refused.stdout).toMatch(/^settle-returns partition \d: pass \d+ failed .*, [1-9]\d* failed,/m);
    } finally {
      await provider.setFaults({ errorRate: 0 });
      await t.rows(sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ${CANARY_ROLE}`);
      await t.rows(sql.raw(`DROP ROLE IF EXISTS ${CANARY_ROLE}`));
    }
    await receiver.waitFor((spans) => passTraces(spans, 'pass leaky').length === 1 && passTraces(spans, 'pass settle-returns').length === 8);

    // The failures are in the spans, scrubbed: the provider's refusals, and the leaky job's message with its secrets masked.
    const failed = receiver.spans.filter((span) => span.name === 'item settle-returns' && span.status.code === 2);
    expect(failed.some((span) => /401/.test(span.status.message ?? '')), 'a refusal of the wrong key').toBe(true);
    expect(failed.some((span) => /500/.test(span.status.message ?? '')), 'a 500 of the provider').toBe(true);
    const leak = receiver.spans.find((span) => span.name === 'item leaky')!;
    expect(leak.status.code).toBe(2);
    expect(leak.status.message).toContain(`cannot connect to postgres://${CANARY_ROLE}:***@127.0.0.1:5432/${t.name}`);
    expect(leak.status.message).toContain('with password [redacted]');
    expect(leak.status.message).toContain('(otlp x-api-key=[redacted])');
    expect(leak.events.find((event) => event.name === 'exception')?.attributes['exception.message']).toBe(leak.status.message);
    // The OTLP header went where it belongs: on every export request, as a header.
    expect(receiver.headers.length).toBe(receiver.bodies.length);
    for (const headers of receiver.headers) expect(headers['x-api-key']).toBe(HEADER_CANARY);

    const sent = receiver.bodies.join('\n');
    expect(sent.length).toBeGreaterThan(10_000);
    const printed = outputs.join('\n');
    expect(printed.length).toBeGreaterThan(1_000);
    for (const canary of [DB_CANARY, KEY_CANARY, HEADER_CANARY]) {
      expect(sent, 'an OTLP body').not.toContain(canary);
      expect(JSON.stringify(receiver.spans, (_, value: unknown) => (typeof value === 'bigint' ? String(value) : value)), 'a decoded span').not.toContain(canary);
      expect(printed, "the CLI's output").not.toContain(canary);
    }
  }, 90_000);
});

describe('the daemon (`reconciler daemon`)', () => {
  it('traces its passes the same way, and flushes the last ones when it stops', async () => {
    // Every second; a backoff of an hour, so that no retry pass starts between the ticks.
    const jobs = tracedJobs({ 'ticking.ts': tracedJob({ schedule: '*/1 * * * * *', backoff: '1h' }) });
    // The batch processor holds spans for a minute: what arrives, arrives because the shutdown flushed it.
    const daemon = startProcess(['daemon'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info', ...otel({ OTEL_BSP_SCHEDULE_DELAY: '60000' }) });
    children.push(daemon);
    await daemon.waitForEvent('pass:finish', { reconciler: 'ticking' }, 30_000);
    expect(receiver.spans, 'spans exported before the shutdown').toEqual([]);
    daemon.child.kill('SIGTERM');
    expect((await daemon.exited).code, daemon.stderr).toBe(0);
    const finished = daemon.events('pass:finish', { reconciler: 'ticking' });
    const traced = () => passTraces(receiver.spans, 'pass ticking');
    await receiver.waitFor(() => finished.every((line) => traced().some((pass) => pass.root.attributes['reconciler.pass.id'] === line.passId)), 5_000);

    for (const line of finished) {
      const pass = traced().find((p) => p.root.attributes['reconciler.pass.id'] === line.passId)!;
      const { root, items } = expectPassTree(pass.spans, 'ticking', t.name, { complete: line.complete === true });
      expect(['schedule', 'startup']).toContain(root.attributes['reconciler.trigger']);
      expect(root.attributes['reconciler.trigger']).toBe(line.trigger);
      expect(root.attributes).toMatchObject({ 'reconciler.name': 'ticking', 'reconciler.pass.ran': true, 'reconciler.pass.status': line.status, 'reconciler.pass.found': line.found, 'reconciler.pass.changed': line.changed });
      // The daemon's log lines (stdout) written inside an item carry that item's span.
      for (const item of items) {
        const logged = daemon.lines.filter((l) => l.event === 'test:item' && l.key === item.attributes['reconciler.item.key'] && l.attempt === item.attributes['reconciler.item.attempt'] && l.trace_id === item.traceId);
        expect(logged.map((l) => l.span_id)).toEqual([item.spanId]);
      }
    }
    // Its first pass tried every item: the failing ones are errors there too.
    const first = traced().find((p) => p.root.attributes['reconciler.pass.id'] === finished[0]!.passId)!;
    const failed = first.spans.filter((span) => span.name === 'item ticking' && span.status.code === 2).map((span) => span.attributes['reconciler.item.key']);
    expect(failed.sort()).toEqual(['bad', 'flaky']);
  }, 60_000);
});

describe('tracing off (no OTEL_* exporter configured)', () => {
  it('says which environments configure it', () => {
    const endpoint = 'http://127.0.0.1:4318';
    expect(tracingConfigured({})).toBe(false);
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: endpoint })).toBe(true);
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: endpoint })).toBe(true);
    expect(tracingConfigured({ OTEL_TRACES_EXPORTER: 'none' })).toBe(false);
    expect(tracingConfigured({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: endpoint })).toBe(false);
    expect(tracingConfigured({ OTEL_TRACES_EXPORTER: 'console' })).toBe(true);
    expect(tracingConfigured({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: endpoint })).toBe(false);
    expect(tracingConfigured({ OTEL_SDK_DISABLED: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: endpoint })).toBe(true);
  });

  it('loads no OpenTelemetry module and logs no trace ids; on, the same run loads the SDK', async () => {
    const jobs = tracedJobs();
    // Preloaded: records every module the process loads, from Node's loader thread (as test/startup-cost.test.ts does).
    const probe = join(jobs.dir, 'probe.mjs');
    writeFileSync(
      probe,
      `import { register } from 'node:module';\n` +
        `const hooks = 'import { appendFileSync } from "node:fs"; export async function load(url, context, next) { appendFileSync(process.env.LOAD_LOG, url + "\\\\n"); return next(url, context); }';\n` +
        `register('data:text/javascript,' + encodeURIComponent(hooks));\n`,
    );
    const loads = async (name: string, extra: Record<string, string>) => {
      const log = join(jobs.dir, `loads-${name}.log`);
      appendFileSync(log, '');
      rmSync(log);
      const result = await runCli(['run', 'traced'], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info', NODE_OPTIONS: `--import ${probe}`, LOAD_LOG: log, ...extra });
      expect(result.code, result.stderr).toBe(1); // the fixture's failing items
      return { result, urls: readFileSync(log, 'utf8').split('\n').filter((url) => url.startsWith('file:')) };
    };

    const off = await loads('off', {});
    expect(off.urls.filter((url) => url.includes('/node_modules/drizzle-orm/')).length, 'the probe sees the packages loaded').toBeGreaterThan(0);
    expect(off.urls.filter((url) => url.includes('/@opentelemetry/'))).toEqual([]);
    const lines = logLines(off.result.stderr).filter((line) => line.event === 'test:item');
    expect(lines).toHaveLength(3);
    for (const line of lines) expect(Object.keys(line).filter((field) => field === 'trace_id' || field === 'span_id')).toEqual([]);
    expect(receiver.bodies).toEqual([]);

    const on = await loads('on', otel());
    expect(on.urls.filter((url) => url.includes('/node_modules/@opentelemetry/sdk-node/')).length, 'the probe sees the SDK when tracing is on').toBeGreaterThan(0);
  }, 60_000);
});
