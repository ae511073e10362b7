/**
 * The payment provider simulator speaks Stripe's wire format (form bodies, Stripe's objects and
 * errors, `request-id`, `Idempotent-Replayed`), keeps Stripe's idempotency semantics, and
 * injects the faults a caller's key-version recovery must survive: saved 500s, search lag, key
 * expiry on a clock the test moves. The real simulator process, on real PostgreSQL, driven over
 * HTTP as the SDK drives it.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import pg from 'pg';
import { NO_FAULTS, type SimulatorStats } from '../examples/returns/src/simulator/server.js';
import { StripePaymentProvider } from '../examples/returns/src/provider.js';
import { createEmptyDatabase, databaseUrl, dropDatabase } from './helpers/db.js';
import { REPO_ROOT } from './helpers/jobs.js';
import { PROVIDER_KEY, startProvider, type Provider } from './helpers/returns.js';
import { SimulatorClient, startSimulator } from '../testkit/returns.js';

let provider: Provider;
beforeAll(async () => {
  provider = await startProvider();
});
afterAll(async () => {
  await provider?.stop();
});
afterEach(async () => {
  await provider.setFaults(NO_FAULTS);
});

interface Answer {
  status: number;
  headers: Headers;
  body: Record<string, any>;
}

const form = (params: Record<string, string | number>) => new URLSearchParams(Object.entries(params).map(([name, value]): [string, string] => [name, String(value)])).toString();

async function call(method: 'GET' | 'POST', path: string, options: { params?: Record<string, string | number>; key?: string; apiKey?: string; url?: string } = {}): Promise<Answer> {
  const response = await fetch(`${options.url ?? provider.url}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${options.apiKey ?? PROVIDER_KEY}`,
      ...(method === 'POST' ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      ...(options.key ? { 'idempotency-key': options.key } : {}),
    },
    ...(options.params ? { body: form(options.params) } : {}),
  });
  return { status: response.status, headers: response.headers, body: (await response.json()) as Record<string, any> };
}

const chargeParams = (intent: string, extra: Record<string, string | number> = {}) => ({
  amount: 1_000,
  currency: 'usd',
  customer: 'cus_7',
  source: 'pm_card_visa',
  'metadata[return_id]': '7',
  'metadata[intent_key]': intent,
  ...extra,
});

const postCharge = (key: string, intent = key, extra: Record<string, string | number> = {}) => call('POST', '/v1/charges', { params: chargeParams(intent, extra), key });
const postRefund = (key: string, charge: string, amount: number, intent = key) =>
  call('POST', '/v1/refunds', { params: { charge, amount, 'metadata[return_id]': '7', 'metadata[intent_key]': intent }, key });

/** A charge that succeeded, for refunds. */
async function charged(amount = 1_000): Promise<string> {
  const answer = await postCharge(`charge:${randomUUID()}`, undefined, { amount });
  expect(answer.status).toBe(200);
  return answer.body.id as string;
}

const stats = (): Promise<SimulatorStats> => provider.stats();
const effectsWithKey = async (key: string) => (await provider.ledger()).filter((entry) => entry.idempotencyKey === key);
const search = (query: string, extra = '') => call('GET', `/v1/charges/search?query=${encodeURIComponent(query)}${extra}`);

describe("Stripe's wire format", () => {
  it('parses a form body with nested metadata and answers with a charge as Stripe shapes it, a request-id, and the replay header on a replay', async () => {
    const key = `wire:${randomUUID()}`;
    const first = await postCharge(key, 'return:wire:charge');
    expect(first.status).toBe(200);
    expect(first.headers.get('request-id')).toMatch(/^req_\w+$/);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    expect(first.body).toMatchObject({
      object: 'charge',
      amount: 1_000,
      amount_refunded: 0,
      currency: 'usd',
      customer: 'cus_7',
      metadata: { return_id: '7', intent_key: 'return:wire:charge' },
      status: 'succeeded',
      paid: true,
      captured: true,
      refunded: false,
    });
    expect(first.body.id).toMatch(/^ch_\w+$/);
    expect(Number.isInteger(first.body.created)).toBe(true);

    const again = await postCharge(key, 'return:wire:charge');
    expect(again.status).toBe(200);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.body).toEqual(first.body);
    expect(await effectsWithKey(key)).toEqual([expect.objectContaining({ id: first.body.id, kind: 'charge', amount: 1_000, currency: 'usd', returnId: '7', intentKey: 'return:wire:charge' })]);

    const fetched = await call('GET', `/v1/charges/${first.body.id}`);
    expect(fetched.status).toBe(200);
    expect(fetched.body).toEqual(first.body);
  });

  it('keeps an idle connection open for 10 minutes, and says so, so that a busy client never reuses one the server has closed', async () => {
    const keepAlive = await new Promise<string | undefined>((resolve, reject) => {
      const request = httpRequest(`${provider.url}/healthz`, { agent: new HttpAgent({ keepAlive: true }) }, (response) => {
        response.resume();
        resolve(String(response.headers['keep-alive']));
      });
      request.on('error', reject).end();
    });
    // Node's agent closes an idle socket a second before the announced timeout; Node's default is 5 s.
    expect(keepAlive).toBe('timeout=600');
  });

  it("answers errors in Stripe's shape: a missing parameter, an unknown object, an unknown route, a wrong key (never echoed)", async () => {
    const noAmount = await call('POST', '/v1/charges', { params: { currency: 'usd' }, key: `e:${randomUUID()}` });
    expect(noAmount.status).toBe(400);
    expect(noAmount.body).toEqual({ error: { type: 'invalid_request_error', code: 'parameter_missing', param: 'amount', message: expect.any(String) } });

    const noCharge = await call('POST', '/v1/refunds', { params: { amount: 5 }, key: `e:${randomUUID()}` });
    expect(noCharge.status).toBe(400);
    expect(noCharge.body.error).toMatchObject({ type: 'invalid_request_error', code: 'parameter_missing', param: 'charge' });

    const unknownCharge = await postRefund(`e:${randomUUID()}`, 'ch_nosuch', 5);
    expect(unknownCharge.status).toBe(404);
    expect(unknownCharge.body.error).toMatchObject({ type: 'invalid_request_error', code: 'resource_missing', param: 'charge' });

    for (const path of ['/v1/charges/ch_nosuch', '/v1/refunds/re_nosuch']) {
      const answer = await call('GET', path);
      expect(answer.status).toBe(404);
      expect(answer.body.error).toMatchObject({ type: 'invalid_request_error', code: 'resource_missing' });
    }

    const route = await call('GET', '/v1/payouts');
    expect(route.status).toBe(404);
    expect(route.body.error.type).toBe('invalid_request_error');
    expect(route.body.error.code).toBeUndefined();

    const wrongKey = 'sk_test_not_the_right_one_123';
    const unauthorized = await call('GET', '/v1/charges/ch_x', { apiKey: wrongKey });
    expect(unauthorized.status).toBe(401);
    expect(unauthorized.headers.get('request-id')).toMatch(/^req_/);
    expect(JSON.stringify(unauthorized.body)).not.toContain(wrongKey);
  });

  it('answers a key reused with other parameters 400 idempotency_error, and applies nothing', async () => {
    const key = `reuse:${randomUUID()}`;
    const before = await stats();
    expect((await postCharge(key)).status).toBe(200);
    const other = await postCharge(key, key, { amount: 999 });
    expect(other.status).toBe(400);
    expect(other.body.error).toMatchObject({ type: 'idempotency_error' });
    expect(other.headers.get('idempotent-replayed')).toBeNull();
    expect(await effectsWithKey(key)).toHaveLength(1);
    expect((await stats()).conflicts - before.conflicts).toBe(1);
  });

  it('lists the refunds of a charge, newest first, in pages (limit, starting_after)', async () => {
    const charge = await charged(1_000);
    const ids: string[] = [];
    for (const amount of [100, 200, 300]) ids.push((await postRefund(`list:${randomUUID()}`, charge, amount)).body.id as string);
    const first = await call('GET', `/v1/refunds?charge=${charge}&limit=2`);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ object: 'list', has_more: true, url: '/v1/refunds' });
    const second = await call('GET', `/v1/refunds?charge=${charge}&limit=2&starting_after=${first.body.data[1].id}`);
    expect(second.body.has_more).toBe(false);
    const listed = [...first.body.data, ...second.body.data];
    expect(new Set(listed.map((refund) => refund.id))).toEqual(new Set(ids));
    expect(listed.map((refund) => refund.amount)).toEqual([...listed.map((refund) => refund.amount)].sort((a, b) => b - a)); // created in that order: newest (300) first
    expect(listed[0]).toMatchObject({ object: 'refund', charge, currency: 'usd', status: 'succeeded', metadata: { return_id: '7' } });
    expect(listed[0].id).toMatch(/^re_/);
  });
});

describe('refunds', () => {
  it("rejects a refund over the charge's remaining amount (400 amount_too_large), in the charge's currency", async () => {
    const charge = await charged(1_000);
    const first = await postRefund(`r:${randomUUID()}`, charge, 600);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ object: 'refund', amount: 600, charge, currency: 'usd' });
    const over = await postRefund(`r:${randomUUID()}`, charge, 401);
    expect(over.status).toBe(400);
    expect(over.body.error).toMatchObject({ type: 'invalid_request_error', code: 'amount_too_large' });
    expect((await postRefund(`r:${randomUUID()}`, charge, 400)).status).toBe(200);
    expect((await call('GET', `/v1/charges/${charge}`)).body).toMatchObject({ amount_refunded: 1_000, refunded: true });
    const more = await postRefund(`r:${randomUUID()}`, charge, 1);
    expect(more.status).toBe(400);
    expect(more.body.error.code).toBe('charge_already_refunded');
  });

  it('lets two refunds of one charge at once never both pass its remaining amount', async () => {
    await provider.setFaults({ latencyMs: [150, 150] }); // both wait together, then apply together
    const charges = await Promise.all([1, 2, 3, 4].map(() => charged(1_000)));
    const answers = await Promise.all(charges.flatMap((charge) => [postRefund(`pair:${randomUUID()}`, charge, 700), postRefund(`pair:${randomUUID()}`, charge, 700)]));
    for (const [i, charge] of charges.entries()) {
      const pair = answers.slice(2 * i, 2 * i + 2);
      expect(pair.map((answer) => answer.status).sort()).toEqual([200, 400]);
      expect(pair.find((answer) => answer.status === 400)!.body.error.code).toBe('amount_too_large');
      expect((await call('GET', `/v1/charges/${charge}`)).body.amount_refunded).toBe(700);
      const refunded = (await provider.ledger()).filter((entry) => entry.charge === charge);
      expect(refunded.map((entry) => entry.amount)).toEqual([700]);
    }
  });
});

describe('faults', () => {
  it('saves a 500 under its key and replays it to every later request with the key; the applied share applied the effect first', async () => {
    const before = await stats();
    await provider.setFaults({ savedErrorRate: 1, savedErrorAppliedShare: 1 });
    const applied = `saved:${randomUUID()}`;
    const first = await postCharge(applied);
    expect(first.status).toBe(500);
    expect(first.body.error.type).toBe('api_error');
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    expect(await effectsWithKey(applied)).toHaveLength(1);

    await provider.setFaults({ savedErrorAppliedShare: 0 });
    const notApplied = `saved:${randomUUID()}`;
    expect((await postCharge(notApplied)).status).toBe(500);
    expect(await effectsWithKey(notApplied)).toHaveLength(0);

    await provider.setFaults({ savedErrorRate: 0 });
    for (const key of [applied, notApplied]) {
      const again = await postCharge(key);
      expect(again.status).toBe(500);
      expect(again.headers.get('idempotent-replayed')).toBe('true');
    }
    expect((await postCharge(applied)).body).toEqual(first.body);
    expect(await effectsWithKey(applied)).toHaveLength(1);
    expect(await effectsWithKey(notApplied)).toHaveLength(0);
    const after = await stats();
    expect(after.savedErrors - before.savedErrors).toBe(2);
    expect(after.replayed - before.replayed).toBe(3);
  });

  it('forgets a key first used longer ago than its lifetime (simulator clock): a request with it runs as new', async () => {
    const key = `expiry:${randomUUID()}`;
    const first = await postCharge(key);
    expect((await postCharge(key)).headers.get('idempotent-replayed')).toBe('true');
    const before = await stats();
    await provider.advanceClock(23 * 3_600);
    expect((await postCharge(key)).headers.get('idempotent-replayed')).toBe('true'); // 23 hours: still remembered
    expect((await stats()).expiredKeyReuses).toBe(before.expiredKeyReuses);

    await provider.advanceClock(3_600 + 60);
    const late = await postCharge(key);
    expect(late.status).toBe(200);
    expect(late.headers.get('idempotent-replayed')).toBeNull();
    expect(late.body.id).not.toBe(first.body.id);
    expect(late.body.created - first.body.created).toBeGreaterThanOrEqual(24 * 3_600); // created on the simulator's clock
    expect((await effectsWithKey(key)).map((entry) => entry.id).sort()).toEqual([first.body.id, late.body.id].sort());
    expect((await stats()).expiredKeyReuses - before.expiredKeyReuses).toBe(1);
    expect((await postCharge(key)).body.id).toBe(late.body.id); // remembered again, from its new first use
  });

  it('shows an effect in search results only searchLagMs after it was created; retrieving it has no lag', async () => {
    await provider.setFaults({ searchLagMs: 60_000 });
    const intent = `return:${randomUUID()}:charge`;
    const created = await postCharge(`${intent}:v1`, intent);
    const query = `metadata['intent_key']:'${intent}'`;
    const early = await search(query);
    expect(early.status).toBe(200);
    expect(early.body).toMatchObject({ object: 'search_result', data: [], has_more: false, next_page: null });
    expect((await call('GET', `/v1/charges/${created.body.id}`)).status).toBe(200);

    const client = new StripePaymentProvider({ baseUrl: provider.url, apiKey: PROVIDER_KEY, timeoutMs: 5_000 });
    expect(await client.find({ kind: 'charge', intentKey: intent }, new AbortController().signal)).toEqual([]);
    await provider.advanceClock(61);
    const late = await search(query);
    expect(late.body.data.map((charge: { id: string }) => charge.id)).toEqual([created.body.id]);
    expect(await client.find({ kind: 'charge', intentKey: intent }, new AbortController().signal)).toEqual([expect.objectContaining({ id: created.body.id, intentKey: intent, idempotencyKey: undefined })]);

    // AND of terms; any other query form is refused.
    expect((await search(`${query} AND metadata['return_id']:'7'`)).body.data).toHaveLength(1);
    expect((await search(`${query} AND metadata['return_id']:'8'`)).body.data).toHaveLength(0);
    const unsupported = await search(`amount>100`);
    expect(unsupported.status).toBe(400);
    expect(unsupported.body.error).toMatchObject({ type: 'invalid_request_error', param: 'query' });
  });

  it('pages search results (limit, next_page)', async () => {
    const tag = randomUUID();
    for (let i = 0; i < 3; i++) await postCharge(`page:${randomUUID()}`, `page:${i}`, { 'metadata[tag]': tag });
    const query = `metadata['tag']:'${tag}'`;
    const first = await search(query, '&limit=2');
    expect(first.body).toMatchObject({ has_more: true, next_page: expect.any(String) });
    const second = await search(query, `&limit=2&page=${first.body.next_page}`);
    expect(second.body).toMatchObject({ has_more: false, next_page: null });
    expect(new Set([...first.body.data, ...second.body.data].map((charge: { metadata: { intent_key: string } }) => charge.metadata.intent_key))).toEqual(new Set(['page:0', 'page:1', 'page:2']));
  });

  it('refuses fault settings out of range', async () => {
    const response = await fetch(`${provider.url}/v1/_simulator/faults`, { method: 'POST', headers: { authorization: `Bearer ${PROVIDER_KEY}` }, body: JSON.stringify({ savedErrorRate: 2 }) });
    expect(response.status).toBe(400);
    expect(await response.text()).toContain('savedErrorRate');
    const clock = await fetch(`${provider.url}/v1/_simulator/clock`, { method: 'POST', headers: { authorization: `Bearer ${PROVIDER_KEY}` }, body: JSON.stringify({ advanceSeconds: -5 }) });
    expect(clock.status).toBe(400);
  });
});

describe('stats', () => {
  it('counts searches, retrieves, lists, and POSTs of a new key version while another key of the intent could still apply', async () => {
    const before = await stats();
    const intent = `return:${randomUUID()}:charge`;
    const v1 = await postCharge(`${intent}:v1`, intent);
    await postCharge(`${intent}:v1`, intent); // its own retry: not a new key
    await postCharge(`${intent}:v2`, intent); // v1 applied an effect: overlapping
    const declinedIntent = `return:${randomUUID()}:charge`;
    expect((await postCharge(`${declinedIntent}:v1`, declinedIntent, { source: 'pm_card_chargeDeclined' })).status).toBe(402);
    expect((await postCharge(`${declinedIntent}:v2`, declinedIntent, { source: 'tok_chargeDeclined' })).status).toBe(402); // v1 was declined: nothing could apply
    await search(`metadata['intent_key']:'${intent}'`);
    await call('GET', `/v1/charges/${v1.body.id}`);
    await call('GET', `/v1/refunds?charge=${v1.body.id}`);
    await call('GET', `/v1/refunds?charge=${v1.body.id}`);
    const after = await stats();
    expect({
      posts: after.posts - before.posts,
      applied: after.applied - before.applied,
      replayed: after.replayed - before.replayed,
      declined: after.declined - before.declined,
      overlappingKeys: after.overlappingKeys - before.overlappingKeys,
      searches: after.searches - before.searches,
      retrieves: after.retrieves - before.retrieves,
      lists: after.lists - before.lists,
    }).toEqual({ posts: 5, applied: 2, replayed: 1, declined: 2, overlappingKeys: 1, searches: 1, retrieves: 1, lists: 2 });
  });
});

describe('`npm run provider`', () => {
  const main = ['--import', './bin/register.js', 'examples/returns/src/simulator/main.ts'];
  // Asynchronous, not spawnSync: a blocked event loop outlives the simulator's keep-alive, and the next call meets a closed socket.
  const run = (args: string[], env: Record<string, string> = {}) =>
    new Promise<{ status: number | null; stderr: string }>((resolve) => {
      execFile(process.execPath, [...main, ...args], { cwd: REPO_ROOT, env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, encoding: 'utf8', timeout: 30_000 }, (error, _stdout, stderr) =>
        resolve({ status: error ? (typeof error.code === 'number' ? error.code : null) : 0, stderr }),
      );
    });

  it('takes the new fault knobs from its flags', async () => {
    const other = await startProvider(['--saved-error-rate', '0.25', '--saved-error-applied-share', '0.75', '--search-lag', '1500', '--key-lifetime-hours', '2']);
    try {
      expect(((await other.stats()) as SimulatorStats & { faultSettings: unknown }).faultSettings).toMatchObject({ savedErrorRate: 0.25, savedErrorAppliedShare: 0.75, searchLagMs: 1_500, keyLifetimeHours: 2 });
    } finally {
      await other.stop();
    }
  });

  it('refuses a bad flag or variable with one line, exit 2', async () => {
    for (const [args, env, says] of [
      [['--saved-error-rate', '2'], {}, /--saved-error-rate/],
      [['--search-lag', 'soon'], {}, /--search-lag/],
      [['--key-lifetime-hours', '0'], {}, /--key-lifetime-hours/],
      [[], { PROVIDER_SAVED_ERROR_APPLIED_SHARE: 'half' }, /invalid PROVIDER_SAVED_ERROR_APPLIED_SHARE/],
      [[], { PROVIDER_SEARCH_LAG: '1m' }, /invalid PROVIDER_SEARCH_LAG/],
    ] as const) {
      const result = await run([...args], env);
      expect(result.status, result.stderr).toBe(2);
      expect(result.stderr.trim().split('\n'), result.stderr).toHaveLength(1);
      expect(result.stderr).toMatch(says);
    }
  });
});

describe('storage', () => {
  it("keeps working on a simulator's older storage (its tables as they were, with their rows)", async () => {
    const name = await createEmptyDatabase();
    const client = new pg.Client({ connectionString: databaseUrl(name) });
    await client.connect();
    try {
      await client.query(`CREATE SCHEMA payment_provider;
        CREATE TABLE payment_provider.requests (idempotency_key text PRIMARY KEY, endpoint text NOT NULL, params_hash text NOT NULL, state text NOT NULL,
          status_code int, response jsonb, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE payment_provider.effects (id text PRIMARY KEY, kind text NOT NULL, amount int NOT NULL, currency text NOT NULL,
          idempotency_key text NOT NULL UNIQUE, return_id text, customer text, created_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO payment_provider.effects (id, kind, amount, currency, idempotency_key, return_id, customer) VALUES ('ch_old', 'charge', 500, 'usd', 'return:3:charge:v1', '3', 'cus_3');`);
      const { process: child, url } = await startSimulator({ storageUrl: databaseUrl(name), apiKey: PROVIDER_KEY, seed: 1 });
      try {
        const old = await call('GET', '/v1/charges/ch_old', { url });
        expect(old.body).toMatchObject({ object: 'charge', amount: 500, amount_refunded: 0, metadata: { return_id: '3' } });
        const refund = await call('POST', '/v1/refunds', { url, params: { charge: 'ch_old', amount: 200, 'metadata[return_id]': '3' }, key: 'return:3:refund:v1' });
        expect(refund.status).toBe(200);
        const ledger = await new SimulatorClient(url, PROVIDER_KEY).ledger();
        expect(ledger.map((entry) => [entry.id === 'ch_old' ? 'ch_old' : entry.kind, entry.returnId, entry.amount])).toEqual([
          ['ch_old', '3', 500],
          ['refund', '3', 200],
        ]);
      } finally {
        await child.kill('SIGTERM');
      }
    } finally {
      await client.end();
      await dropDatabase(name);
    }
  });
});
