/**
 * StripePaymentProvider, the official `stripe` SDK as the example's provider client, against the
 * real simulator process: every failure classified as the caller needs it (declined, retryable
 * with or without the request sent, permanent), lookups, the abort, and no API key in any message.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { NO_FAULTS } from '../examples/returns/src/simulator/server.js';
import { ProviderError, StripePaymentProvider, paymentProviderFromEnv, type EffectRequest, type PaymentProvider } from '../examples/returns/src/provider.js';
import { loadProviderConfig } from '../examples/returns/src/config.js';
import { freePort } from './helpers/ports.js';
import { PROVIDER_KEY, startProvider, type Provider } from './helpers/returns.js';

let provider: Provider;
let client: StripePaymentProvider;
beforeAll(async () => {
  provider = await startProvider();
  client = new StripePaymentProvider({ baseUrl: provider.url, apiKey: PROVIDER_KEY, timeoutMs: 5_000, searchLagMs: 0 });
});
afterAll(async () => {
  await provider?.stop();
});
afterEach(async () => {
  await provider.setFaults(NO_FAULTS);
});

const live = () => new AbortController().signal;

function chargeRequest(overrides: Partial<EffectRequest> = {}): EffectRequest {
  const intentKey = `return:${randomUUID()}:charge`;
  return { kind: 'charge', idempotencyKey: `${intentKey}:v1`, intentKey, amountMinor: 1_250, currency: 'EUR', customer: 'cus_9', paymentMethod: 'pm_card_visa', metadata: { return_id: '9', return_public_id: 'r-9' }, ...overrides };
}

function refundRequest(charge: string, amountMinor: number): EffectRequest {
  const intentKey = `return:${randomUUID()}:refund`;
  return { kind: 'refund', idempotencyKey: `${intentKey}:v1`, intentKey, amountMinor, currency: 'EUR', customer: 'cus_9', paymentMethod: 'pm_card_visa', charge, metadata: { return_id: '9' } };
}

/** The ProviderError a call rejects with (fails the test if it resolves, or rejects with anything else). */
async function failure(call: Promise<unknown>): Promise<ProviderError> {
  const error = await call.then(
    (value) => {
      throw new Error(`expected a ProviderError, got ${JSON.stringify(value)}`);
    },
    (error: unknown) => error,
  );
  expect(error).toBeInstanceOf(ProviderError);
  return error as ProviderError;
}

describe('charges and refunds', () => {
  it('charges through the SDK with our key and metadata, and says when the answer is a replay', async () => {
    const request = chargeRequest();
    const first = await client.charge(request, live());
    expect(first).toMatchObject({ kind: 'charge', amountMinor: 1_250, currency: 'EUR', status: 'succeeded', intentKey: request.intentKey, idempotencyKey: request.idempotencyKey, replayed: false });
    expect(first.id).toMatch(/^ch_/);
    expect(Math.abs(first.createdAt - Date.now())).toBeLessThan(24 * 3_600_000 * 3); // ms, on the simulator's clock (which other tests move)
    const again = await client.charge(request, live());
    expect(again).toEqual({ ...first, replayed: true });
    const [entry] = (await provider.ledger()).filter((e) => e.idempotencyKey === request.idempotencyKey);
    expect(entry).toMatchObject({ id: first.id, amount: 1_250, currency: 'eur', returnId: '9', intentKey: request.intentKey });
  });

  it("refunds a charge, in the charge's currency, and finds the refunds of an intent by listing the charge's", async () => {
    const charge = await client.charge(chargeRequest(), live());
    const mine = refundRequest(charge.id, 500);
    const refund = await client.refund(mine, live());
    expect(refund).toMatchObject({ kind: 'refund', amountMinor: 500, currency: 'EUR', charge: charge.id, intentKey: mine.intentKey, replayed: false });
    await client.refund(refundRequest(charge.id, 300), live()); // another intent's refund of the same charge
    const found = await client.find({ kind: 'refund', intentKey: mine.intentKey, charge: charge.id }, live());
    const { replayed: _, ...effect } = refund;
    expect(found).toEqual([effect]);
    expect(await client.retrieve('refund', refund.id, live())).toMatchObject({ id: refund.id, kind: 'refund', amountMinor: 500, charge: charge.id });
    expect(await client.retrieve('charge', charge.id, live())).toMatchObject({ id: charge.id, kind: 'charge', amountMinor: 1_250 });
  });

  it('finds the charges of an intent through search, whatever key version made them', async () => {
    const request = chargeRequest();
    const v1 = await client.charge(request, live());
    const v2 = await client.charge({ ...request, idempotencyKey: `${request.intentKey}:v2`, amountMinor: 1_250 }, live());
    const found = await client.find({ kind: 'charge', intentKey: request.intentKey }, live());
    expect(found?.map((effect) => [effect.id, effect.idempotencyKey]).sort()).toEqual(
      [
        [v1.id, request.idempotencyKey],
        [v2.id, `${request.intentKey}:v2`],
      ].sort(),
    );
    expect(await client.find({ kind: 'charge', intentKey: `return:${randomUUID()}:charge` }, live())).toEqual([]);
  });

  it('says a provider without the Search or list API cannot answer lookups (undefined), and a missing object is a 404', async () => {
    // A provider whose API has no such routes: it answers every request as Stripe answers an unknown URL.
    const server: Server = createServer((req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { type: 'invalid_request_error', message: `Unrecognized request URL (${req.method}: ${req.url}).` } }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const bare = new StripePaymentProvider({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, apiKey: PROVIDER_KEY, timeoutMs: 5_000 });
      expect(await bare.find({ kind: 'charge', intentKey: 'return:x:charge' }, live())).toBeUndefined();
      expect(await bare.find({ kind: 'refund', intentKey: 'return:x:refund', charge: 'ch_x' }, live())).toBeUndefined();
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    const missing = await failure(client.retrieve('charge', 'ch_nosuch', live()));
    expect(missing).toMatchObject({ failure: 'permanent', status: 404, code: 'resource_missing' });
    expect(missing.message).toBe("GET /v1/charges/ch_nosuch: 404 resource_missing: No such charge: 'ch_nosuch'");
  });
});

describe('failures, classified', () => {
  it('a decline is declined (402), final', async () => {
    const error = await failure(client.charge(chargeRequest({ paymentMethod: 'pm_card_chargeDeclined' }), live()));
    expect(error).toMatchObject({ failure: 'declined', status: 402, sent: true, code: 'card_declined', replayed: false });
    expect(error.message).toMatch(/^POST \/v1\/charges: 402 card_declined: Your card was declined/);
  });

  it('a 500, a 503 and a 429 are retryable, with the Retry-After of the 503 and the 429', async () => {
    await provider.setFaults({ errorRate: 1 });
    const error500 = await failure(client.charge(chargeRequest(), live()));
    expect(error500).toMatchObject({ failure: 'retryable', status: 500, sent: true, replayed: false, retryAfter: undefined, code: 'api_error' });
    expect(error500.message).toMatch(/^POST \/v1\/charges: 500 api_error: /);

    await provider.setFaults({ errorRate: 0, unavailableRate: 1, retryAfter: '7' });
    expect(await failure(client.charge(chargeRequest(), live()))).toMatchObject({ failure: 'retryable', status: 503, retryAfter: 7_000 });

    await provider.setFaults({ unavailableRate: 0, rateLimitRate: 1, retryAfter: 'Wed, 21 Oct 2026 07:28:00 GMT' });
    const limited = await failure(client.charge(chargeRequest(), live()));
    expect(limited).toMatchObject({ failure: 'retryable', status: 429, code: 'rate_limit' });
    expect(limited.retryAfter).toEqual(new Date('2026-10-21T07:28:00Z'));
  });

  it('a saved 500 is retryable, and its replay says so (replayed)', async () => {
    await provider.setFaults({ savedErrorRate: 1, savedErrorAppliedShare: 1 });
    const request = chargeRequest();
    const first = await failure(client.charge(request, live()));
    expect(first).toMatchObject({ failure: 'retryable', status: 500, replayed: false });
    await provider.setFaults({ savedErrorRate: 0 });
    const replay = await failure(client.charge(request, live()));
    expect(replay).toMatchObject({ failure: 'retryable', status: 500, replayed: true });
    expect(replay.message).toMatch(/^POST \/v1\/charges: 500 api_error: .*; replayed: the answer saved under this idempotency key$/);
    // The effect applied before the saved 500 is what a lookup finds.
    expect(await client.find({ kind: 'charge', intentKey: request.intentKey }, live())).toEqual([expect.objectContaining({ idempotencyKey: request.idempotencyKey })]);
  });

  it('a request in flight with the same key is retryable (409)', async () => {
    await provider.setFaults({ latencyMs: [800, 800] });
    const request = chargeRequest();
    const [a, b] = await Promise.allSettled([client.charge(request, live()), client.charge(request, live())]);
    const rejected = [a, b].filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(rejected).toHaveLength(1);
    expect(rejected[0]!.reason).toMatchObject({ failure: 'retryable', status: 409, code: 'idempotency_key_in_use' });
  });

  it('a key reused with other parameters, a refund over the remaining amount, a wrong key are permanent', async () => {
    const request = chargeRequest();
    const charge = await client.charge(request, live());
    const reused = await failure(client.charge({ ...request, amountMinor: 99 }, live()));
    expect(reused).toMatchObject({ failure: 'permanent', status: 400, code: 'idempotency_key_reused' });
    expect(reused.message).toMatch(/^POST \/v1\/charges: 400 idempotency_key_reused: Keys for idempotent requests/);
    const tooLarge = await failure(client.refund(refundRequest(charge.id, 1_251), live()));
    expect(tooLarge).toMatchObject({ failure: 'permanent', status: 400, code: 'amount_too_large' });
    const wrongKey = new StripePaymentProvider({ baseUrl: provider.url, apiKey: 'sk_test_wrong', timeoutMs: 5_000 });
    expect(await failure(wrongKey.charge(chargeRequest(), live()))).toMatchObject({ failure: 'permanent', status: 401 });
  });

  it('a closed port is retryable and not sent', async () => {
    const closed = new StripePaymentProvider({ baseUrl: `http://127.0.0.1:${await freePort()}`, apiKey: PROVIDER_KEY, timeoutMs: 5_000 });
    const error = await failure(closed.charge(chargeRequest(), live()));
    expect(error).toMatchObject({ failure: 'retryable', status: undefined, sent: false });
    expect(error.message).toBe('POST /v1/charges: could not connect to the provider (ECONNREFUSED); the request was not sent');
  });

  it('no answer in time is retryable with the outcome unknown', async () => {
    await provider.setFaults({ latencyMs: [1_500, 1_500] });
    const impatient = new StripePaymentProvider({ baseUrl: provider.url, apiKey: PROVIDER_KEY, timeoutMs: 300 });
    const error = await failure(impatient.charge(chargeRequest(), live()));
    expect(error).toMatchObject({ failure: 'retryable', status: undefined, sent: true });
    expect(error.message).toBe('POST /v1/charges: no answer within 300 ms; the outcome is unknown');
  });

  it('a connection dropped after the effect applied is retryable with the outcome unknown: the SDK does not retry it behind our back', async () => {
    await provider.setFaults({ timeoutRate: 1 });
    const request = chargeRequest();
    const before = (await provider.stats()).posts;
    const error = await failure(client.charge(request, live()));
    expect(error).toMatchObject({ failure: 'retryable', sent: true });
    expect(error.message).toMatch(/^POST \/v1\/charges: the connection failed \(ECONNRESET\); the outcome is unknown$/);
    expect((await provider.stats()).posts - before).toBe(1); // one request: no retry by the SDK
    await provider.setFaults({ timeoutRate: 0 });
    expect(await client.charge(request, live())).toMatchObject({ replayed: true }); // our retry, with the same key
  });
});

describe('abort', () => {
  it('rejects at once with the signal’s reason while the request is out; an aborted signal sends nothing', async () => {
    await provider.setFaults({ latencyMs: [3_000, 3_000] });
    const controller = new AbortController();
    const reason = new Error('the item timed out');
    const started = Date.now();
    const call = client.charge(chargeRequest(), controller.signal);
    controller.abort(reason);
    await expect(call).rejects.toBe(reason);
    expect(Date.now() - started).toBeLessThan(2_000);

    await provider.setFaults({ latencyMs: [0, 0] });
    const gone = new AbortController();
    gone.abort(reason);
    const request = chargeRequest();
    await expect(client.charge(request, gone.signal)).rejects.toBe(reason);
    await expect(client.find({ kind: 'charge', intentKey: request.intentKey }, gone.signal)).rejects.toBe(reason);
    // Had the aborted charge been sent, this would be its replay (or a 409 while it ran).
    expect(await client.charge(request, live())).toMatchObject({ replayed: false });
  });
});

describe('the API key', () => {
  it('appears in no error message, whatever failed', async () => {
    const secret = `sk_test_${randomUUID().replaceAll('-', '')}`;
    const withSecret = (baseUrl: string, timeoutMs = 5_000) => new StripePaymentProvider({ baseUrl, apiKey: secret, timeoutMs });
    // A server that takes requests and never answers them, for the time limit; one that echoes what it was sent, as a careless proxy might.
    const silent: Server = createServer(() => undefined);
    const echo: Server = createServer((req, res) => {
      res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { type: 'api_error', message: `upstream refused the request\nwith ${req.headers.authorization}` } }));
    });
    await Promise.all([silent, echo].map((server) => new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))));
    const urlOf = (server: Server) => `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const errors = [
        await failure(withSecret(provider.url).charge(chargeRequest(), live())), // refused: the simulator's key is another
        await failure(withSecret(provider.url).find({ kind: 'charge', intentKey: 'return:x:charge' }, live())),
        await failure(withSecret(`http://127.0.0.1:${await freePort()}`).charge(chargeRequest(), live())),
        await failure(withSecret(urlOf(silent), 200).charge(chargeRequest(), live())),
        await failure(withSecret(urlOf(echo)).charge(chargeRequest(), live())),
        await failure(client.charge(chargeRequest({ paymentMethod: 'pm_card_chargeDeclined' }), live())),
      ];
      expect(errors.map((error) => [error.status, error.sent])).toEqual([
        [401, true],
        [401, true],
        [undefined, false],
        [undefined, true],
        [502, true],
        [402, true],
      ]);
      expect(errors[4]!.message).toBe('POST /v1/charges: 502 api_error: upstream refused the request with Bearer [the API key]');
      for (const error of errors) {
        expect(`${error.message}\n${error.stack}\n${JSON.stringify(error)}`).not.toContain(secret);
        expect(error.message).not.toContain(PROVIDER_KEY);
        expect(error.message).not.toContain('\n');
      }
    } finally {
      for (const server of [silent, echo]) {
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
      }
    }
  });
});

describe('configuration', () => {
  const base = { PAYMENT_PROVIDER_URL: 'https://api.stripe.com', PAYMENT_PROVIDER_KEY: 'sk_test_config' };

  it('reads PAYMENT_PROVIDER_SEARCH_LAG (default 60s), and says in one line what is wrong', () => {
    expect(loadProviderConfig(base)).toEqual({ url: 'https://api.stripe.com', key: 'sk_test_config', timeoutMs: 10_000, searchLagMs: 60_000 });
    expect(loadProviderConfig({ ...base, PAYMENT_PROVIDER_SEARCH_LAG: '500ms' })?.searchLagMs).toBe(500);
    expect(() => loadProviderConfig({ ...base, PAYMENT_PROVIDER_SEARCH_LAG: '1m' })).toThrow(/^invalid PAYMENT_PROVIDER_SEARCH_LAG: must be a duration like 60s or 500ms$/);
    expect(() => loadProviderConfig({ ...base, PAYMENT_PROVIDER_URL: 'https://payments.example.com/stripe' })).toThrow(/^invalid PAYMENT_PROVIDER_URL: must be the API's origin without a path/);
    expect(() => loadProviderConfig({ ...base, PAYMENT_PROVIDER_URL: 'not a url', PAYMENT_PROVIDER_SEARCH_LAG: 'x' })).toThrow(
      /^invalid PAYMENT_PROVIDER_URL: must be an http\(s\) URL, e\.g\. https:\/\/api\.stripe\.com; invalid PAYMENT_PROVIDER_SEARCH_LAG: must be a duration like 60s or 500ms$/,
    );
  });

  it('builds the SDK client from the environment', async () => {
    const saved = { ...process.env };
    try {
      Object.assign(process.env, { ...base, PAYMENT_PROVIDER_URL: provider.url, PAYMENT_PROVIDER_KEY: PROVIDER_KEY, PAYMENT_PROVIDER_SEARCH_LAG: '2s', DATABASE_URL: 'postgres://unused' });
      const fromEnv: PaymentProvider = await paymentProviderFromEnv({} as never);
      expect(fromEnv).toBeInstanceOf(StripePaymentProvider);
      expect(fromEnv.searchLagMs).toBe(2_000);
      expect(await fromEnv.charge(chargeRequest(), live())).toMatchObject({ status: 'succeeded', replayed: false });
    } finally {
      for (const name of Object.keys(process.env)) if (!(name in saved)) delete process.env[name];
      Object.assign(process.env, saved);
    }
  });
});
