/**
 * Which `Host` headers the console answers: the defence against DNS rebinding, where a page on
 * another site resolves its own name to the console's address and reads it with the victim's
 * browser. CONSOLE_HOSTS names them; unset, a console bound to loopback answers only the
 * loopback names, and one bound to every address (a pod behind an ingress) answers any.
 */
import { z } from 'zod';

/** The names a loopback console answers when CONSOLE_HOSTS is unset. */
export const LOOPBACK_HOSTS: readonly string[] = ['localhost', '127.0.0.1', '[::1]'];
const LOOPBACK_ADDRESSES = new Set(['localhost', '127.0.0.1', '::1', '[::1]']);

/** A host name or IPv4 address, or an IPv6 address in brackets; then an optional port. */
const HOST_ENTRY = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::\d{1,5})?$/;

/**
 * The host name of a `Host` header or a CONSOLE_HOSTS entry, lower-case, without its port; an
 * IPv6 address in brackets (`[::1]`, also when given bare as `::1`).
 */
export function hostName(value: string): string {
  const host = value.trim().toLowerCase();
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1);
  if (host.split(':').length > 2) return `[${host}]`; // a bare IPv6 address
  return host.split(':')[0]!;
}

/** CONSOLE_HOSTS: host names, comma-separated, each with an optional port (ignored). Unset or empty: undefined. */
export const consoleHosts = z
  .string()
  .optional()
  .transform((value, ctx): string[] | undefined => {
    if (value === undefined || value.trim() === '') return undefined;
    const entries = value.split(',').map((entry) => entry.trim().toLowerCase()).filter((entry) => entry !== '');
    const bad = entries.filter((entry) => !HOST_ENTRY.test(entry) && !HOST_ENTRY.test(hostName(entry)));
    if (bad.length > 0) {
      ctx.addIssue({ code: 'custom', message: `${bad.map((entry) => JSON.stringify(entry)).join(', ')} ${bad.length === 1 ? 'is not a host name' : 'are not host names'} (expected names such as console.example.com or console.example.com:443, separated by commas)` });
      return z.NEVER;
    }
    return [...new Set(entries.map(hostName))];
  });

/**
 * The host names a console bound to `listenHost` answers: CONSOLE_HOSTS when set; else the
 * loopback names (and the address itself) for a loopback address; else undefined (any `Host`).
 */
export function allowedHosts(listenHost: string, configured: readonly string[] | undefined): ReadonlySet<string> | undefined {
  if (configured !== undefined) return new Set(configured.map(hostName));
  const bound = listenHost.trim().toLowerCase();
  if (LOOPBACK_ADDRESSES.has(bound) || /^127(?:\.\d{1,3}){3}$/.test(bound)) return new Set([...LOOPBACK_HOSTS, hostName(bound)]);
  return undefined;
}
