/**
 * 7. Secrets: canary values in DATABASE_URL's password and in PAYMENT_PROVIDER_KEY, through a
 * daemon at debug level, provider faults, every CLI command, failing connections and the
 * operations endpoint. Neither may appear in any log line, metric, CLI output or row.
 */
import { sql } from 'drizzle-orm';
import { queryRows } from '../../src/store/database.js';
import { seedReturns } from '../../examples/returns/src/seed.js';
import { Stage, converge } from './harness.js';
import type { CaseOutcome } from './bad-input.js';

export async function secrets(stage: Stage, seed: number, quick: boolean): Promise<CaseOutcome> {
  const dbCanary = `pw-Canary-${seed}-q8Zt`;
  const keyCanary = `sk_live_Canary_${seed}_Xk2w`;
  const shop = await stage.shop(quick ? 100 : 500, seed);
  const provider = await stage.provider(seed, { errorRate: 0.3, timeoutRate: 0.05, declineRate: 0.02, latencyMs: [5, 20] }, keyCanary);
  const withPassword = (url: string) => {
    const u = new URL(url);
    u.username = 'postgres';
    u.password = dbCanary;
    return u.toString();
  };
  const env = stage.env(withPassword(shop.url), provider, stage.jobs('*/2 * * * * *'), { LOG_LEVEL: 'debug' });
  const outputs: { where: string; text: string }[] = [];
  const exits: string[] = [];
  /** Runs a command and keeps its output; `expected` are its exit codes, so a command that fails early cannot pass unseen. */
  const cli = async (args: string[], expected: number | number[], extra: Record<string, string> = {}) => {
    const result = await stage.run(args, { ...env, ...extra });
    outputs.push({ where: `reconciler ${args.join(' ')}`, text: result.stdout + result.stderr });
    if (![expected].flat().includes(result.code ?? -1)) exits.push(`\`reconciler ${args.join(' ')}\` exited ${result.code ?? result.signal}, expected ${expected}: ${result.stderr.slice(0, 200)}`);
  };

  const daemon = stage.daemon(env);
  const ops = String((await daemon.waitForEvent('http:listening', {}, 30_000)).url);
  await converge(shop.database, provider, 120_000);
  for (const path of ['/metrics', '/readyz', '/healthz']) outputs.push({ where: `GET ${path}`, text: await (await fetch(`${ops}${path}`)).text() });

  const commands: [string[], number][] = [[['list'], 0], [['list', '--json'], 0], [['history'], 0], [['history', 'settle-returns', '--json'], 0], [['failures'], 0], [['failures', '--json'], 0],
    [['config'], 0], [['config', '--json'], 0], [['run', 'nope'], 2], [['retry', 'settle-returns', '--all'], 0], [['migrate'], 0]];
  for (const [args, expected] of commands) await cli(args, expected, { LOG_LEVEL: 'debug' });
  // Passes may find declined (dead) returns: exit 0 or 1 both print everything there is to print.
  for (const args of [['run', 'settle-returns', '--dry-run'], ['run', 'settle-returns', '--json', '--wait']]) await cli(args, [0, 1], { LOG_LEVEL: 'debug' });
  // Failing connections, whose errors are where secrets leak: a refused port, a database that does not exist, a provider that is down.
  const refused = new URL(withPassword(shop.url));
  refused.port = '1';
  await cli(['list'], 2, { DATABASE_URL: refused.toString() });
  const missing = new URL(withPassword(shop.url));
  missing.pathname = '/no_such_database';
  await cli(['run', 'settle-returns'], 2, { DATABASE_URL: missing.toString() });
  // The daemon stops first: it would settle the new returns before the run with the provider down could fail on them.
  await daemon.kill('SIGTERM');
  outputs.push({ where: 'the daemon', text: daemon.stdoutText.join('\n') + daemon.stderr });
  await seedReturns(shop.database.db, 10, seed + 1);
  await cli(['run', 'settle-returns', '--json'], 1, { PAYMENT_PROVIDER_URL: 'http://127.0.0.1:1/v1', LOG_LEVEL: 'debug' });
  await cli(['failures', '--json'], 0);

  const tables = await queryRows<{ name: string }>(shop.database.db, sql`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public'`);
  for (const { name } of tables) {
    const [row] = await queryRows<{ text: string | null }>(shop.database.db, sql.raw(`SELECT string_agg(t::text, E'\\n') AS text FROM "${name}" t`));
    outputs.push({ where: `table ${name}`, text: row?.text ?? '' });
  }

  const failures: string[] = [...exits];
  // As given, URL-encoded, in HTTP Basic auth (base64 of user:password), and a telling prefix of each.
  const forms = [dbCanary, keyCanary, encodeURIComponent(dbCanary), Buffer.from(`postgres:${dbCanary}`).toString('base64'), Buffer.from(`${keyCanary}:`).toString('base64'), dbCanary.slice(0, 12), keyCanary.slice(0, 14)];
  for (const { where, text } of outputs) {
    if (forms.some((form) => text.includes(form))) failures.push(`a canary appears in: ${where}`);
  }
  const bytes = outputs.reduce((sum, o) => sum + o.text.length, 0);
  return { failures, figures: { places: outputs.length, bytesSearched: bytes, logLines: daemon.lines.length } };
}
