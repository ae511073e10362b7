/**
 * The line a page shows after an action ("2 item(s) due now", or why it was refused). It travels
 * in a short-lived cookie that only this console sets, never in the URL: a link such as
 * `/?error=…sign in at https://evil.example` cannot make the console show an official-looking
 * alert. The next full page shows it and clears it; the live-update fragments leave it alone.
 */
import type { IncomingMessage } from 'node:http';
import { cookieValue } from './auth.js';

export const FLASH_COOKIE = 'reconciler_flash';
/** A minute: long enough for the redirect after the action, short enough to go stale unseen. */
const FLASH_SECONDS = 60;
/** Characters of the line kept: a cookie holds about 4 KB. */
const FLASH_CHARACTERS = 500;

export interface Flash {
  kind: 'done' | 'error';
  text: string;
}

function cookie(value: string, maxAge: number, secure: boolean): string {
  return [`${FLASH_COOKIE}=${value}`, 'HttpOnly', 'SameSite=Strict', 'Path=/', `Max-Age=${maxAge}`, ...(secure ? ['Secure'] : [])].join('; ');
}

/** The Set-Cookie header that carries `flash` to the next page. */
export function flashCookie(flash: Flash, secure: boolean): string {
  return cookie(`${flash.kind}.${Buffer.from(flash.text.slice(0, FLASH_CHARACTERS), 'utf8').toString('base64url')}`, FLASH_SECONDS, secure);
}

/** The Set-Cookie header that clears the flash once shown. */
export const clearFlashCookie = (secure: boolean) => cookie('', 0, secure);

/** The request's flash, if it carries a well-formed one. */
export function requestFlash(req: IncomingMessage): Flash | undefined {
  const match = /^(done|error)\.([\w-]*)$/.exec(cookieValue(req, FLASH_COOKIE) ?? '');
  if (!match) return undefined;
  const text = Buffer.from(match[2]!, 'base64url').toString('utf8').slice(0, FLASH_CHARACTERS);
  return text ? { kind: match[1] as Flash['kind'], text } : undefined;
}
