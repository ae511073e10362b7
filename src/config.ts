/**
 * Configuration: every environment variable is parsed and validated once, at start.
 * A bad value is reported as one line per variable (exit 2), never discovered at 3 a.m.
 */
import { z } from 'zod';
import { durationText, parseDuration, parseWholeNumber } from './duration.js';
import { UserError } from './errors.js';
import { describeUrl } from './secrets.js';
import { consoleTokens } from './console/tokens.js';
import { consoleHosts } from './console/hosts.js';
import { DEFAULT_ENGINE_SCHEMA, engineSchemaProblem } from './store/schema.js';

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const duration = (fallback: string, min: number, max: number) =>
  z
    .string()
    .default(fallback)
    .transform((value, ctx) => {
      try {
        const ms = parseDuration(value.trim());
        if (ms < min || ms > max) {
          ctx.addIssue({ code: 'custom', message: `must be between ${min / 1000}s and ${max / 1000}s, got ${value}` });
          return z.NEVER;
        }
        return ms;
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: (error as Error).message });
        return z.NEVER;
      }
    });

/** Digits only: `z.coerce.number` would take '' as 0 and '0x50' as 80. */
const wholeNumber = (min: number, max: number, what: string, fallback: string) =>
  z
    .string()
    .default(fallback)
    .refine((value) => parseWholeNumber(value, min, max) !== undefined, { message: `must be ${what}` })
    .transform(Number);

const databaseUrl = z
  .string()
  .optional()
  .transform((value, ctx) => {
    if (value === undefined || value.trim() === '') return undefined;
    let parsed: URL;
    try {
      parsed = new URL(value);
    } catch {
      ctx.addIssue({ code: 'custom', message: 'is not a URL; expected one like postgres://user@host:5432/database (with the password after the user name)' });
      return z.NEVER;
    }
    if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
      ctx.addIssue({ code: 'custom', message: `has scheme "${parsed.protocol}"; expected postgres:// or postgresql://` });
      return z.NEVER;
    }
    return value;
  });

/** The engine's schema: see engineSchemaProblem() for what it may be named. */
const schemaName = z
  .string()
  .default(DEFAULT_ENGINE_SCHEMA)
  .superRefine((value, ctx) => {
    const problem = engineSchemaProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });

/** The variables, their defaults and meaning. docs/configuration.md mirrors this table. */
export const configSchema = z.object({
  /** PostgreSQL connection string. Unset: the embedded database under DATA_DIR. */
  DATABASE_URL: databaseUrl,
  /**
   * A direct connection to the same database for the LISTEN session, when DATABASE_URL goes
   * through a pooler in transaction mode (which passes NOTIFY on, but not LISTEN).
   */
  LISTEN_DATABASE_URL: databaseUrl,
  /** Where the embedded database lives when DATABASE_URL is unset. */
  DATA_DIR: z.string().min(1).default('.data'),
  /** The PostgreSQL schema that holds the engine's tables and functions, and nothing else. */
  RECONCILER_SCHEMA: schemaName,
  /** The folder whose files are the reconcilers. */
  JOBS_DIR: z.string().min(1).default('jobs'),
  LOG_LEVEL: z.enum(LOG_LEVELS, { message: `must be one of ${LOG_LEVELS.join(', ')}` }).default('info'),
  /** How long pass history is kept. */
  HISTORY_RETENTION: duration('14d', 60_000, 3_650 * 86_400_000),
  /** Pass lease length: a dead holder is taken over at most this long after it stopped renewing. (LOCK_TTL is its deprecated old name.) */
  LEASE_TTL: duration('15s', 1_000, 30_000),
  /** How long in-flight items may finish after SIGTERM before they are aborted. */
  SHUTDOWN_TIMEOUT: duration('25s', 0, 3_600_000),
  /** Address of the operations endpoint (/healthz, /readyz, /metrics). */
  HTTP_HOST: z.string().min(1).default('0.0.0.0'),
  /** Port of the operations endpoint; 0 picks a free one (logged). */
  HTTP_PORT: wholeNumber(0, 65_535, 'a port number from 0 to 65535', '8080'),
  /** /healthz fails when the event loop was blocked longer than this. */
  HEALTH_MAX_EVENT_LOOP_LAG: duration('5s', 100, 600_000),
  /**
   * /healthz fails when the daemon cannot do its own work this long while its database answers:
   * its pools hand out no connection, or a due tick gets no answer. A database outage does not count.
   */
  HEALTH_MAX_STALL: duration('2m', 1_000, 3_600_000),
  /** How long the daemon waits for an unreachable database at start (readiness fails meanwhile) before it exits 2. */
  STARTUP_TIMEOUT: duration('60s', 0, 3_600_000),
  /** The daemon waits a random time up to this before scheduling, to spread replicas that start together. */
  STARTUP_JITTER: duration('0', 0, 600_000),
  /**
   * Longest wait for the answer to one query (PostgreSQL only): a connection whose answer is lost
   * (a network that stalls without closing) is closed after this, and the pool opens another.
   */
  DATABASE_QUERY_TIMEOUT: duration('60s', 1_000, 3_600_000),
  /** Database connections per process (PostgreSQL only). */
  DATABASE_POOL_SIZE: wholeNumber(2, 200, 'a whole number from 2 to 200', '10'),
  /** Wake-on-change: notifications within this window after the first start one pass, not one each. */
  WAKE_DEBOUNCE: duration('100ms', 0, 60_000),
  /** The operator console at `/` of the operations endpoint (and `reconciler console`): `on` or `off`. */
  CONSOLE: z.enum(['on', 'off'], { message: 'must be on or off' }).default('on'),
  /** `name:token` pairs, comma-separated: who may act in the console. Unset: the console is read-only. */
  CONSOLE_TOKENS: consoleTokens,
  /**
   * The `Host` names the console answers, comma-separated (a port is ignored); others get 421.
   * Unset: a console bound to loopback answers localhost, 127.0.0.1 and [::1]; one bound to every address answers any.
   */
  CONSOLE_HOSTS: consoleHosts,
});

export type Config = z.output<typeof configSchema>;

/** Old names still read, each with the variable that replaced it. */
const DEPRECATED_NAMES: Readonly<Record<string, keyof Config>> = { LOCK_TTL: 'LEASE_TTL' };

/** One warning line for each deprecated variable set in `env`, for the log (or stderr) at start. */
export function deprecationWarnings(env: NodeJS.ProcessEnv = process.env): string[] {
  return Object.entries(DEPRECATED_NAMES)
    .filter(([old]) => env[old] !== undefined)
    .map(([old, name]) => `${old} is deprecated: set ${name} instead (${env[name] === undefined ? `${old}'s value is used` : `${name} is set, and wins`})`);
}

/** `env` with each deprecated variable read under its new name, unless the new one is set too. */
function renamed(env: NodeJS.ProcessEnv): { env: NodeJS.ProcessEnv; from: Map<string, string> } {
  const from = new Map<string, string>();
  const out = { ...env };
  for (const [old, name] of Object.entries(DEPRECATED_NAMES)) {
    if (env[old] === undefined || env[name] !== undefined) continue;
    out[name] = env[old];
    from.set(name, old);
  }
  return { env: out, from };
}

/** Variables whose value a message never shows: passwords, tokens. */
const HIDDEN_VALUES = new Set(['DATABASE_URL', 'LISTEN_DATABASE_URL', 'CONSOLE_TOKENS']);

/** Parses the environment; throws one UserError listing each bad variable on its own line. */
export function loadConfig(given: NodeJS.ProcessEnv = process.env): Config {
  const { env, from } = renamed(given);
  const result = configSchema.safeParse(env);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => {
      const parsed = String(issue.path[0] ?? 'environment');
      const name = from.get(parsed) ?? parsed; // the variable the user set
      const shown = HIDDEN_VALUES.has(name) ? '' : env[name] === undefined ? '' : ` (got ${JSON.stringify(env[name])})`;
      return `invalid ${name}${shown}: ${issue.message}`;
    });
    throw new UserError(lines.join('\n'));
  }
  if (result.data.DATABASE_URL) describeUrl(result.data.DATABASE_URL); // registers its password as a secret
  if (result.data.LISTEN_DATABASE_URL) describeUrl(result.data.LISTEN_DATABASE_URL);
  if (result.data.LISTEN_DATABASE_URL && !result.data.DATABASE_URL) {
    throw new UserError('invalid LISTEN_DATABASE_URL: it is set but DATABASE_URL is not; it is the direct connection for notifications beside DATABASE_URL (the embedded database needs neither)');
  }
  if (env.NODE_ENV === 'production' && !result.data.DATABASE_URL) {
    throw new UserError('invalid DATABASE_URL: it is required when NODE_ENV=production (the embedded database is for trying reconciler out, one process at a time)');
  }
  return result.data;
}

/** The effective configuration with secrets masked, for `reconciler config` and start-up logs. */
export function redactedConfig(config: Config, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  return {
    DATABASE_URL: config.DATABASE_URL ? describeUrl(config.DATABASE_URL) : `(unset: the embedded database in ${config.DATA_DIR})`,
    LISTEN_DATABASE_URL: config.LISTEN_DATABASE_URL ? describeUrl(config.LISTEN_DATABASE_URL) : '(unset: notifications are listened for through DATABASE_URL)',
    DATA_DIR: config.DATA_DIR,
    RECONCILER_SCHEMA: config.RECONCILER_SCHEMA,
    JOBS_DIR: config.JOBS_DIR,
    LOG_LEVEL: env.LOG_LEVEL === undefined ? 'info for the daemon, warn for other commands (unset)' : config.LOG_LEVEL,
    HISTORY_RETENTION: durationText(config.HISTORY_RETENTION),
    LEASE_TTL: durationText(config.LEASE_TTL),
    SHUTDOWN_TIMEOUT: durationText(config.SHUTDOWN_TIMEOUT),
    HTTP_HOST: config.HTTP_HOST,
    HTTP_PORT: String(config.HTTP_PORT),
    HEALTH_MAX_EVENT_LOOP_LAG: durationText(config.HEALTH_MAX_EVENT_LOOP_LAG),
    HEALTH_MAX_STALL: durationText(config.HEALTH_MAX_STALL),
    STARTUP_TIMEOUT: durationText(config.STARTUP_TIMEOUT),
    STARTUP_JITTER: durationText(config.STARTUP_JITTER),
    DATABASE_POOL_SIZE: String(config.DATABASE_POOL_SIZE),
    DATABASE_QUERY_TIMEOUT: durationText(config.DATABASE_QUERY_TIMEOUT),
    WAKE_DEBOUNCE: durationText(config.WAKE_DEBOUNCE),
    CONSOLE: config.CONSOLE,
    CONSOLE_TOKENS: config.CONSOLE_TOKENS.length ? `${config.CONSOLE_TOKENS.map((t) => t.name).join(', ')} (tokens hidden)` : '(unset: the console is read-only)',
    CONSOLE_HOSTS: config.CONSOLE_HOSTS ? config.CONSOLE_HOSTS.join(', ') : '(unset: any host, or only localhost when bound to loopback)',
  };
}
