/**
 * The `reconciler` command line. Every command reuses the engine; none has a second code
 * path. Errors a person can fix print one line on stderr, with no stack trace unless
 * LOG_LEVEL=debug, and exit with a documented code (see `reconciler --help`).
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { ExitCode, UserError, coerceError, errorSummary } from '../errors.js';
import { scrub } from '../secrets.js';
import { printable } from './table.js';
import { parseWholeNumber } from '../duration.js';
import { STATUSES, TRIGGERS } from './commands/choices.js';
// Each command's module (the engine, pg, drizzle, pino, prom-client) is imported when that
// command runs: `--help`, `--version` and a mistyped flag answer in a fraction of the time.
// A command that loads job files has the process made ready for them (tsx, the module hooks:
// `MainOptions.loadJobs`) only once its own modules are loaded, which then load without them.

/** What the process running the CLI provides (bin/reconciler.js). */
export interface MainOptions {
  /** Makes job files loadable (TypeScript, `import … from 'reconciler'`); called before a command that loads them runs. */
  loadJobs?: () => Promise<void>;
}

/** Resolves with a command's module once job files can be loaded. */
type Loading = <T>(module: Promise<T>) => Promise<T>;

const EXIT_CODES = `
Exit codes:
  0  ok
  1  the pass finished with failed items (or broke off)
  2  usage, configuration, job file or database-connection error; an action refused
  3  the pass lease is held by another process (use --wait to wait)`;

function version(): string {
  for (const path of ['../../package.json', '../../../package.json']) {
    try {
      return (JSON.parse(readFileSync(new URL(path, import.meta.url), 'utf8')) as { version: string }).version;
    } catch {
      // try the next layout (src/cli or dist/src/cli)
    }
  }
  return 'unknown';
}

function wholeNumber(value: string): number {
  const n = parseWholeNumber(value, 0, Number.MAX_SAFE_INTEGER);
  if (n === undefined) throw new InvalidArgumentError('expected a whole number (0, 1, 2, …)');
  return n;
}

function positiveInteger(value: string): number {
  const n = parseWholeNumber(value, 1);
  if (n === undefined) throw new InvalidArgumentError('expected a whole number of at least 1');
  return n;
}

/** How commands are added: `command` with the program's error output, `listing` for a list of rows (`[name]`, `--limit`, `--json`). */
interface Builder {
  command(name: string): Command;
  listing(name: string, description: string, rows: string, limit: number, options?: (c: Command) => Command): Command;
}

/** What an operator does about failures: `failures`, `retry`, `clear`, `act`, `audit` (each through src/operator/). */
function addOperatorCommands({ command, listing }: Builder, setExitCode: (code: number) => void, loading: Loading): void {
  listing('failures', 'show passes whose scan throws, then items that are failing (in backoff) or dead; with a key, that item in full', 'items (or groups)', 100, (c) =>
    c
      .argument('[key]', 'one item: its whole error, attempts, error group, manual actions and audit records')
      .option('--group', 'one row per error (normalised), with how many items have it')
      .option('--dead', 'only dead items'),
  ).action(async (name: string | undefined, key: string | undefined, flags) => setExitCode(await (await loading(import('./commands/failures.js'))).failuresCommand(name, key, flags)));
  const change = (verb: 'retry' | 'clear', description: string) =>
    command(verb)
      .description(`${description}; recorded in the audit log (\`reconciler audit\`)`)
      .argument('<name>', 'reconciler name')
      .argument('[key]', 'one item (see `reconciler failures`)')
      .option('--group <id>', 'every item of one error group (see `reconciler failures --group`)')
      .option('--all', 'every failed item of this reconciler')
      .option('--note <text>', 'why, for the audit log')
      .addHelpText('after', '\nGive exactly one target: a key, --group <id> or --all.');
  change('retry', 'make failed or dead items due now, with a fresh attempt budget')
    .action(async (name: string, key: string | undefined, flags) => setExitCode(await (await loading(import('./commands/change.js'))).retryCommand(name, key, flags)));
  change('clear', "forget failed or dead items' failure records (the scan finds them again as new)")
    .action(async (name: string, key: string | undefined, flags) => setExitCode(await (await loading(import('./commands/change.js'))).clearCommand(name, key, flags)));
  command('act')
    .description("run one of a reconciler's manual actions on one item, recorded in the audit log; without a key, list its actions")
    .argument('<name>', 'reconciler name')
    .argument('[key]', 'item key')
    .argument('[action]', 'the manual action (see `reconciler act <name>`)')
    .option('--note <text>', 'why (required to run an action), e.g. "refunded by phone, ticket 4411"')
    .addHelpText('after', '\nExit codes: 0 done (or the list shown); 2 a usage error, an unknown reconciler or action, or the action refused (its reason on stderr).')
    .action(async (name: string, key: string | undefined, action: string | undefined, flags) => setExitCode(await (await loading(import('./commands/act.js'))).actCommand(name, key, action, flags)));
  listing('audit', 'show what people did (retry, clear, manual actions): who, when, on which items, why; newest first', 'entries', 50, (c) =>
    c.option('--key <key>', 'only entries about this item'),
  ).action(async (name: string | undefined, flags) => setExitCode(await (await loading(import('./commands/audit.js'))).auditCommand(name, flags)));
}

function buildProgram(setExitCode: (code: number) => void, loading: Loading): Command {
  const program = new Command('reconciler')
    .description('Runs parameterless background jobs: reconcilers that find missing work in the database and do it idempotently.')
    .version(version(), '-V, --version')
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureOutput({
      outputError: (message, write) => write(`reconciler: ${message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ').trim()} (see \`reconciler --help\`)\n`),
    })
    .addHelpText('after', EXIT_CODES);
  const command = (name: string) => program.command(name).exitOverride().showSuggestionAfterError(true).configureOutput(program.configureOutput());
  /** A command that lists rows of one reconciler, or of all: `[name]`, its own options, `--limit`, `--json`. */
  const listing = (name: string, description: string, rows: string, limit: number, options: (c: Command) => Command = (c) => c) =>
    options(command(name).description(description).argument('[name]', 'only this reconciler'))
      .option('--limit <n>', `how many ${rows}`, positiveInteger, limit)
      .option('--json', 'print JSON');

  command('daemon')
    .description('run every reconciler on its schedule until SIGTERM (waits for the database, then migrates the engine schema)')
    .action(async () => setExitCode(await (await loading(import('../daemon.js'))).runDaemon()));
  command('run')
    .description('run one pass of the named reconcilers now, or of all of them')
    .argument('[names...]', 'reconciler names (file stems under JOBS_DIR)')
    .option('--all', 'run every reconciler')
    .option('--dry-run', 'scan and show what would be done, changing nothing')
    .option('--key <key>', 'reconcile only the item with this key (ignores its backoff)')
    .option('--partition <n>', 'run one partition of a partitioned reconciler (default: each of them, one after another)', wholeNumber)
    .option('--json', 'print JSON lines instead of text (no colour, no progress)')
    .option('--wait', 'if a pass is already running elsewhere, wait for it instead of exiting 3')
    .addHelpText('after', EXIT_CODES)
    .action(async (names: string[], flags) => setExitCode(await (await loading(import('./commands/run.js'))).runCommand(names, flags)));
  command('list')
    .description('show each reconciler: schedule, next run, last pass, since when its passes fail, holder, items in backoff, dead items, whether its scan uses an index; job files that did not load, as rows')
    .option('--json', 'print JSON')
    .action(async (flags) => setExitCode(await (await loading(import('./commands/list.js'))).listCommand(flags)));
  listing('history', 'show recent passes, newest first, with their partition; filtered by status, trigger or partition', 'passes', 50, (c) =>
    c
      .option('--status <status>', `only passes that ended so: ${STATUSES.join(', ')}`)
      .option('--trigger <trigger>', `only passes started so: ${TRIGGERS.join(', ')}`)
      .option('--partition <n>', 'only passes of this partition', wholeNumber),
  ).action(async (name: string | undefined, flags) => setExitCode(await (await loading(import('./commands/history.js'))).historyCommand(name, flags)));
  addOperatorCommands({ command, listing }, setExitCode, loading);
  command('console')
    .description('serve the operator console on its own, against DATABASE_URL (read-only unless CONSOLE_TOKENS is set), until SIGTERM')
    .option('--port <n>', 'port to listen on', (value: string) => {
      const port = parseWholeNumber(value, 0, 65_535);
      if (port === undefined) throw new InvalidArgumentError('expected a port number from 0 to 65535');
      return port;
    }, 8081)
    .option('--host <address>', 'address to listen on (0.0.0.0 for every interface)', '127.0.0.1')
    .action(async (flags) => setExitCode(await (await loading(import('../console/standalone.js'))).consoleCommand(flags)));
  command('migrate')
    .description('apply pending migrations of the engine schema (safe from several replicas at once; waits for the database)')
    .action(async () => setExitCode(await (await import('./commands/migrate.js')).migrateCommand()));
  command('config')
    .description('print the effective configuration, secrets masked')
    .option('--json', 'print JSON')
    .action(async (flags) => setExitCode(await (await import('./commands/config.js')).configCommand(flags)));
  return program;
}

/** Runs the CLI; resolves with the process exit code. */
export async function main(argv: readonly string[], { loadJobs }: MainOptions = {}): Promise<number> {
  let exitCode: number = ExitCode.ok;
  const loading: Loading = async (module) => {
    const loaded = await module;
    await loadJobs?.();
    return loaded;
  };
  const program = buildProgram((code) => (exitCode = code), loading);
  try {
    if (argv.length === 0) {
      program.outputHelp();
      return ExitCode.usage;
    }
    await program.parseAsync([...argv], { from: 'user' });
    return exitCode;
  } catch (thrown) {
    if (thrown instanceof CommanderError) {
      return thrown.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    }
    const error = coerceError(thrown);
    if (error instanceof UserError) {
      // Indented lines (a syntax error's excerpt) belong to the line above them.
      // A refusal may quote what a job file or the database said: no escape sequences reach the terminal.
      for (const line of error.message.split('\n')) process.stderr.write(`${line.startsWith('  ') ? '' : 'reconciler: '}${printable(scrub(line))}\n`);
      return error.exitCode;
    }
    process.stderr.write(`reconciler: ${errorSummary(error, 500)}\n`);
    if (/^(debug|trace)$/.test(process.env.LOG_LEVEL ?? '')) process.stderr.write(`${scrub(error.stack ?? '')}\n`);
    return ExitCode.usage;
  }
}
