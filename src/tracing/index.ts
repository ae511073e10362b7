/**
 * OpenTelemetry traces, configured the standard way: the OTEL_* environment variables, read by
 * the OpenTelemetry SDK itself (docs/operations.md, "Traces"). Tracing is on when they name a
 * trace exporter (OTEL_TRACES_EXPORTER other than `none`, or an OTLP endpoint) and
 * OTEL_SDK_DISABLED is not true. Off, nothing of OpenTelemetry is loaded and the engine takes
 * no tracing path at all: `engineTracer()` is undefined and every caller checks that first.
 *
 * Nothing here imports OpenTelemetry at module load; ./otel.ts (the SDK and the spans) is loaded
 * by `startTracing` only when tracing is on.
 */
import type { Logger } from 'pino';
import { coerceError, errorSummary } from '../errors.js';
import { settlesWithin } from '../timeout.js';
import type { DatabaseTarget } from './otel.js';

export type { DatabaseTarget };

/** What a pass, an item or a database step of the engine does with its span. */
export interface EngineSpan {
  /** Adds attributes (values are scrubbed of registered secrets). */
  set(attributes: Record<string, string | number | boolean | undefined>): void;
  /** Marks the span failed with this error: status ERROR, `error.type`, an exception event. */
  fail(error: unknown, type?: string): void;
  end(): void;
}

/** The engine's side of tracing; see ./otel.ts for the OpenTelemetry one. */
export interface EngineTracer {
  /** A span for a pass (a child of whatever is active, usually nothing: a pass starts a trace). */
  pass(name: string, attributes: Record<string, string | number | boolean | undefined>): EngineSpan;
  /** A span for one item (or one batch call), a child of the active span. */
  item(name: string, attributes: Record<string, string | number | boolean | undefined>): EngineSpan;
  /** Runs `fn` with `span` active, so that spans started inside (the reconciler's own, its HTTP calls) are its children. */
  within<T>(span: EngineSpan, fn: () => T): T;
  /** Whether the active span records (its trace is sampled): a pass whose span does not gives its items no spans of their own. */
  recording(): boolean;
  /** Runs `fn` as a database span of the engine's own (`lease`, `scan page`, `record`), ended when it settles. */
  database<T>(operation: string, target: string, fn: () => Promise<T>): Promise<T>;
}

/**
 * Ends `span` with what came of `work`: `describe` adds what its value says (attributes, a
 * failure); a throw fails the span and goes on. The one way every engine span ends.
 */
export async function settleSpan<T>(span: EngineSpan, work: Promise<T>, describe?: (value: T) => void): Promise<T> {
  try {
    const value = await work;
    describe?.(value);
    return value;
  } catch (error) {
    span.fail(error);
    throw error;
  } finally {
    span.end();
  }
}

/** A started tracing SDK: flush and stop it before the process exits. */
export interface Tracing {
  shutdown(): Promise<void>;
}

/** How long an exit waits for the exporter to send the last spans. */
const SHUTDOWN_FLUSH_MS = 5_000;

let tracer: EngineTracer | undefined;
let logFields: (() => Record<string, string>) | undefined;

/** The engine's tracer while tracing is on; undefined when it is off (the engine then skips every tracing step). */
export function engineTracer(): EngineTracer | undefined {
  return tracer;
}

/** `{ tracer }` while tracing is on and the active span records (a sampled pass: see ItemScope.tracer), else `{}`. */
export function sampledTracer(): { tracer?: EngineTracer } {
  return tracer?.recording() ? { tracer } : {};
}

const truthy = (value: string | undefined) => value !== undefined && value.trim() !== '';

/**
 * Whether the OTEL_* environment configures a trace exporter: OTEL_TRACES_EXPORTER names one
 * (other than `none`), or an OTLP endpoint is set (the SDK's default exporter is OTLP), and
 * OTEL_SDK_DISABLED is not `true`.
 */
export function tracingConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '').split(',').map((name) => name.trim().toLowerCase()).filter((name) => name !== '');
  if (exporters.length > 0) return !exporters.every((name) => name === 'none');
  return truthy(env.OTEL_EXPORTER_OTLP_ENDPOINT) || truthy(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

/**
 * The `trace_id` and `span_id` of the active span, for a log line (pino's `mixin`); nothing while
 * tracing is off or outside a span.
 */
export function traceLogFields(): Record<string, string> {
  return logFields?.() ?? {};
}

/**
 * Starts the OpenTelemetry SDK from the OTEL_* environment when it configures an exporter;
 * undefined (and nothing loaded) when it does not. Once per process: a second call returns the
 * first's handle.
 */
let started: Promise<Tracing | undefined> | undefined;
export function startTracing(log: Logger, database: DatabaseTarget = {}, env: NodeJS.ProcessEnv = process.env): Promise<Tracing | undefined> {
  if (!tracingConfigured(env)) return Promise.resolve(undefined);
  started ??= import('./otel.js').then((otel) => {
    const sdk = otel.startSdk(log, env, database);
    tracer = sdk.tracer;
    logFields = sdk.logFields;
    return {
      shutdown: async () => {
        tracer = undefined;
        logFields = undefined;
        started = undefined;
        // The last spans are flushed, for a few seconds at most: a collector that does not answer never holds up an exit.
        const flushed = await settlesWithin(sdk.shutdown().catch((error: unknown) => log.warn({ event: 'tracing:shutdown', err: error }, `could not flush the last spans: ${errorSummary(coerceError(error), 300)}`)), SHUTDOWN_FLUSH_MS, { unref: true });
        if (!flushed) log.warn({ event: 'tracing:shutdown' }, `the trace exporter did not finish within ${SHUTDOWN_FLUSH_MS / 1_000} s; the last spans may be lost`);
      },
    };
  });
  return started;
}
