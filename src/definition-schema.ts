/**
 * The checks `defineReconciler` makes, as a zod schema: the same library as the
 * configuration's (config.ts), with the same value parsers (`parseDuration`, `parseWholeNumber`).
 * Each message names the option and says what it must be; the first problem is the one
 * reported, with a file's unknown options before its other problems.
 */
import nodeCron from 'node-cron';
import { z } from 'zod';
import { parseDuration, parseWholeNumber } from './duration.js';
import { MAX_PARTITIONS } from './store/partition.js';
import { didYouMean } from './suggest.js';

/** Node's timers hold at most 2^31-1 ms (24.8 days). */
const MAX_TIMER_MS = 24 * 86_400_000;
/** PostgreSQL truncates identifiers, channel names included, to 63 bytes. */
const MAX_CHANNEL_BYTES = 63;

/** A problem with a definition. The loader prefixes the file name. */
export class DefinitionError extends Error {
  override name = 'DefinitionError';
}

type Problem = (value: unknown) => string | undefined;

/** An option checked by `problem`, which says what is wrong with a value (or nothing when it is right). */
const checked = (problem: Problem) =>
  z.unknown().superRefine((value, ctx) => {
    const message = problem(value);
    if (message !== undefined) ctx.addIssue({ code: 'custom', message, input: value });
  });

/** An optional option: absent (or undefined) is fine, anything else is checked. */
const optional = (problem: Problem) => checked(problem).optional();

const fn = (option: string, shape = '') => (value: unknown) => (typeof value === 'function' ? undefined : `\`${option}\` must be a function${shape}, got ${typeof value}`);

const atLeastOne = (option: string) => (value: unknown) =>
  typeof value === 'number' && parseWholeNumber(value, 1) !== undefined ? undefined : `\`${option}\` must be a whole number of at least 1, got ${JSON.stringify(value)}`;

const duration = (option: string, limit?: (ms: number) => boolean, what = '') => (value: unknown) => {
  let ms: number;
  try {
    ms = parseDuration(value);
  } catch (error) {
    return `\`${option}\`: ${(error as Error).message}`;
  }
  return limit === undefined || limit(ms) ? undefined : `\`${option}\` must be ${what}, got ${JSON.stringify(value)}`;
};

/** A timer's duration: above zero, and within what Node's timers hold. */
const timerDuration = (option: string) => duration(option, (ms) => ms > 0 && ms <= MAX_TIMER_MS, 'above zero and at most 24 days');

/** Why `schedule` is not a cron expression of 5 or 6 valid fields, or undefined. */
export function scheduleProblem(schedule: unknown): string | undefined {
  if (typeof schedule !== 'string' || schedule.trim() === '') return '`schedule` is required: a cron expression such as "*/5 * * * *"';
  const fields = schedule.trim().split(/\s+/).length;
  if (fields !== 5 && fields !== 6) return `invalid cron "${schedule}": it has ${fields} fields; use 5 (minute hour day month weekday) or 6 (seconds first)`;
  const result = nodeCron.validateDetailed(schedule);
  if (result.valid) return undefined;
  const reasons = result.errors.map((e) => `${e.field}: ${e.message}`).join('; ');
  return `invalid cron "${schedule}": ${reasons || 'not a cron expression'}`;
}

/** Why `timezone` is not an IANA zone this Node.js knows, or undefined. */
export function timezoneProblem(timezone: unknown): string | undefined {
  try {
    if (typeof timezone !== 'string') throw new RangeError();
    new Intl.DateTimeFormat('en-US', { timeZone: timezone });
    return undefined;
  } catch {
    return `invalid timezone ${JSON.stringify(timezone)}: use an IANA name such as "UTC" or "Europe/Berlin"`;
  }
}

function channelsProblem(wakeOn: unknown): string | undefined {
  if (!Array.isArray(wakeOn)) return `\`wakeOn\` must be a list of notification channels, e.g. ['returns'], got ${JSON.stringify(wakeOn)}`;
  const bad = (wakeOn as unknown[]).find((c) => typeof c !== 'string' || c === '' || c.includes('\u0000') || Buffer.byteLength(c) > MAX_CHANNEL_BYTES);
  if (bad === undefined) return undefined;
  return `\`wakeOn\`: ${JSON.stringify(bad)} is not a notification channel: use a non-empty name of at most ${MAX_CHANNEL_BYTES} bytes, as given to pg_notify()`;
}

function partitionsProblem(value: unknown): string | undefined {
  const problem = atLeastOne('partitions')(value);
  if (problem !== undefined || (value as number) <= MAX_PARTITIONS) return problem;
  return `\`partitions\` must be at most ${MAX_PARTITIONS}, got ${value as number}: more partitions than replicas only adds passes`;
}

const ACTION_NAME = /^[a-z0-9]+(?:-[a-z0-9]+)*$/;

function actionsProblem(actions: unknown): string | undefined {
  if (typeof actions !== 'object' || actions === null || Array.isArray(actions)) {
    return "`actions` must be an object of manual actions by name, e.g. { 'settled-by-hand': { description, run } }";
  }
  for (const [name, action] of Object.entries(actions)) {
    if (!ACTION_NAME.test(name)) return `\`actions\`: ${JSON.stringify(name)} is not an action name: use kebab-case, e.g. settled-by-hand`;
    const a = action as { description?: unknown; run?: unknown } | null;
    if (typeof a !== 'object' || a === null) return `\`actions.${name}\` must be an object: { description, run(key, ctx) }`;
    if (typeof a.description !== 'string' || a.description.trim() === '') return `\`actions.${name}.description\` must be a non-empty string: what the action records`;
    if (typeof a.run !== 'function') return `\`actions.${name}.run\` must be a function (key, ctx) => Promise<string | void>, got ${typeof a.run}`;
    const unknown = Object.keys(a).find((k) => k !== 'description' && k !== 'run');
    if (unknown !== undefined) return `unknown option \`actions.${name}.${unknown}\` (known options: description, run)`;
  }
  return undefined;
}

/**
 * An object of known options: an unknown one is named (with the closest known one), and
 * anything but an object gets `notObject`. `where` prefixes the option names (`retry.`).
 */
function options<Shape extends z.ZodRawShape>(shape: Shape, where: string, notObject: string) {
  const known = Object.keys(shape);
  return z.strictObject(shape, {
    error: (issue) => {
      if (issue.code === 'unrecognized_keys') {
        const option = issue.keys[0]!;
        return `unknown option \`${where}${option}\`${didYouMean(option, known) || ` (known options: ${known.join(', ')})`}`;
      }
      return issue.code === 'invalid_type' ? notObject : undefined;
    },
  });
}

const backoffSchema = options(
  { initial: optional(duration('retry.backoff.initial')), max: optional(duration('retry.backoff.max')) },
  'retry.backoff.',
  '`retry.backoff` must be an object: { initial, max }',
);

const retrySchema = options(
  { maxAttempts: optional(atLeastOne('retry.maxAttempts')), backoff: backoffSchema.optional() },
  'retry.',
  '`retry` must be an object: { maxAttempts, backoff: { initial, max } }',
);

/** Every option of `defineReconciler`, in the order `reconciler` lists them when one is unknown. */
const definitionSchema = options(
  {
    schedule: checked(scheduleProblem),
    timezone: optional(timezoneProblem),
    description: optional((value) => (typeof value === 'string' ? undefined : '`description` must be a string')),
    scan: checked(fn('scan')),
    key: checked(fn('key')),
    reconcile: optional(fn('reconcile')),
    reconcileBatch: optional(fn('reconcileBatch', ' (items, ctx) => Promise<outcomes by key>')),
    batchSize: optional(atLeastOne('batchSize')),
    since: optional(fn('since', ' (item) => Date')),
    concurrency: optional(atLeastOne('concurrency')),
    timeout: optional(timerDuration('timeout')),
    pageSize: optional(atLeastOne('pageSize')),
    retry: retrySchema.optional(),
    maxItemsPerPass: optional(atLeastOne('maxItemsPerPass')),
    maxPassDuration: optional(timerDuration('maxPassDuration')),
    wakeOn: optional(channelsProblem),
    partitions: optional(partitionsProblem),
    actions: optional(actionsProblem),
  },
  '',
  'defineReconciler() needs an object: { schedule, scan, key, reconcile (or reconcileBatch), ... }',
);

const startsWith = (path: readonly PropertyKey[], prefix: readonly PropertyKey[]) => prefix.every((key, i) => path[i] === key);

/** The issues with each object's unknown options moved before the other problems inside that object. */
function unknownOptionsFirst(issues: readonly z.core.$ZodIssue[]): z.core.$ZodIssue[] {
  const ordered: z.core.$ZodIssue[] = [];
  for (const issue of issues) {
    const at = issue.code === 'unrecognized_keys' ? ordered.findIndex((other) => startsWith(other.path, issue.path)) : -1;
    ordered.splice(at < 0 ? ordered.length : at, 0, issue);
  }
  return ordered;
}

/** Throws a DefinitionError naming the first problem of `definition`. */
export function validateDefinition(definition: unknown): void {
  const result = definitionSchema.safeParse(definition);
  if (!result.success) throw new DefinitionError(unknownOptionsFirst(result.error.issues)[0]!.message);
  const { reconcile, reconcileBatch, batchSize } = result.data;
  if (reconcile === undefined && reconcileBatch === undefined) throw new DefinitionError('`reconcile` is required: a function (item, ctx) => outcome; or `reconcileBatch` (items, ctx) => outcomes by key, for set-based work');
  if (reconcile !== undefined && reconcileBatch !== undefined) throw new DefinitionError('define `reconcile` or `reconcileBatch`, not both: the engine would not know which does the work');
  if (batchSize !== undefined && reconcileBatch === undefined) throw new DefinitionError('`batchSize` is for `reconcileBatch`; a reconciler with `reconcile` takes one item at a time');
}
