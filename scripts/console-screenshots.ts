/**
 * `node --import ./bin/register.js scripts/console-screenshots.ts`: the console's screenshots in
 * docs/ (console-overview.png, console-item.png), taken by headless Chromium from a real daemon
 * on a scratch database (TEST_DATABASE_URL, else the local server) holding the console's
 * fixtures (testkit/console.ts) and a day of pass history for the charts. Signed in, so that the
 * item page shows its actions.
 */
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { CANARY, CONSOLE_FIXTURE_SQL, launchChromium, startConsoleDaemon } from '../testkit/console.js';
import { DEFAULT_ADMIN_URL, createTestDatabase } from '../testkit/database.js';
import { REPO_ROOT } from '../testkit/jobs.js';

/** A day of passes every 10 minutes, with a busy morning and a bad hour, so that the charts have a shape. */
const HISTORY_SQL = `
INSERT INTO reconciler.runs (reconciler, trigger, status, started_at, finished_at, duration_ms, found, changed, unchanged, failed, complete, host, pid)
SELECT r, 'schedule', CASE WHEN failed > 0 THEN 'failed' ELSE 'succeeded' END, at, at + duration_ms * interval '1 ms', duration_ms, found, found - failed, 0, failed, true, 'web-1', 4242
FROM (
  SELECT r, at,
         round(40 + 35 * sin(extract(epoch FROM at) / 7200) + random() * 10)::int AS found,
         CASE WHEN r = 'shipments' AND extract(hour FROM now() - at) BETWEEN 5 AND 6 THEN round(random() * 8)::int ELSE 0 END AS failed,
         round(300 + 900 * random())::int AS duration_ms
  FROM unnest(ARRAY['shipments', 'invoices-sent']) AS r,
       generate_series(now() - interval '24 hours', now() - interval '5 minutes', interval '10 minutes') AS at
) AS s;`;

const database = await createTestDatabase(DEFAULT_ADMIN_URL, { prefix: 'reconciler_screens' });
try {
  await database.rows(sql.raw(CONSOLE_FIXTURE_SQL));
  await database.rows(sql.raw(HISTORY_SQL));
  const served = await startConsoleDaemon(database.url);
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 }, colorScheme: 'light' });
    await page.goto(`${served.base}/sign-in?return_to=/`);
    await page.locator('#token').fill(CANARY.consoleToken);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('Signed in as').waitFor();
    await page.screenshot({ path: join(REPO_ROOT, 'docs', 'console-overview.png'), fullPage: true });
    // An item someone retried, that died again at its next attempt: its page then has an audit record.
    await page.goto(`${served.base}/reconcilers/shipments/item?key=order-1002`);
    await page.locator('form.actions input[name=note]').fill('carrier says the address is fixed now');
    await page.getByRole('button', { name: 'Retry now' }).click();
    await page.locator('.flash-ok').waitFor();
    await page.locator('dl.facts .badge-bad').waitFor({ timeout: 20_000 });
    await page.goto(`${served.base}/reconcilers/shipments/item?key=order-1002`);
    await page.screenshot({ path: join(REPO_ROOT, 'docs', 'console-item.png'), fullPage: true });
    process.stdout.write('wrote docs/console-overview.png and docs/console-item.png\n');
  } finally {
    await browser.close();
    await served.stop();
  }
} finally {
  await database.drop();
}
