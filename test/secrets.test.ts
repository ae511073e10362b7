import { describe, expect, it } from 'vitest';
import { describeUrl, registerSecret, scrub } from '../src/secrets.js';
import { errorSummary } from '../src/errors.js';

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
