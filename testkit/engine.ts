/** In-process engines over a test database, for behaviour that is not about processes. */
import { defineReconciler, resolveReconciler, type Reconciler, type ReconcilerDefinition } from '../src/reconciler.js';
import { Engine } from '../src/engine/engine.js';
import type { Db } from '../src/reconciler.js';
import type { Logger } from 'pino';
import { silentLog } from './database.js';

/** A resolved reconciler from an inline definition, as the loader would build it (`source` stands for its file). */
export function reconciler<Item>(name: string, definition: ReconcilerDefinition<Item>, source = `inline:${name}`): Reconciler {
  return resolveReconciler(name, source, defineReconciler(definition)) as Reconciler;
}

export function engine(db: Db, reconcilers: Reconciler[], options: { leaseMs?: number; host?: string; pid?: number; random?: () => number; log?: Logger } = {}): Engine {
  return new Engine({ db, reconcilers, log: options.log ?? silentLog, leaseMs: options.leaseMs ?? 10_000, random: options.random ?? (() => 0.5), ...(options.host ? { host: options.host } : {}), ...(options.pid ? { pid: options.pid } : {}) });
}

/** Items 1..n as a keyset-paged scan over an in-memory list. */
export function numbers(n: number): (request: { after: { n: number } | undefined; limit: number }) => Promise<{ n: number }[]> {
  return async ({ after, limit }) => {
    const start = (after?.n ?? 0) + 1;
    const items: { n: number }[] = [];
    for (let i = start; i <= n && items.length < limit; i++) items.push({ n: i });
    return items;
  };
}

/** A promise with its resolve function, for holding items in flight. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}
