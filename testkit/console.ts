/**
 * The console's fixtures: job files in the states an operator meets at 3 a.m. (a job whose items
 * die, one whose scan throws, one that is fine, and hostile strings in keys and errors), the
 * canary secrets that must appear on no page, and a headless Chromium for the browser test and
 * the screenshots. Vitest-free, like the rest of testkit/.
 */
import { chromium, type Browser } from 'playwright-core';
import { API, jobsDir, type JobsDir } from './jobs.js';
import { startProcess, type RunningProcess } from './processes.js';

/** A key and an error message that would run script if a page inserted them as markup. */
export const XSS_KEY = '<script>window.__xss = "key"</script>';
export const XSS_ERROR = '<img src=x onerror="window.__xss = \'error\'">';

/** The manual action of the `shipments` fixture: the operator says the parcel went out by hand. */
export const MANUAL_ACTION = 'shipped-by-hand';

/** Secrets that must appear on no page: the database password, a console token, a provider key. */
export const CANARY = {
  databasePassword: 'canary-db-pw-7f3a91',
  consoleToken: 'canary-console-token-5b2e88c4',
  providerKey: 'sk_live_canary_provider_d41d8c',
} as const;

/** The tables the fixture jobs work on, with rows in the states the console shows. */
export const CONSOLE_FIXTURE_SQL = `
CREATE TABLE shipments (id serial PRIMARY KEY, name text NOT NULL, ordered_at timestamptz NOT NULL, shipped boolean NOT NULL DEFAULT false, shipped_by text);
INSERT INTO shipments (name, ordered_at) VALUES ('order-1001', now() - interval '3 hours'), ('order-1002', now() - interval '2 hours'), ('order-1003', now() - interval '40 minutes'), (${sqlText(XSS_KEY)}, now() - interval '5 minutes');
CREATE TABLE invoices (id serial PRIMARY KEY, name text NOT NULL, sent boolean NOT NULL DEFAULT false);
INSERT INTO invoices (name) SELECT 'invoice-' || n FROM generate_series(1, 5) AS n;
`;

function sqlText(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

/**
 * shipments: every item dies at its first failure (the carrier refuses it); the hostile key's
 * error is hostile markup. Its manual action marks a shipment as sent by hand, so that the scan
 * stops finding it. Runs every second.
 */
export function shipmentsJob(schedule = '*/1 * * * * *'): string {
  return `
import { defineReconciler, sql } from ${JSON.stringify(API)};
export default defineReconciler({
  schedule: ${JSON.stringify(schedule)},
  description: 'books a carrier for every order not shipped yet',
  retry: { maxAttempts: 1 },
  scan: async ({ db, after, limit }) => (await db.execute(sql\`SELECT id, name, ordered_at FROM shipments WHERE NOT shipped AND id > \${after?.id ?? 0} ORDER BY id LIMIT \${limit}\`)).rows,
  key: (item) => item.name,
  since: (item) => new Date(item.ordered_at),
  reconcile: async (item) => {
    if (item.name === ${JSON.stringify(XSS_KEY)}) throw new Error(${JSON.stringify(XSS_ERROR)});
    throw new Error('carrier refused the booking for ' + item.name + ': 422 address incomplete');
  },
  actions: {
    ${JSON.stringify(MANUAL_ACTION)}: {
      description: 'record that the parcel was booked and sent by hand',
      run: async (key, ctx) => {
        const updated = await ctx.db.execute(sql\`UPDATE shipments SET shipped = true, shipped_by = \${ctx.actor} WHERE name = \${key} AND NOT shipped RETURNING id\`);
        if (updated.rows.length === 0) throw new Error(key + ' is already shipped');
        return key + ' marked as shipped by hand';
      },
    },
  },
});
`;
}

/** invoices: its scan throws, with the database URL (password included) and a provider key in the message: both must be masked. */
export function invoicesJob(schedule = '*/1 * * * * *'): string {
  return `
import { defineReconciler, registerSecret } from ${JSON.stringify(API)};
registerSecret(process.env.PAYMENT_PROVIDER_KEY);
export default defineReconciler({
  schedule: ${JSON.stringify(schedule)},
  description: 'sends the invoices of shipped orders',
  scan: async () => {
    throw new Error('invoice queue unreadable: relation "invoice_queue" does not exist (via ' + process.env.DATABASE_URL + ' with key ' + process.env.PAYMENT_PROVIDER_KEY + ')');
  },
  key: (item) => String(item),
  reconcile: async () => 'unchanged',
});
`;
}

/** invoices-sent: a healthy reconciler that finds nothing left to do after its first pass. */
export function healthyJob(schedule = '*/2 * * * * *'): string {
  return `
import { defineReconciler, sql } from ${JSON.stringify(API)};
export default defineReconciler({
  schedule: ${JSON.stringify(schedule)},
  description: 'marks invoices sent',
  scan: async ({ db, after, limit }) => (await db.execute(sql\`SELECT id, name FROM invoices WHERE NOT sent AND id > \${after?.id ?? 0} ORDER BY id LIMIT \${limit}\`)).rows,
  key: (item) => item.name,
  reconcile: async (item, ctx) => {
    await ctx.db.execute(sql\`UPDATE invoices SET sent = true WHERE id = \${item.id}\`);
    return 'changed';
  },
});
`;
}

/** The fixture job files, by file name. */
export function consoleJobFiles(): Record<string, string> {
  return { 'shipments.ts': shipmentsJob(), 'invoices.ts': invoicesJob(), 'invoices-sent.ts': healthyJob() };
}

/** The environment of a daemon serving the console with actions on (token name `oncall`) and the canaries set. */
export function consoleEnv(databaseUrl: string, jobsDir: string): Record<string, string> {
  const url = new URL(databaseUrl);
  url.password = CANARY.databasePassword; // trust authentication ignores it; a page that printed it would leak it
  return { DATABASE_URL: url.toString(), JOBS_DIR: jobsDir, CONSOLE_TOKENS: `oncall:${CANARY.consoleToken}`, PAYMENT_PROVIDER_KEY: CANARY.providerKey, LOG_LEVEL: 'info', LEASE_TTL: '5s' };
}

export interface ConsoleDaemon {
  daemon: RunningProcess;
  /** The console's address, without a trailing slash. */
  base: string;
  jobs: JobsDir;
  stop(): Promise<void>;
}

/**
 * A daemon serving the console over the fixture jobs, on a database that holds CONSOLE_FIXTURE_SQL;
 * resolves once each fixture is in its state: shipments' items dead, invoices' scan failing,
 * invoices-sent done.
 */
export async function startConsoleDaemon(databaseUrl: string): Promise<ConsoleDaemon> {
  const jobs = jobsDir(consoleJobFiles());
  const daemon = startProcess(['daemon'], consoleEnv(databaseUrl, jobs.dir));
  const stop = async () => {
    await daemon.kill('SIGKILL');
    jobs.cleanup();
  };
  try {
    const listening = await daemon.waitForEvent('http:listening');
    await Promise.all([
      daemon.waitFor((l) => l.event === 'pass:finish' && l.reconciler === 'shipments' && Number(l.dead) + Number(l.failed) >= 4, 'the items of shipments to die'),
      daemon.waitForEvent('pass:finish', { reconciler: 'invoices', status: 'error' }),
      daemon.waitForEvent('pass:finish', { reconciler: 'invoices-sent', status: 'succeeded' }),
    ]);
    return { daemon, base: String(listening.url).replace(/\/$/, ''), jobs, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Headless Debian Chromium, with nothing that reaches the network by itself. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
  });
}
