/**
 * A real PgBouncer (the Debian package `pgbouncer`, which .ci/run installs) in front of the
 * test server, in transaction mode: the pooler most managed PostgreSQL puts in front of an
 * application. Started per test file on a free port, stopped at the end. Missing, it fails the
 * test with the command that installs it: a test never skips because a tool is absent.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './ports.js';

export class PgBouncer {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
    private readonly dir: string,
    /** What it printed, for a failure message. */
    readonly output: string[],
  ) {}

  /** PgBouncer in `mode` in front of the server of `serverUrl` (any database on it, as the URL's user). */
  static async start(serverUrl: string, mode: 'transaction' | 'session' = 'transaction'): Promise<PgBouncer> {
    const binary = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((path) => spawnSync(path, ['--version']).status === 0);
    if (!binary) throw new Error('pgbouncer is not installed: apt-get install pgbouncer (.ci/run does)');
    const server = new URL(serverUrl);
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'pgbouncer-'));
    const config = join(dir, 'pgbouncer.ini');
    writeFileSync(
      config,
      [
        '[databases]',
        // Every database of the server, as the server's user: the client's own user name is not checked (auth_type any).
        `* = host=${server.hostname} port=${server.port || 5432} user=${decodeURIComponent(server.username || 'postgres')}${server.password ? ` password=${decodeURIComponent(server.password)}` : ''}`,
        '[pgbouncer]',
        'listen_addr = 127.0.0.1',
        `listen_port = ${port}`,
        'auth_type = any',
        `pool_mode = ${mode}`,
        'max_client_conn = 1000',
        'default_pool_size = 20',
        'unix_socket_dir =',
        'logfile =',
        'pidfile =',
        '',
      ].join('\n'),
    );
    // It will not run as root; as root, it drops to nobody (the file is world-readable).
    const args = process.getuid?.() === 0 ? ['-u', 'nobody', config] : [config];
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const output: string[] = [];
    const bouncer = new PgBouncer(port, child, dir, output);
    const listening = new Promise<void>((resolve, reject) => {
      const read = (chunk: Buffer) => {
        output.push(...chunk.toString().split('\n').filter(Boolean));
        if (output.some((line) => line.includes('process up'))) resolve();
      };
      child.stdout!.on('data', read);
      child.stderr!.on('data', read);
      child.once('exit', (code) => reject(new Error(`pgbouncer exited with ${code} before it was up:\n${output.join('\n')}`)));
    });
    try {
      await listening;
      // Up and forwarding: a query through it answers.
      const client = new pg.Client({ connectionString: bouncer.url(server.pathname.slice(1) || 'postgres') });
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
    } catch (error) {
      await bouncer.stop();
      throw error;
    }
    return bouncer;
  }

  /** A connection string to `database` through the pooler. */
  url(database: string): string {
    return `postgres://app@127.0.0.1:${this.port}/${database}`;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGINT'); // immediate shutdown
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
