/**
 * The console's pages, as the server calls them: route a request to its page, render it (or
 * only its `<main>` for the live-update script), the sign-in page, and the static assets.
 * Every page reads through the operator layer (src/operator/), which the CLI shares.
 */
import { html } from '../html.js';
import { assetFor } from '../assets/index.js';
import { auditPage } from './audit.js';
import { parseHistoryFilter } from './filters.js';
import { itemPage } from './item.js';
import { layout, notFound, returnPath, signInPage, type PageContent, type Viewer } from './layout.js';
import { auditLog, failingItems, failureGroups, itemView, overview, passErrors, passHistory, type OperatorContext } from '../../operator/views.js';
import { GROUP_ID } from '../../store/failure-groups.js';
import { overviewPage } from './overview.js';
import { reconcilerPage } from './reconciler.js';

export interface ConsoleSession {
  name: string;
  csrf: string;
}

export interface PageRequest {
  path: string;
  query: URLSearchParams;
  session: ConsoleSession | null;
  /** CONSOLE_TOKENS configured: show a sign-in link; when signed in, the action forms. */
  actionsEnabled: boolean;
  ctx: OperatorContext;
  /** True when the live-update script asks for the `<main>` content only. */
  fragment: boolean;
  /** The line after an action, from the console's flash cookie (never from the URL); only on a full page. */
  flash?: { kind: 'done' | 'error'; text: string };
}

const LIST_LIMIT = 50;

/** The path's segments, decoded; undefined when one is not valid percent-encoding. */
function segments(path: string): string[] | undefined {
  try {
    return path.split('/').filter((s) => s !== '').map(decodeURIComponent);
  } catch {
    return undefined;
  }
}

async function reconcilerContent(req: PageRequest, name: string, viewer: Viewer): Promise<PageContent | undefined> {
  const reconciler = req.ctx.reconcilers.find((r) => r.name === name);
  if (!reconciler) return undefined;
  const db = req.ctx.db;
  const dead = req.query.get('dead') === '1';
  const group = GROUP_ID.test(req.query.get('group') ?? '') ? req.query.get('group')! : undefined;
  const filter = { ...parseHistoryFilter(req.query, reconciler.partitions), group, dead };
  // One after another: a page reads in one snapshot transaction, on one connection.
  const errors = await passErrors(db, name);
  const groups = await failureGroups(db, { reconciler: name, deadOnly: dead, limit: LIST_LIMIT });
  const items = await failingItems(db, { reconciler: name, deadOnly: dead, group, limit: LIST_LIMIT });
  const history = await passHistory(db, { reconciler: name, status: filter.status, trigger: filter.trigger, partition: filter.partition, limit: LIST_LIMIT });
  return reconcilerPage({ reconciler, passErrors: errors, groups, items, history, filter }, viewer);
}

/**
 * The key of an item page: `/reconcilers/<name>/item?key=<key>` (what the pages link to: a key
 * like `..` survives there), or `/reconcilers/<name>/items/<key>` (links shared before).
 */
function itemKey(req: PageRequest, parts: readonly string[]): string | undefined {
  if (parts.length === 3 && parts[2] === 'item') return req.query.get('key') ?? undefined;
  if (parts.length === 4 && parts[2] === 'items') return parts[3];
  return undefined;
}

async function content(req: PageRequest, parts: readonly string[], viewer: Viewer): Promise<PageContent | 'not found' | undefined> {
  if (parts.length === 0) return overviewPage(await overview(req.ctx, viewer.now), viewer);
  if (parts[0] === 'audit' && parts.length === 1) {
    const reconciler = req.query.get('reconciler') || undefined;
    return auditPage(await auditLog(req.ctx.db, { reconciler, limit: 200 }), reconciler, viewer);
  }
  if (parts[0] !== 'reconcilers' || parts.length < 2) return undefined;
  const name = parts[1]!;
  const known = req.ctx.reconcilers.some((r) => r.name === name);
  if (parts.length === 2) return (await reconcilerContent(req, name, viewer)) ?? 'not found';
  const key = itemKey(req, parts);
  if (key === undefined) return undefined;
  return known ? itemPage(await itemView(req.ctx, name, key), viewer) : 'not found';
}

/** The page at `req.path`, or undefined when there is no such page. */
export async function renderPage(req: PageRequest): Promise<{ status: number; html: string } | undefined> {
  const parts = segments(req.path);
  if (!parts) return undefined;
  const viewer: Viewer = { session: req.session, actionsEnabled: req.actionsEnabled, returnTo: returnPath(req.path, req.query), now: new Date(), flash: req.flash };
  const found = await content(req, parts, viewer);
  if (found === undefined) return undefined;
  if (found === 'not found') {
    const page = notFound(html`No reconciler named <code>${parts[1] ?? ''}</code> is loaded.`);
    return { status: 404, html: layout(page, viewer, req.fragment) };
  }
  return { status: 200, html: layout(found, viewer, req.fragment) };
}

/** The sign-in page: a form posting `token` and `return_to` to `/sign-in`. */
export function renderSignIn(options: { error?: string; returnTo: string }): string {
  return signInPage(options);
}

/** A static asset by path (`/assets/console.js`, `/assets/console.css`), or undefined. */
export function asset(path: string): { contentType: string; body: string | Buffer } | undefined {
  return assetFor(path);
}
