/**
 * Manual actions: what a person decides for one item that its reconciler cannot decide
 * itself, declared in the definition's `actions` and run from the console or `reconciler act`.
 */
import type { Logger } from 'pino';
import type { Db } from './reconciler.js';

/** What a manual action gets besides the item's key. */
export interface ActionContext {
  /** The database, inside the transaction that also records the action in the audit log: both happen, or neither. */
  db: Db;
  /** A child logger carrying reconciler, action, key and actor. */
  log: Logger;
  /** Who asked: a console token's name, or `cli:<user>@<host>`. */
  actor: string;
  /** Why, in the operator's words (required). */
  note: string;
  /** Aborted when the action's time limit (30 s) elapses. */
  signal: AbortSignal;
}

/**
 * A manual action: something a person decides for one item that the reconciler cannot decide
 * itself ("settled by hand: refunded by phone"). It changes the system's state so that the scan
 * stops finding the item (or finds it fixed); the engine records who ran it, on which item and
 * why, in the audit log, in the same transaction. Callable from the console and from
 * `reconciler act <name> <key> <action> --note …`.
 */
export interface ManualAction {
  /** One line for the console's button and `reconciler act <name> --help`: what it records. */
  description: string;
  /**
   * Does it for the item `key`. Throw to refuse, with a message the operator can act on
   * ("return 16 is already settled"); nothing is then recorded. Return a line saying what was
   * done, for the operator and the audit log.
   */
  run(key: string, ctx: ActionContext): Promise<string | void>;
}
