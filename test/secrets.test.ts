import { describe, expect, it } from 'vitest';
import { describeUrl, registerSecret, scrub } from '../src/secrets.js';
import { errorSummary } from '../src/errors.js';
import { Writable } from 'node:stream';
import { createLogger } from '../src/log.js';

describe('scrubbing secrets from text', () => {
  it('masks the password of any URL and the user part of web URLs, where API keys hide', () => {
    expect(scrub('connect to postgres://app:hunter2@db:5432/app failed')).toBe('connect to postgres://app:***@db:5432/app failed');
    expect(scrub('POST https://sk_live_abc123:@api.example.com/v1 failed')).toBe('POST https://***@api.example.com/v1 failed');
    expect(describeUrl('https://user:pw_secret99@payments.example.com/')).toBe('https://***:***@payments.example.com/');
  });

  it('removes registered secrets wherever they appear, also URL-encoded', () => {
    registerSecret('p@ss/word!');
    expect(scrub('auth with p@ss/word! and p%40ss%2Fword! failed')).toBe('auth with [redacted] and [redacted] failed');
  });

  it("shows a failed query's own error, never drizzle's wrapper with the parameters", () => {
    const wrapped = new Error('Failed query: select * from t where token = $1\nparams: tok_live_secret');
    (wrapped as { cause?: unknown }).cause = Object.assign(new Error('relation "t" does not exist'), { code: '42P01' });
    expect(errorSummary(wrapped)).toBe('relation "t" does not exist (SQLSTATE 42P01)');
  });
});

describe('log lines', () => {
  const capture = () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk));
        done();
      },
    });
    return { lines, log: createLogger({ level: 'debug', fd: 2, pretty: false, destination }) };
  };

  it('keep an error\'s message and stack, and never a secret, however the error is logged', () => {
    const canary = 'CanaryLogPw_91x';
    registerSecret(canary);
    const { lines, log } = capture();
    const error = new Error(`connect to postgres://app:${canary}@db:5432/app failed`);
    log.error(error);
    log.warn({ err: error }, 'could not connect');
    log.child({ target: `postgres://app:${canary}@db/app` }).info('child binding');
    log.info('%s and %o', canary, { nested: { deeper: { deepest: { value: canary } } } });
    const text = lines.join('');
    expect(text).not.toContain(canary);
    const warned = JSON.parse(lines[1]!) as { err: { message: string; stack: string } };
    expect(warned.err.message).toBe('connect to postgres://app:***@db:5432/app failed');
    expect(warned.err.stack).toContain('at ');
  });
});
