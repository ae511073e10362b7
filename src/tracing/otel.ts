/**
 * The OpenTelemetry side of tracing, loaded only when tracing is on (./index.ts): the Node SDK,
 * configured by the OTEL_* environment as the SDK reads it (exporter, protocol, endpoint,
 * headers, sampler, batch processor, resource), and the engine's spans on top of it.
 *
 * Span names and attributes follow the semantic conventions where one exists (`db.*`,
 * `server.*`, `error.type`); the engine's own are under `reconciler.*`. Every string value is
 * scrubbed of registered secrets (the database password, the provider key, OTLP header values)
 * before it reaches a span.
 */
import { context, diag, DiagLogLevel, propagation, SpanKind, SpanStatusCode, trace, type Attributes, type Span } from '@opentelemetry/api';
import { logs } from '@opentelemetry/api-logs';
import { NodeSDK } from '@opentelemetry/sdk-node';
import type { Logger } from 'pino';
import { coerceError, errorSummary } from '../errors.js';
import { registerSecret, scrub } from '../secrets.js';
import { settleSpan, type EngineSpan, type EngineTracer } from './index.js';

/** Where the engine's database is, for the `db.*` and `server.*` attributes of its database spans (never its credentials). */
export interface DatabaseTarget {
  /** `db.namespace`: the database's name. */
  name?: string;
  host?: string;
  port?: number;
}

const TRACER_NAME = 'reconciler';

/** Attribute values as spans take them: strings scrubbed, undefined dropped. */
function attributesOf(values: Record<string, string | number | boolean | undefined>): Attributes {
  const out: Attributes = {};
  for (const [name, value] of Object.entries(values)) {
    if (value === undefined) continue;
    out[name] = typeof value === 'string' ? scrub(value) : value;
  }
  return out;
}

/** An error's `error.type`: its code when it has one (ECONNRESET, 40001), else its class name. */
export function errorType(error: Error): string {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' && code !== '' ? code : error.name || 'Error';
}

class OtelSpan implements EngineSpan {
  constructor(readonly span: Span) {}

  set(attributes: Record<string, string | number | boolean | undefined>): void {
    this.span.setAttributes(attributesOf(attributes));
  }

  fail(thrown: unknown, type?: string): void {
    const error = coerceError(thrown);
    const message = scrub(errorSummary(error, 1_000));
    this.span.setAttribute('error.type', type ?? errorType(error));
    this.span.setStatus({ code: SpanStatusCode.ERROR, message });
    // The exception event, scrubbed: recordException() would copy the raw message and stack.
    this.span.addEvent('exception', { 'exception.type': error.name, 'exception.message': message, 'exception.stacktrace': scrub((error.stack ?? '').split('\n').filter((line) => /^\s+at /.test(line)).join('\n')) });
  }

  end(): void {
    this.span.end();
  }
}

/** OTLP header values (`api-key=…`) are secrets: they never reach a log line or a span. */
function registerHeaderSecrets(env: NodeJS.ProcessEnv): void {
  for (const name of ['OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS']) {
    for (const pair of (env[name] ?? '').split(',')) {
      const value = pair.slice(pair.indexOf('=') + 1).trim();
      if (pair.includes('=') && value !== '') {
        registerSecret(value);
        try {
          registerSecret(decodeURIComponent(value));
        } catch {
          // not percent-encoded
        }
      }
    }
  }
}

/** The SDK's own complaints (an exporter that cannot reach its collector), in our log at warn unless OTEL_LOG_LEVEL asks for more. */
function routeDiagnostics(log: Logger, env: NodeJS.ProcessEnv): void {
  if (env.OTEL_LOG_LEVEL) return; // the SDK sets its own console logger at that level
  const to = (level: 'warn' | 'error') => (message: string, ...args: unknown[]) => log[level]({ event: 'tracing:diagnostic' }, `OpenTelemetry: ${scrub([message, ...args.map((a) => (a instanceof Error ? errorSummary(a, 300) : typeof a === 'string' ? a : JSON.stringify(a)))].join(' '))}`);
  const quiet = () => undefined;
  diag.setLogger({ error: to('error'), warn: to('warn'), info: quiet, debug: quiet, verbose: quiet }, DiagLogLevel.WARN);
}

/** Starts the SDK from the environment; the engine's tracer, the log fields, and the shutdown that flushes. */
export function startSdk(log: Logger, env: NodeJS.ProcessEnv, database: DatabaseTarget = {}): { tracer: EngineTracer; logFields: () => Record<string, string>; shutdown: () => Promise<void> } {
  registerHeaderSecrets(env);
  routeDiagnostics(log, env);
  // service.name: OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES when they say it, else "reconciler" (not the SDK's "unknown_service:node").
  const named = Boolean(env.OTEL_SERVICE_NAME?.trim()) || /(?:^|,)\s*service\.name\s*=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '');
  // Traces only: the SDK would also export metrics and logs over OTLP by default (we have /metrics and pino for those).
  const sdk = new NodeSDK({ instrumentations: [], metricReaders: [], logRecordProcessors: [], ...(named ? {} : { serviceName: 'reconciler' }) });
  sdk.start();
  const tracer = trace.getTracer(TRACER_NAME);
  const databaseAttributes = attributesOf({ 'db.system.name': 'postgresql', 'db.namespace': database.name, 'server.address': database.host, 'server.port': database.port });

  const engineTracer: EngineTracer = {
    pass: (name, attributes) => new OtelSpan(tracer.startSpan(name, { kind: SpanKind.INTERNAL, attributes: attributesOf(attributes), root: true })),
    item: (name, attributes) => new OtelSpan(tracer.startSpan(name, { kind: SpanKind.INTERNAL, attributes: attributesOf(attributes) })),
    within: (span, fn) => context.with(trace.setSpan(context.active(), (span as OtelSpan).span), fn),
    recording: () => trace.getSpan(context.active())?.isRecording() ?? false,
    database: (operation, target, fn) =>
      tracer.startActiveSpan(`${operation} ${target}`, { kind: SpanKind.CLIENT, attributes: { ...databaseAttributes, 'db.operation.name': operation, 'db.collection.name': target } }, (span) => settleSpan(new OtelSpan(span), fn())),
  };

  const logFields = (): Record<string, string> => {
    const spanContext = trace.getSpan(context.active())?.spanContext();
    return spanContext && trace.isSpanContextValid(spanContext) ? { trace_id: spanContext.traceId, span_id: spanContext.spanId } : {};
  };

  return {
    tracer: engineTracer,
    logFields,
    shutdown: async () => {
      try {
        await sdk.shutdown(); // flushes what the batch processor holds
      } finally {
        // The globals go too, so that tracing can start again in this process (tests, benchmarks).
        trace.disable();
        context.disable();
        propagation.disable();
        logs.disable();
        diag.disable();
      }
    },
  };
}
