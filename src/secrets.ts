/**
 * Keeping secrets out of logs, metrics and CLI output. pino's `redact` only knows field
 * paths; a password inside an error message ("connect to postgres://app:hunter2@…")
 * gets through it. `scrub` removes known secret values and URL passwords from any text.
 */
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/[^:/@\s]*):([^@\s/]+)@/gi;

const knownSecrets = new Set<string>();

/** Registers a secret value (a password, an API key) that must never be printed. */
export function registerSecret(value: string | undefined): void {
  if (value && value.length >= 4) {
    knownSecrets.add(value);
    try {
      const encoded = encodeURIComponent(value);
      if (encoded !== value) knownSecrets.add(encoded);
      const decoded = decodeURIComponent(value);
      if (decoded !== value && decoded.length >= 4) knownSecrets.add(decoded);
    } catch {
      // not URI-encoded; the raw value is registered
    }
  }
}

/** Text with URL passwords replaced by `***` and every registered secret by `[redacted]`. */
export function scrub(text: string): string {
  let out = text.replace(URL_CREDENTIALS, '$1:***@');
  for (const secret of knownSecrets) if (out.includes(secret)) out = out.split(secret).join('[redacted]');
  return out;
}

/** `postgres://user:***@host:port/db` for a connection string; registers its password as a secret. */
export function describeDatabaseUrl(url: string): string {
  try {
    const parsed = new URL(url);
    registerSecret(parsed.password);
    if (parsed.password) parsed.password = '***';
    for (const key of ['password', 'sslpassword', 'sslkey']) {
      if (parsed.searchParams.has(key)) {
        registerSecret(parsed.searchParams.get(key) ?? undefined);
        parsed.searchParams.set(key, '***');
      }
    }
    return parsed.toString();
  } catch {
    return scrub(url);
  }
}
