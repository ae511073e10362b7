/**
 * CONSOLE_TOKENS: `name:token` pairs, comma-separated. The name is what the audit log records
 * for every action taken with that token; the token is a secret, registered as soon as it is
 * read (when long enough to be one), and never shown in a message (not even in the one that
 * says the value is wrong).
 */
import { z } from 'zod';
import { registerSecret } from '../secrets.js';

export interface ConsoleToken {
  /** Who acts: `[a-z0-9._-]+`, unique. Shown in the audit log and the console. */
  name: string;
  /** The secret: at least 16 characters, unique. */
  token: string;
}

export const TOKEN_NAME = /^[a-z0-9._-]+$/;
export const MIN_TOKEN_LENGTH = 16;

/** Why one `name:token` entry (the `index`th, from 1) is wrong, without showing the token. */
function entryProblem(entry: string, index: number): string | undefined {
  const colon = entry.indexOf(':');
  if (colon < 0) return `entry ${index} is not name:token`;
  const name = entry.slice(0, colon).trim();
  const token = entry.slice(colon + 1).trim();
  // A name that is not a name may be a token pasted the wrong way round: it is not shown either.
  if (!TOKEN_NAME.test(name)) return `entry ${index}: the name must be lower-case letters, digits, ".", "_" or "-"`;
  if (token.length < MIN_TOKEN_LENGTH) return `the token of ${name} is shorter than ${MIN_TOKEN_LENGTH} characters`;
  if (/[\s,]/.test(token)) return `the token of ${name} contains a space or a comma`;
  return undefined;
}

/** Duplicate names or tokens among well-formed entries. */
function duplicates(tokens: readonly ConsoleToken[]): string[] {
  const problems: string[] = [];
  const names = new Set<string>();
  const owners = new Map<string, string>();
  for (const { name, token } of tokens) {
    if (names.has(name)) problems.push(`the name ${name} appears twice`);
    names.add(name);
    const owner = owners.get(token);
    if (owner !== undefined) problems.push(`${owner} and ${name} have the same token`);
    owners.set(token, name);
  }
  return problems;
}

export const consoleTokens = z
  .string()
  .optional()
  .transform((value, ctx): ConsoleToken[] => {
    if (value === undefined || value.trim() === '') return [];
    const entries = value.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '');
    // Registered before any other check: whatever else is wrong with the value, its tokens stay out of every line.
    // A token too short to be valid is not: masking "short" would mangle ordinary words (the "shorter" of the message
    // below); it is never shown anyway, and the value is refused.
    for (const entry of entries) {
      const token = entry.slice(entry.indexOf(':') + 1).trim();
      if (token.length >= MIN_TOKEN_LENGTH) registerSecret(token);
    }
    const problems = entries.map((entry, index) => entryProblem(entry, index + 1)).filter((problem): problem is string => problem !== undefined);
    const tokens = entries.map((entry) => {
      const colon = entry.indexOf(':');
      return { name: entry.slice(0, colon).trim(), token: entry.slice(colon + 1).trim() };
    });
    if (problems.length === 0) problems.push(...duplicates(tokens));
    if (problems.length > 0) {
      ctx.addIssue({ code: 'custom', message: `${problems.join('; ')} (expected name:token pairs separated by commas, each token at least ${MIN_TOKEN_LENGTH} characters)` });
      return z.NEVER;
    }
    return tokens;
  });
