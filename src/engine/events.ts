/**
 * The engine's typed events. They feed the logs (and later metrics), and tests await
 * them instead of sleeping. A listener that throws is reported, never allowed to break
 * the pass that emitted the event.
 */
import type { LeaseHolder } from '../store/lease.js';
import type { Outcome } from '../reconciler.js';
import type { PassResult, Trigger } from './result.js';
import { coerceError } from '../errors.js';

export interface EngineEventMap {
  'pass:start': { reconciler: string; passId: number | null; trigger: Trigger; dryRun: boolean };
  'pass:finish': PassResult;
  'item:done': { reconciler: string; key: string; outcome: Outcome; note: string | undefined; durationMs: number; dryRun: boolean };
  'item:failed': { reconciler: string; key: string; error: Error; attempt: number; dead: boolean; dryRun: boolean };
  /** An item not attempted this pass: in backoff, or dead. */
  'item:deferred': { reconciler: string; key: string; reason: 'backoff' | 'dead'; nextAttemptAt: Date };
  'tick:skipped': { reconciler: string; tick: Date; reason: 'running' | 'held'; holder: LeaseHolder | undefined };
  'page:scanned': { reconciler: string; items: number };
}

export type EngineEventName = keyof EngineEventMap;
type Listener<E extends EngineEventName> = (payload: EngineEventMap[E]) => void;

export class EngineEvents {
  readonly #listeners = new Map<EngineEventName, Set<Listener<never>>>();

  /** @param onListenerError where a throwing listener is reported (the engine logs it). */
  constructor(private readonly onListenerError: (error: Error, event: EngineEventName) => void = () => undefined) {}

  emit<E extends EngineEventName>(event: E, payload: EngineEventMap[E]): void {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        (listener as Listener<E>)(payload);
      } catch (error) {
        this.onListenerError(coerceError(error), event);
      }
    }
  }

  /** Whether anything listens for `event`: an emitter per item skips building a payload nobody reads. */
  listening(event: EngineEventName): boolean {
    return (this.#listeners.get(event)?.size ?? 0) > 0;
  }

  /** Subscribes; returns the function that unsubscribes. */
  on<E extends EngineEventName>(event: E, listener: Listener<E>): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }
}
