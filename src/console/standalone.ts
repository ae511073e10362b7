/**
 * `reconciler console [--port] [--host]`: the daemon's console in a process of its own, against
 * DATABASE_URL, with the job files of JOBS_DIR (their schedules and manual actions). It serves
 * until SIGTERM or SIGINT. The embedded database allows one process at a time: while a daemon
 * holds it, its own console (on HTTP_PORT) is the one to use.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ExitCode, UserError, coerceError } from '../errors.js';
import { onStopSignals } from '../signals.js';
import { openContext, type CommandContext } from '../context.js';
import { createConsoleHandler, READ_ONLY } from './server.js';

export interface ConsoleFlags {
  port: number;
  host: string;
}

export const DEFAULT_CONSOLE_PORT = 8081;
export const DEFAULT_CONSOLE_HOST = '127.0.0.1';

/** Opens the database; with the embedded one held by another process, says what to do instead. */
async function open(): Promise<CommandContext> {
  try {
    return await openContext({ jobs: true, logToStdout: true });
  } catch (error) {
    const busy = error instanceof UserError && !process.env.DATABASE_URL ? /^the embedded database in (.*) is (?:in use|locked) by process (\d+)/.exec(error.message) : null;
    if (!busy) throw error;
    throw new UserError(`the embedded database is open in another process (pid ${busy[2]}, in ${busy[1]}): use the daemon's console on its HTTP_PORT, or set DATABASE_URL to a PostgreSQL server both can share`);
  }
}

export async function consoleCommand(flags: ConsoleFlags): Promise<number> {
  const context = await open();
  const { config, log, reconcilers, loadErrors, database } = context;
  try {
    if (config.CONSOLE === 'off') throw new UserError('the console is off (CONSOLE=off): unset CONSOLE, or set it to on');
    const handler = createConsoleHandler({
      log,
      tokens: config.CONSOLE_TOKENS,
      context: () => ({ db: database.db, reconcilers, loadErrors, log }),
      listenHost: flags.host,
      hosts: config.CONSOLE_HOSTS,
    });
    const server = createServer((req, res) => void handler(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(flags.port, flags.host, resolve);
    }).catch((error: unknown) => {
      const reason = (error as NodeJS.ErrnoException).code ?? coerceError(error).message;
      throw new UserError(`cannot serve the console on ${flags.host}:${flags.port} (${reason}): choose another port with --port`);
    });
    const signals = onStopSignals({
      first: (signal) => log.info({ event: 'signal:shutdown', signal }, `${signal}: stopping the console`),
      again: (signal) => log.warn({ event: 'signal:exit-now', signal }, `${signal} again: exiting now`),
    });
    try {
      const { port } = server.address() as AddressInfo;
      const host = flags.host === '0.0.0.0' || flags.host === '::' ? '127.0.0.1' : flags.host.includes(':') ? `[${flags.host}]` : flags.host;
      const url = `http://${host}:${port}`;
      const mode = config.CONSOLE_TOKENS.length ? 'actions need sign-in' : READ_ONLY;
      process.stdout.write(`console on ${url} (${mode})\n`);
      log.info({ event: 'console:listening', url, database: database.target }, `console on ${url} (${mode}), reading ${database.target}`);
      await signals.first;
      await new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
      log.info({ event: 'console:stopped' }, 'console stopped');
      return ExitCode.ok;
    } finally {
      signals.dispose();
    }
  } finally {
    await context.close();
  }
}
