/**
 * Keeping secrets out of logs, metrics and CLI output. pino's `redact` only knows field
 * paths; a password inside an error message ("connect to postgres://app:hunter2@…")
 * gets through it. `scrub` removes known secret values and URL passwords from any text.
 */
/** `scheme://user:password@`: the password goes. */
const URL_PASSWORD = /\b([a-z][a-z0-9+.-]*:\/\/[^:/@\s]*):([^@\s/]+)@/gi;
/** `http(s)://userinfo@`: for web APIs the user part is often the key itself (`https://sk_live_…:@api…`). */
const HTTP_USERINFO = /\b(https?:\/\/)[^/@\s]+@/gi;

const knownSecrets = new Set<string>();

/** Registers a secret value (a password, an API key) that must never be printed. */
export function registerSecret(value: string | undefined): void {
  if (value && value.length >= 4) {
    knownSecrets.add(value);
    const inJson = JSON.stringify(value).slice(1, -1); // as it appears inside a JSON log line
    if (inJson !== value) knownSecrets.add(inJson);
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
  let out = text.replace(URL_PASSWORD, '$1:***@').replace(HTTP_USERINFO, '$1***@');
  for (const secret of knownSecrets) if (out.includes(secret)) out = out.split(secret).join('[redacted]');
  return out;
}

/**
 * A URL safe to print: `postgres://user:***@host:port/db`, `https://***@api.example.com/`.
 * Registers its credentials as secrets, so they are scrubbed wherever else they turn up.
 */
export function describeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    registerSecret(parsed.password);
    if (parsed.password) parsed.password = '***';
    if (parsed.protocol === 'http:' || parsed.protocol === 'https:') {
      registerSecret(parsed.username);
      if (parsed.username) parsed.username = '***';
    }
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
