/**
 * One pass's item failures, grouped by what they say. An outage fails every item alike: the log
 * gets the first failure of each kind in full, and one line per kind at the end of the pass
 * ("428 items failed like this"), not a warning per item per attempt. Each item's own line is
 * still there at debug level. A dead item is always logged: it waits for a person.
 */
import type { Logger } from 'pino';

interface Group {
  count: number;
  example: string;
  keys: string[];
}

/** What two failures of the same kind share: their text with numbers and ids blanked out. */
function kindOf(message: string): string {
  return message
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi, '…')
    .replace(/\d+(?:\.\d+)?/g, '#')
    .slice(0, 200);
}

export class FailureDigest {
  readonly #groups = new Map<string, Group>();

  /** Counts a failure; true when it is the first of its kind in this pass (log it in full). */
  note(key: string, message: string): boolean {
    const kind = kindOf(message);
    const group = this.#groups.get(kind);
    if (group) {
      group.count++;
      if (group.keys.length < 10) group.keys.push(key);
      return false;
    }
    this.#groups.set(kind, { count: 1, example: message, keys: [key] });
    return true;
  }

  /** One warning per kind that more than one item failed with. */
  summarise(log: Logger): void {
    for (const group of this.#groups.values()) {
      if (group.count < 2) continue;
      log.warn(
        { failedItems: group.count, keys: group.keys, error: group.example },
        `${group.count} items failed like this in the pass (each at debug level; e.g. ${group.keys.slice(0, 3).join(', ')}): ${group.example.slice(0, 300)}`,
      );
    }
  }
}
