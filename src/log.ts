/**
 * Logging: pino JSON lines, or pino-pretty on a terminal. Every message and error passes
 * through `scrub`, so a password inside an error message never reaches a log line.
 */
import { createRequire } from 'node:module';
import pino, { type Logger } from 'pino';
import type prettyFactory from 'pino-pretty';
import { scrub } from './secrets.js';
import { coerceError, errorSummary } from './errors.js';
import { traceLogFields } from './tracing/index.js';

export type { Logger };

export interface LoggerOptions {
  level: string;
  /** Where lines go instead of fd 1/2 (tests). */
  destination?: NodeJS.WritableStream;
  /** 1 = stdout (the daemon), 2 = stderr (CLI commands, whose stdout is their output). */
  fd: 1 | 2;
  /** Pretty output; defaults to "is that stream a terminal". */
  pretty?: boolean;
  /** Tracing is on: every line written inside a span carries its `trace_id` and `span_id`. */
  traced?: boolean;
}

/** An error as a log field: the explaining message (see errorSummary), its code, and stack frames without the raw message. */
function serializeError(value: unknown): Record<string, unknown> {
  const error = coerceError(value);
  const message = errorSummary(error, 10_000);
  const code = (error as { code?: unknown }).code ?? ((error as { cause?: { code?: unknown } }).cause?.code);
  const frames = (error.stack ?? '').split('\n').filter((line) => /^\s+at /.test(line));
  return { type: error.name, message, ...(typeof code === 'string' ? { code } : {}), stack: scrub([`${error.name}: ${message}`, ...frames].join('\n')) };
}

/** pino-pretty, loaded only for a terminal: a command whose logs go to a pipe or a file does not pay for it at start-up. */
const pretty = () => createRequire(import.meta.url)('pino-pretty') as typeof prettyFactory;

export function createLogger(options: LoggerOptions): Logger {
  const stream = options.fd === 1 ? process.stdout : process.stderr;
  const usePretty = options.pretty ?? Boolean(stream.isTTY);
  const destination = options.destination ?? (usePretty
    ? pretty()({ destination: options.fd, colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,event', singleLine: true, sync: true })
    : pino.destination({ fd: options.fd, sync: true }));
  return pino(
    {
      level: options.level,
      base: { pid: process.pid },
      ...(options.traced ? { mixin: traceLogFields } : {}),
      redact: { paths: ['password', '*.password', 'databaseUrl', '*.databaseUrl', 'apiKey', '*.apiKey', 'headers.authorization'], censor: '[redacted]' },
      serializers: {
        err: serializeError,
      },
      // One mechanism for every field, message, child binding and format argument: scrub the finished line.
      hooks: { streamWrite: (line) => scrub(line) },
    },
    destination,
  );
}
