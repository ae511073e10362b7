/**
 * Real child processes: the CLI and the daemon, as a user runs them. Tests await what
 * the processes print (pino JSON lines), never a fixed sleep.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from './jobs.js';

export const BIN = join(REPO_ROOT, 'bin', 'reconciler.js');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Environment for a child: only what it needs, so the developer's own variables never leak in. */
export function childEnv(env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  // HTTP_PORT=0: daemons started side by side each get a free port for their operations endpoint.
  const base: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, NODE_OPTIONS: '', HTTP_PORT: '0' };
  for (const [key, value] of Object.entries(env)) if (value !== undefined) base[key] = value;
  return base;
}

/** Runs `reconciler …args` to completion. */
export function runCli(
  args: string[],
  env: Record<string, string | undefined>,
  options: { cwd?: string; timeoutMs?: number; /** Run this bash command line instead (for pipes). */ shell?: string; /** Another `reconciler.js` (a build) instead of this checkout's. */ bin?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const [command, argv] = options.shell === undefined ? [process.execPath, [options.bin ?? BIN, ...args]] : ['bash', ['-c', options.shell]];
    const child = spawn(command, argv, { cwd: options.cwd ?? REPO_ROOT, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export interface LogLine {
  level: number;
  msg: string;
  /** What happened, as a name that stays when the wording changes (docs/operations.md, "Log events"). */
  event?: string;
  [field: string]: unknown;
}

/**
 * Matches the log lines of `event` whose `fields` have these values (e.g. `{ reconciler: 'x', trigger: 'schedule' }`):
 * what a wait on another process looks for, instead of the wording of its message.
 */
export function isEvent(event: string, fields: Record<string, unknown> = {}): (line: LogLine) => boolean {
  return (line) => line.event === event && Object.entries(fields).every(([field, value]) => line[field] === value);
}

/** A running `reconciler` process whose JSON log lines can be awaited. */
export class RunningProcess {
  readonly lines: LogLine[] = [];
  readonly stdoutText: string[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly #waiters = new Set<() => void>();

  constructor(readonly child: ChildProcess) {
    let buffer = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const text = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        this.stdoutText.push(text);
        try {
          this.lines.push(JSON.parse(text) as LogLine);
        } catch {
          // not a log line (CLI output)
        }
        for (const wake of this.#waiters) wake();
      }
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString();
      for (const wake of this.#waiters) wake();
    });
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
      resolve({ code, signal });
      for (const wake of this.#waiters) wake();
    }));
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Resolves with the first log line (already seen or future) matching `predicate`. */
  waitFor(predicate: (line: LogLine) => boolean, what: string, timeoutMs = 30_000): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      let exited = false;
      void this.exited.then(() => (exited = true));
      const check = () => {
        const line = this.lines.find(predicate);
        if (line) return done(() => resolve(line));
        if (exited || this.child.exitCode !== null || this.child.signalCode !== null) {
          done(() => reject(new Error(`process exited before: ${what}\nstderr: ${this.stderr}\nstdout: ${this.stdoutText.slice(-20).join('\n')}`)));
        }
      };
      const timer = setTimeout(() => done(() => reject(new Error(`timed out waiting for: ${what}\nstderr: ${this.stderr}\nstdout: ${this.stdoutText.slice(-20).join('\n')}`))), timeoutMs);
      const done = (settle: () => void) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        settle();
      };
      this.#waiters.add(check);
      check();
    });
  }

  /** Resolves with the first line of `event` (already seen or future) whose `fields` match; see `isEvent`. */
  waitForEvent(event: string, fields: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<LogLine> {
    const which = Object.keys(fields).length > 0 ? ` ${JSON.stringify(fields)}` : '';
    return this.waitFor(isEvent(event, fields), `the log event ${event}${which}`, timeoutMs);
  }

  /** The lines of `event` so far whose `fields` match. */
  events(event: string, fields: Record<string, unknown> = {}): LogLine[] {
    return this.lines.filter(isEvent(event, fields));
  }

  /** Sends SIGKILL (if still running) and waits for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited;
  }
}

/**
 * Starts `reconciler …args` (e.g. `daemon`) in the background; with `command`, runs that program
 * with `args` instead; with `bin`, another `reconciler.js` (a build) instead of this checkout's.
 */
export function startProcess(args: string[], env: Record<string, string | undefined>, options: { command?: string; bin?: string } = {}): RunningProcess {
  const [command, argv] = options.command === undefined ? [process.execPath, [options.bin ?? BIN, ...args]] : [options.command, args];
  const child = spawn(command, argv, { cwd: REPO_ROOT, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  return new RunningProcess(child);
}

/** Polls `probe` every `everyMs` until it returns a truthy value, or fails after `timeoutMs` naming `what`. */
export async function until<T>(probe: () => Promise<T | undefined | false>, what: string, timeoutMs = 30_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}
