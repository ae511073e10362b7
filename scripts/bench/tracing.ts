/**
 * Tracing cost (issue 19): the per-item drain of `batch drain` (one one-row UPDATE per item of
 * `bench_items`, concurrency 10, pages of 1,000) through one engine, with tracing off, on at
 * 100% sampling, and on at 1% sampling, beside the raw per-item loop, in one process and one run.
 *
 * - **off**: no OTEL_* in the environment; `engineTracer()` is undefined and the engine takes no
 *   tracing path.
 * - **on**: the OTEL_* variables are set in `process.env` (the SDK reads them there) and
 *   `startTracing` starts the OpenTelemetry SDK before the drain; after it, `shutdown()` flushes
 *   and stops it and the variables go. Spans are exported over OTLP/HTTP JSON, as a collector
 *   would receive them, to a receiver in a child process (`testkit/otlp.ts`), so that receiving
 *   them costs the measured process nothing. At 1% the sampler is the parent-based trace-id ratio:
 *   a pass and its items are one trace, sampled whole or not at all, so each drain is a series of
 *   passes of at most `passItems` items (`maxItemsPerPass`), and the spans the receiver counted
 *   say how many passes were traced.
 *
 * The sides rotate which goes first from run to run; each drains a few thousand items unmeasured
 * first, so that V8 has compiled its path (the SDK's included).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import { Engine } from '../../src/engine/engine.js';
import { openDatabase } from '../../src/store/database.js';
import { engineTracer, startTracing, type Tracing } from '../../src/tracing/index.js';
import { reconciler } from '../../testkit/engine.js';
import { REPO_ROOT } from '../../testkit/jobs.js';
import { checkDrain, createItems, openSide, PAGE, perItemDefinition, poolSizeFor, resetItems, SPACING, type DrainSide, type Drained, type Shape } from './batch.js';
import { busyPercent, machineCpu, scratchDatabase, silent, stats, type CaseOptions, type CaseResult } from './common.js';

const CASE = 'tracing cost';
const CONCURRENCY = 10;
const NAME = 'bench-traced';

type Side = 'tracing off' | 'tracing on, 100%' | 'tracing on, 1%' | 'raw per-item loop';
/** In this order in the first run; each later run starts one further along. */
const SIDES: readonly Side[] = ['tracing off', 'tracing on, 100%', 'tracing on, 1%', 'raw per-item loop'];

/** What each traced side adds to the environment, beside the exporter's endpoint and protocol. */
const SAMPLERS: Partial<Record<Side, Record<string, string>>> = {
  'tracing on, 100%': { OTEL_TRACES_SAMPLER: 'always_on' },
  'tracing on, 1%': { OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.01' },
};

/** Large enough that the batch span processor never drops a span at 100% (its default is 2,048). */
const QUEUE_SIZE = 100_000;

interface TracedDrain extends Drained {
  passes: number;
}

/** The engine with the per-item reconciler, each pass capped at `passItems` items: a drain is as many passes as that takes. */
async function engineSide(url: string, passItems: number): Promise<{ drain(): Promise<TracedDrain>; close(): Promise<void> }> {
  const database = await openDatabase({ databaseUrl: url, dataDir: '.data', log: silent, poolSize: poolSizeFor(CONCURRENCY) });
  const definition = { ...perItemDefinition(CONCURRENCY), maxItemsPerPass: passItems };
  // A lease long enough that no renewal lands in a drain (renewals come every third of it).
  const engine = new Engine({ db: database.db, control: database.control, reconcilers: [reconciler(NAME, definition, `bench:${NAME}`)], log: silent, leaseMs: 300_000 });
  return {
    drain: async () => {
      const drained = { done: 0, failed: 0, passes: 0 };
      for (;;) {
        const outcome = await engine.requestPass(NAME, { trigger: 'manual' });
        if (!outcome.ran) throw new Error(`${CASE}: a pass did not run (${outcome.reason})`);
        const { counts, complete, error } = outcome.result;
        if (error) throw new Error(`${CASE}: a pass broke off: ${error}`);
        drained.passes++;
        drained.done += counts.changed;
        drained.failed += counts.failed;
        if (complete) return drained; // its scan came to the end: nothing is left
        if (counts.changed + counts.failed === 0) throw new Error(`${CASE}: a pass stopped early without taking an item`);
      }
    },
    close: async () => {
      await engine.stop(5_000);
      await database.close();
    },
  };
}

/** The OTLP receiver in a child process: its URL, and the spans it has counted so far by name. */
interface Sink {
  url: string;
  received(): Promise<Record<string, number>>;
  close(): Promise<void>;
}

/** The child's script: starts the receiver, prints its URL, then its counts for each line read; stops when its stdin ends. */
const SINK_SCRIPT = `
const { startOtlpReceiver } = await import(${JSON.stringify(pathToFileURL(join(REPO_ROOT, 'testkit', 'otlp.ts')).href)});
const receiver = await startOtlpReceiver({ keep: false });
const say = (message) => process.stdout.write(JSON.stringify(message) + '\\n');
say({ url: receiver.url });
let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  for (let end; (end = pending.indexOf('\\n')) >= 0; ) {
    pending = pending.slice(end + 1);
    say({ received: Object.fromEntries(receiver.received) });
  }
});
process.stdin.on('end', () => void receiver.close().then(() => process.exit(0)));
`;

async function startSink(): Promise<Sink> {
  const child: ChildProcess = spawn(process.execPath, ['--import', './bin/register.js', '--input-type=module', '-e', SINK_SCRIPT], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = once(child, 'exit');
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async <T>(): Promise<T> => {
    const line = await lines.next();
    if (line.done) throw new Error(`${CASE}: the OTLP receiver process ended (exit code ${child.exitCode})`);
    return JSON.parse(line.value as string) as T;
  };
  try {
    const { url } = await next<{ url: string }>();
    return {
      url,
      received: async () => {
        child.stdin!.write('counts\n');
        return (await next<{ received: Record<string, number> }>()).received;
      },
      close: async () => {
        child.stdin!.end();
        await exited;
      },
    };
  } catch (error) {
    child.kill();
    throw error;
  }
}

/** Spans counted between two readings of the receiver, by name. */
function difference(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).map(([name, n]) => [name, n - (before[name] ?? 0)]).filter(([, n]) => n !== 0));
}

const total = (counts: Record<string, number>) => Object.values(counts).reduce((sum, n) => sum + n, 0);

/**
 * The SDK's own warnings (diagnostics are routed to the log `startTracing` is given): the batch
 * span processor says "Dropped N spans because maxQueueSize reached", an exporter that cannot
 * reach the receiver says so too. Counted, not printed.
 */
function diagnostics(): { log: pino.Logger; dropped(): number; warnings: string[] } {
  const warnings: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push((JSON.parse(line) as { msg?: string }).msg ?? line) });
  return { log, warnings, dropped: () => warnings.reduce((sum, message) => sum + Number(/Dropped (\d+) spans/.exec(message)?.[1] ?? 0), 0) };
}

/** Turns tracing on for a side: its OTEL_* variables in process.env, then the SDK. */
async function traceFor(side: Side, sink: Sink, log: pino.Logger): Promise<{ tracing: Tracing | undefined; stop(): Promise<void> }> {
  const sampler = SAMPLERS[side];
  if (!sampler) {
    if (engineTracer()) throw new Error(`${CASE}: tracing is still on for the ${side} side`);
    return { tracing: undefined, stop: async () => undefined };
  }
  const env: Record<string, string> = { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_MAX_QUEUE_SIZE: String(QUEUE_SIZE), ...sampler };
  Object.assign(process.env, env);
  const unset = () => {
    for (const name of Object.keys(env)) delete process.env[name];
  };
  try {
    const tracing = await startTracing(log, {}, process.env);
    if (!tracing || !engineTracer()) throw new Error(`${CASE}: tracing did not start for the ${side} side`);
    return {
      tracing,
      stop: async () => {
        try {
          await tracing.shutdown(); // flushes what the batch processor holds
        } finally {
          unset();
        }
      },
    };
  } catch (error) {
    unset();
    throw error;
  }
}

export async function tracingCost({ quick, runs }: CaseOptions): Promise<CaseResult[]> {
  const shape: Shape = quick ? { pending: 400, done: 4_000, poison: 0 } : { pending: 50_000, done: 500_000, poison: 0 };
  const passItems = quick ? 100 : PAGE;
  // The OTEL_* variables this process was started with, if any, are put aside: the "off" side must have none.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => name.startsWith('OTEL_')));
  for (const name of Object.keys(inherited)) delete process.env[name];
  const { log, warnings, dropped } = diagnostics();
  const { database, url, drop } = await scratchDatabase();
  let sink: Sink | undefined;
  const sides = new Map<'engine' | 'raw', { drain(): Promise<Drained | TracedDrain>; close(): Promise<void> }>();
  try {
    await createItems(database, shape);
    sink = await startSink();
    const engine = await engineSide(url, passItems);
    sides.set('engine', engine);
    const raw: DrainSide = await openSide('raw per-item loop', url, CONCURRENCY);
    sides.set('raw', raw);
    const drainer = (side: Side) => (side === 'raw per-item loop' ? raw : engine);

    /** One drain of `side` from a fresh backlog (up to `upTo`), with its tracing on around it; what it measured. */
    const drainOnce = async (side: Side, upTo?: number) => {
      await resetItems(database, false, upTo);
      const trace = await traceFor(side, sink!, log);
      let measured: { drained: Drained | TracedDrain; seconds: number; cpuUs: number; busy: number };
      const before = await sink!.received();
      try {
        const machine = machineCpu();
        const cpu = process.cpuUsage();
        const started = performance.now();
        const drained = await drainer(side).drain();
        const seconds = (performance.now() - started) / 1000;
        const used = process.cpuUsage(cpu);
        measured = { drained, seconds, cpuUs: used.user + used.system, busy: busyPercent(machine, machineCpu()) };
      } finally {
        await trace.stop();
      }
      // The exporter has had its answers (the receiver counts before it answers): every span sent is counted.
      const spans = difference(await sink!.received(), before);
      return { ...measured, spans };
    };

    // Warm-up, unmeasured: each side drains a few thousand items (the traced ones with their tracing on).
    for (const side of SIDES) await drainOnce(side, Math.min(2_000, shape.pending / 10) * SPACING);

    const rate = new Map<Side, number[]>(SIDES.map((side) => [side, []]));
    const cpuPerItem = new Map<Side, number[]>(SIDES.map((side) => [side, []]));
    const spans = new Map<Side, Record<string, number>[]>(SIDES.map((side) => [side, []]));
    const passCounts = new Map<Side, number[]>(SIDES.map((side) => [side, []]));
    let busy = { drains: 0, percent: 0 };
    const droppedBefore = dropped();
    for (let run = 0; run < runs; run++) {
      // Rotate which side goes first (off, 100%, 1%, raw; then 100%, 1%, raw, off; …), so that drift on a shared machine favours none.
      const order = SIDES.map((_, i) => SIDES[(i + run) % SIDES.length]!);
      for (const side of order) {
        const { drained, seconds, cpuUs, busy: percent, spans: received } = await drainOnce(side);
        await checkDrain(database, side === 'raw per-item loop' ? 'raw per-item loop' : 'engine per item', drained, shape, false);
        if ('passes' in drained) passCounts.get(side)!.push(drained.passes);
        if (!SAMPLERS[side] && total(received) > 0) throw new Error(`${CASE}: the ${side} side sent ${total(received)} span(s)`);
        busy = { drains: busy.drains + 1, percent: busy.percent + percent };
        rate.get(side)!.push(shape.pending / seconds);
        cpuPerItem.get(side)!.push(cpuUs / shape.pending);
        spans.get(side)!.push(received);
      }
      // Each run's figures as they come: a full run takes minutes, and the medians hide which run was off.
      process.stderr.write(`[bench] ${CASE} run ${run + 1} of ${runs}: ${order.map((side) => `${side} ${Math.round(rate.get(side)![run]!).toLocaleString('en')} items/s (${Math.round(cpuPerItem.get(side)![run]!)} µs CPU per item)`).join(', ')}\n`);
    }
    const droppedSpans = dropped() - droppedBefore;

    const results: CaseResult[] = [];
    const push = (figure: string, unit: string, samples: number[], goal: string, met: (s: ReturnType<typeof stats>) => boolean) => {
      const s = stats(samples);
      results.push({ case: CASE, figure, unit, ...s, goal, met: met(s) });
    };
    const ratio = (a: Side, b: Side) => rate.get(a)!.map((r, i) => r / rate.get(b)![i]!);
    const cpuBeyondOff = (side: Side) => cpuPerItem.get(side)!.map((us, i) => us - cpuPerItem.get('tracing off')![i]!);
    const itemSpans = (side: Side) => spans.get(side)!.map((counts) => counts[`item ${NAME}`] ?? 0);
    const passSpans = (side: Side) => spans.get(side)!.map((counts) => counts[`pass ${NAME}`] ?? 0);
    const allSpans = (side: Side) => spans.get(side)!.map(total);
    const passesPerDrain = stats(passCounts.get('tracing off')!).median;
    const what = `${shape.pending.toLocaleString('en')} pending among ${shape.done.toLocaleString('en')} done, concurrency ${CONCURRENCY}, passes of ${passItems.toLocaleString('en')} items (${passesPerDrain} per drain)`;
    const load = `machine ${Math.round(busy.percent / busy.drains)}% busy over the drains, load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores`;

    push(`tracing off (${what}; ${load})`, 'items/s', rate.get('tracing off')!, 'the ratios below', () => true);
    push('tracing on, 100% sampling (always_on)', 'items/s', rate.get('tracing on, 100%')!, 'the ratios below', () => true);
    // At 1% a drain is traced in a few passes or none: say which, on the rate's row (a count of 0 is no figure to take a median of).
    const traced1 = passSpans('tracing on, 1%');
    push(
      `tracing on, 1% sampling (parentbased_traceidratio 0.01: a pass and its items traced together; passes traced per drain: ${traced1.join(', ')} of ${passCounts.get('tracing on, 1%')!.join(', ')}, spans received: ${allSpans('tracing on, 1%').map((n) => n.toLocaleString('en')).join(', ')})`,
      'items/s',
      rate.get('tracing on, 1%')!,
      'the ratios below',
      () => true,
    );
    push('raw per-item loop (keyset pages, no passes)', 'items/s', rate.get('raw per-item loop')!, 'the ratios below', () => true);
    push('on at 1% ÷ off', '×', ratio('tracing on, 1%', 'tracing off'), '≥ 0.95×', (s) => s.median >= 0.95);
    push('on at 100% ÷ off', '×', ratio('tracing on, 100%', 'tracing off'), 'reported', () => true);
    // The engine as it is without tracing, against the raw loop: what `batch drain/per-item at concurrency 10` measures, here in capped passes.
    push('off ÷ raw per-item loop', '×', ratio('tracing off', 'raw per-item loop'), '≥ 0.95×, as batch drain\'s per-item goal', (s) => s.median >= 0.95);
    push(`engine CPU per item beyond off's, on at 100% (off: ${stats(cpuPerItem.get('tracing off')!).median} µs)`, 'µs', cpuBeyondOff('tracing on, 100%'), 'reported', () => true);
    push('engine CPU per item beyond off\'s, on at 1%', 'µs', cpuBeyondOff('tracing on, 1%'), 'reported', () => true);
    // At 100% every item's span and every pass's must arrive: none dropped by the batch processor, none lost on the way.
    const passes100 = passCounts.get('tracing on, 100%')!;
    const complete100 = droppedSpans === 0 && itemSpans('tracing on, 100%').every((n) => n === shape.pending) && passSpans('tracing on, 100%').every((n, i) => n === passes100[i]);
    push(
      `spans received per drain, on at 100% (item spans: ${stats(itemSpans('tracing on, 100%')).median} of ${shape.pending.toLocaleString('en')}; pass spans: ${stats(passSpans('tracing on, 100%')).median} of ${stats(passes100).median}; dropped by the SDK: ${droppedSpans}; queue ${QUEUE_SIZE.toLocaleString('en')})`,
      'spans',
      allSpans('tracing on, 100%'),
      'every item\'s and pass\'s span, none dropped',
      () => complete100,
    );
    if (warnings.length > 0) {
      // Each distinct warning once (its first line), with how often it came.
      const distinct = new Map<string, number>();
      for (const warning of warnings) distinct.set(warning.split('\n')[0]!, (distinct.get(warning.split('\n')[0]!) ?? 0) + 1);
      process.stderr.write(`[bench] ${CASE}: the OpenTelemetry SDK warned ${warnings.length} time(s):\n${[...distinct].map(([message, n]) => `  ${n}× ${message}`).join('\n')}\n`);
    }
    return results;
  } finally {
    for (const side of sides.values()) await side.close();
    await sink?.close();
    await drop();
    Object.assign(process.env, inherited);
  }
}
