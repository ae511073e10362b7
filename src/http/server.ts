/**
 * The daemon's operations endpoint: `/healthz` (alive: event loop not stalled, and making progress), `/readyz`
 * (database reachable, migrations applied, job files loaded, not shutting down) and
 * `/metrics` (Prometheus text format). Every other path is the operator console's (src/console/server.ts).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { coerceError, errorSummary } from '../errors.js';
import { within } from '../timeout.js';

export interface Check {
  ok: boolean;
  detail: string;
}

export interface OpsServerOptions {
  host: string;
  port: number;
  log: Logger;
  /** Longest event-loop delay tolerated by /healthz. */
  maxEventLoopLagMs: number;
  readiness: () => Promise<Record<string, Check>>;
  /** Whether the daemon makes progress (see liveness.ts); /healthz fails with its reason when it does not. */
  liveness?: () => { ok: boolean; reason?: string };
  metrics: () => Promise<{ contentType: string; body: string }>;
  /** The operator console, which answers every other path; none when CONSOLE=off. */
  console?: (req: IncomingMessage, res: ServerResponse) => Promise<void>;
}

const OPS_PATHS = new Set(['/healthz', '/readyz', '/metrics']);

export interface OpsServer {
  url: string;
  close(): Promise<void>;
}

const CHECK_TIMEOUT_MS = 2_000;

export async function startOpsServer(options: OpsServerOptions): Promise<OpsServer> {
  // Event-loop lag: how late a 250 ms timer fires. A loop stalled for long cannot answer at all; this catches the slow-but-alive case.
  let lastTick = performance.now();
  let lagMs = 0;
  const lagTimer = setInterval(() => {
    const now = performance.now();
    lagMs = Math.max(0, now - lastTick - 250);
    lastTick = now;
  }, 250);
  lagTimer.unref();

  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const reply = (status: number, body: string, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    const handle = async () => {
      if (!OPS_PATHS.has(path) && options.console) return options.console(req, res);
      if (!OPS_PATHS.has(path)) return reply(404, JSON.stringify({ error: 'not found: the console is off (CONSOLE=off); try /healthz, /readyz or /metrics' }));
      if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, JSON.stringify({ error: 'GET only' }));
      if (path === '/healthz') {
        const progress = options.liveness?.() ?? { ok: true };
        const lagOk = lagMs <= options.maxEventLoopLagMs;
        const status = !lagOk ? 'event loop stalled' : !progress.ok ? 'not progressing' : 'ok';
        return reply(status === 'ok' ? 200 : 503, JSON.stringify({ status, eventLoopLagMs: Math.round(lagMs), ...(progress.reason ? { reason: progress.reason } : {}) }));
      }
      if (path === '/readyz') {
        let checks: Record<string, Check>;
        try {
          checks = await within(options.readiness(), CHECK_TIMEOUT_MS * 2, 'readiness');
        } catch (error) {
          checks = { readiness: { ok: false, detail: errorSummary(coerceError(error), 200) } };
        }
        const ready = Object.values(checks).every((c) => c.ok);
        return reply(ready ? 200 : 503, JSON.stringify({ status: ready ? 'ready' : 'not ready', checks }));
      }
      if (path === '/metrics') {
        const { contentType, body } = await options.metrics();
        return reply(200, body, contentType);
      }
    };
    handle().catch((error: unknown) => {
      options.log.warn({ err: coerceError(error), path }, 'operations endpoint: request failed');
      if (!res.headersSent) reply(500, JSON.stringify({ error: errorSummary(coerceError(error), 200) }));
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, resolve);
  }).catch((error: unknown) => {
    clearInterval(lagTimer);
    throw error;
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${options.host === '0.0.0.0' || options.host === '::' ? '127.0.0.1' : options.host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(lagTimer);
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export { CHECK_TIMEOUT_MS };
