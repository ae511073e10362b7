/**
 * The console's HTTP plumbing: the headers every response carries, replies, bounded form and
 * JSON bodies, and the one rule for where a form may send the browser back to.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { consoleBearer } from './auth.js';

/** No inline script or style, nothing from elsewhere, no framing. */
export const CONTENT_SECURITY_POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'same-origin',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
};

/** Largest request body: a form with a note fits many times over. */
export const MAX_BODY_BYTES = 16 * 1024;

/** A refusal with its status, answered as text, JSON or a redirect depending on who asked. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

export function send(res: ServerResponse, status: number, type: string, body: string | Buffer, headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': type, ...headers });
  res.end(body);
}

export const sendText = (res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}) => send(res, status, 'text/plain; charset=utf-8', `${text}\n`, headers);
export const sendHtml = (res: ServerResponse, status: number, html: string, headers: Record<string, string> = {}) => send(res, status, 'text/html; charset=utf-8', html, headers);
export const sendJson = (res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}) => send(res, status, 'application/json; charset=utf-8', JSON.stringify(value), headers);

export function redirect(res: ServerResponse, location: string, headers: Record<string, string> = {}): void {
  res.writeHead(303, { ...SECURITY_HEADERS, location, ...headers });
  res.end();
}

const contentType = (req: IncomingMessage) => (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();

/**
 * True when the client wants JSON back (a script), not a page or a redirect (a browser's form):
 * it accepts JSON, sends JSON, or signs in with a console bearer token. Any other
 * `Authorization` header (a proxy's Basic or OAuth credentials beside the session cookie) says nothing.
 */
export function wantsJson(req: IncomingMessage): boolean {
  return /\bapplication\/json\b/.test(req.headers.accept ?? '') || contentType(req) === 'application/json' || consoleBearer(req) !== undefined;
}

/** The fields of a urlencoded or JSON body of at most MAX_BODY_BYTES, as strings. */
export async function readFields(req: IncomingMessage): Promise<Record<string, string>> {
  const declared = Number(req.headers['content-length'] ?? 0);
  const tooLarge = () => new HttpError(413, `the request body is larger than ${MAX_BODY_BYTES / 1024} KiB`, { connection: 'close' });
  if (declared > MAX_BODY_BYTES) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw tooLarge();
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  const type = contentType(req);
  if (type === 'application/json') return jsonFields(text);
  if (type === 'application/x-www-form-urlencoded' || (type === '' && text === '')) return formFields(text);
  throw new HttpError(415, 'send the fields as application/x-www-form-urlencoded or application/json');
}

/** The fields of a urlencoded body; a malformed escape (`%E0%A4%A`, bytes that are not UTF-8) is a 400, not a silent U+FFFD. */
function formFields(text: string): Record<string, string> {
  for (const part of text.split('&')) {
    try {
      decodeURIComponent(part.replace(/\+/g, ' '));
    } catch {
      throw new HttpError(400, 'the form body is not valid URL encoding');
    }
  }
  return Object.fromEntries(new URLSearchParams(text));
}

function jsonFields(text: string): Record<string, string> {
  let value: unknown;
  try {
    value = text.trim() === '' ? {} : JSON.parse(text);
  } catch {
    throw new HttpError(400, 'the body is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new HttpError(400, 'the body must be a JSON object of fields');
  const fields: Record<string, string> = {};
  for (const [name, field] of Object.entries(value)) {
    if (typeof field === 'string') fields[name] = field;
    else if (typeof field === 'number' || typeof field === 'boolean') fields[name] = String(field);
    else if (field !== null) throw new HttpError(400, `the field ${JSON.stringify(name.slice(0, 40))} must be a string`);
  }
  return fields;
}

const BASE = 'http://console.invalid';

/**
 * Where a form sends the browser back to: a path on this console (`/…`, never `//host` or
 * `/\host`), percent-encoded, without the `done`/`error` parameters of older consoles; anything else is `/`.
 */
export function returnPath(given: string | undefined): string {
  if (!given || !given.startsWith('/') || given.startsWith('//') || given.startsWith('/\\')) return '/';
  try {
    const url = new URL(given, BASE);
    // `/.//host` normalises to `//host`, which a browser reads as another host.
    if (url.origin !== BASE || url.pathname.startsWith('//')) return '/';
    url.searchParams.delete('done');
    url.searchParams.delete('error');
    return `${url.pathname}${url.search}`;
  } catch {
    return '/';
  }
}

/** The client's address, for the sign-in rate limit and the log. */
export const clientAddress = (req: IncomingMessage) => req.socket.remoteAddress ?? 'unknown';
