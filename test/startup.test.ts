/**
 * How a daemon starts and how long it lives: it waits for a database that is not up yet (as
 * in a cluster, where the database often starts after it), gives up with the reason after
 * STARTUP_TIMEOUT, and outlives the shell that started it in the background.
 */
import { existsSync, readFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { jobsDir, tableJob, tableSql } from './helpers/jobs.js';
import { freePort } from './helpers/ports.js';
import { BIN, isEvent, runCli, startProcess, until, useCleanup, type LogLine } from './helpers/processes.js';

let t: TestDatabase;
const { children, dirs } = useCleanup();
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => {
  await t.drop();
});

/** A TCP forwarder on `port` to the test PostgreSQL: "the database comes up" when it starts listening. */
function forwardTo(port: number): Promise<Server> {
  const target = new URL(inject('adminUrl'));
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port || 5432), target.hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
  });
  server.on('close', () => sockets.forEach((socket) => socket.destroy()));
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

function urlThrough(port: number): string {
  const url = new URL(t.url);
  url.host = `127.0.0.1:${port}`;
  return url.toString();
}

const message = (line: LogLine) => String(line.msg);

describe('a database that is not up yet', () => {
  it('is waited for with /readyz failing and /healthz answering, then the daemon starts once it answers', async () => {
    const port = await freePort();
    const jobs = jobsDir({ 'late.ts': tableJob({ table: 'late_items' }) });
    dirs.push(jobs);
    await t.rows(sql.raw(tableSql(2, 'late_items')));
    const daemon = startProcess(['daemon'], { DATABASE_URL: urlThrough(port), JOBS_DIR: jobs.dir, STARTUP_TIMEOUT: '60s', LOG_LEVEL: 'info' });
    children.push(daemon);
    const endpoint = String((await daemon.waitForEvent('http:listening')).url);
    const waiting = await daemon.waitForEvent('database:waiting', { level: 40 });
    expect(message(waiting)).toMatch(/ECONNREFUSED|connect/);
    const ready = await fetch(`${endpoint}/readyz`);
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { checks: { database: { detail: string } } }).checks.database.detail).toContain('waiting for the database');
    expect((await fetch(`${endpoint}/healthz`)).status).toBe(200);

    const proxy = await forwardTo(port);
    try {
      await daemon.waitForEvent('daemon:started', {}, 30_000);
      expect(daemon.events('database:waiting', { level: 40 })).toHaveLength(1); // logged once, not per retry
      expect(daemon.events('database:answers')).not.toHaveLength(0);
      expect((await fetch(`${endpoint}/readyz`)).status).toBe(200);
      daemon.child.kill('SIGTERM');
      expect((await daemon.exited).code).toBe(0);
    } finally {
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it('stops at once on SIGTERM while a connection attempt hangs, exit 0', async () => {
    // A server that accepts connections and never answers: each attempt hangs until its own timeout.
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const port = (silent.address() as { port: number }).port;
      const daemon = startProcess(['daemon'], { DATABASE_URL: urlThrough(port), STARTUP_TIMEOUT: '60s', JOBS_DIR: 'jobs', LOG_LEVEL: 'info' });
      children.push(daemon);
      await daemon.waitForEvent('http:listening');
      daemon.child.kill('SIGTERM');
      expect((await daemon.exited).code).toBe(0);
      expect(daemon.events('daemon:stopped-early').map(message)).toContain('daemon stopped before its database answered');
    } finally {
      silent.close();
    }
  });

  it.each([['daemon'], ['migrate']])('gives up after STARTUP_TIMEOUT with one line naming the reason, exit 2 (`reconciler %s`)', async (command) => {
    const port = await freePort();
    const result = await runCli([command], { DATABASE_URL: urlThrough(port), STARTUP_TIMEOUT: '2s', JOBS_DIR: 'jobs' });
    expect(result.code, result.stderr).toBe(2);
    // The daemon logs to stdout; `migrate` logs its one warning (that it waits) on stderr, above the error.
    const errors = result.stderr.trim().split('\n');
    expect(errors).toHaveLength(command === 'daemon' ? 1 : 2);
    expect(errors.at(-1)).toMatch(/^reconciler: gave up waiting for the database after 2\.0s \(STARTUP_TIMEOUT\): .*(ECONNREFUSED|connect)/);
  });

  it('does not wait for a database that answers with a refusal (no such database): exit 2 at once', async () => {
    const url = new URL(t.url);
    url.pathname = '/reconciler_no_such_database';
    const started = Date.now();
    const result = await runCli(['daemon'], { DATABASE_URL: url.toString(), STARTUP_TIMEOUT: '60s', JOBS_DIR: 'jobs' });
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toContain('reconciler_no_such_database');
    expect(Date.now() - started).toBeLessThan(30_000);
  });
});

describe('a daemon started in the background', () => {
  it('outlives the shell that started it (`nohup … &`), and stops on SIGTERM', async () => {
    const jobs = jobsDir({ 'detached.ts': tableJob({ table: 'detached_items', schedule: '*/1 * * * * *' }) });
    dirs.push(jobs);
    await t.rows(sql.raw(tableSql(1, 'detached_items')));
    const log = join(jobs.dir, 'daemon.log');
    const shell = await runCli([], { DATABASE_URL: t.url, JOBS_DIR: jobs.dir, LOG_LEVEL: 'info' }, { shell: `nohup ${process.execPath} ${BIN} daemon > '${log}' 2>&1 & echo $!` });
    const shellExitedAt = Date.now();
    const pid = Number(shell.stdout.trim());
    const alive = () => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    try {
      const lines = () => (existsSync(log) ? readFileSync(log, 'utf8') : '').split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogLine);
      // A scheduled pass that started more than 2 s after its shell exited: the parent watch (1 s) would have stopped it by then.
      await until(async () => alive() && lines().some((l) => l.trigger === 'schedule' && typeof l.status === 'string' && Number(l.time) > shellExitedAt + 2_000), 'a scheduled pass 2 s after the shell exited', 30_000);
      expect(lines().some(isEvent('daemon:orphaned'))).toBe(false);
      process.kill(pid, 'SIGTERM');
      await until(async () => !alive(), 'the daemon to stop on SIGTERM', 20_000);
      expect(lines().some(isEvent('daemon:stopped'))).toBe(true);
    } finally {
      if (alive()) process.kill(pid, 'SIGKILL');
    }
  });
});
