/**
 * The engine's typed events. They feed the logs (and later metrics), and tests await
 * them instead of sleeping.
 */
import { EventEmitter, once } from 'node:events';
import type { LeaseHolder } from '../store/state.js';
import type { Outcome } from '../reconciler.js';
import type { PassResult } from './pass.js';
import type { Trigger } from '../store/runs.js';

export interface EngineEventMap {
  'pass:start': { reconciler: string; runId: number | null; trigger: Trigger; dryRun: boolean };
  'pass:finish': PassResult;
  'item:done': { reconciler: string; key: string; outcome: Outcome; note: string | undefined; durationMs: number; dryRun: boolean };
  'item:failed': { reconciler: string; key: string; error: Error; attempt: number; dead: boolean; dryRun: boolean };
  /** An item not attempted this pass: in backoff, or dead. */
  'item:deferred': { reconciler: string; key: string; reason: 'backoff' | 'dead'; nextAttemptAt: Date };
  'tick:skipped': { reconciler: string; tick: Date; reason: 'running' | 'held'; holder: LeaseHolder | undefined };
  'page:scanned': { reconciler: string; items: number };
}

export type EngineEventName = keyof EngineEventMap;

export class EngineEvents {
  readonly #emitter = new EventEmitter();

  constructor() {
    this.#emitter.setMaxListeners(100);
  }

  emit<E extends EngineEventName>(event: E, payload: EngineEventMap[E]): void {
    this.#emitter.emit(event, payload);
  }

  on<E extends EngineEventName>(event: E, listener: (payload: EngineEventMap[E]) => void): () => void {
    this.#emitter.on(event, listener);
    return () => this.#emitter.off(event, listener);
  }

  /** Resolves with the next `event` whose payload satisfies `predicate`. */
  async next<E extends EngineEventName>(event: E, predicate: (payload: EngineEventMap[E]) => boolean = () => true, signal?: AbortSignal): Promise<EngineEventMap[E]> {
    for (;;) {
      const [payload] = (await once(this.#emitter, event, signal ? { signal } : {})) as [EngineEventMap[E]];
      if (predicate(payload)) return payload;
    }
  }
}
