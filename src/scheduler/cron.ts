/**
 * Cron arithmetic on top of node-cron's own matcher, so that ticks, "next run" and
 * catch-up agree exactly with the clock that fires them.
 */
import nodeCron, { type ScheduledTask, type TaskFn } from 'node-cron';

interface TimeMatcher {
  getNextMatch(date: Date): Date;
}

export class CronSchedule {
  readonly task: ScheduledTask;
  readonly #matcher: TimeMatcher;

  constructor(readonly expression: string, readonly timezone: string, onTick: TaskFn = () => undefined, name?: string) {
    this.task = nodeCron.createTask(expression, onTick, { timezone, ...(name ? { name } : {}) });
    // node-cron 4.6 keeps its matcher on the task; it is pinned, and test/cron.test.ts fails if this moves.
    const matcher = (this.task as unknown as { timeMatcher?: TimeMatcher }).timeMatcher;
    if (typeof matcher?.getNextMatch !== 'function') throw new Error('node-cron internals changed: task.timeMatcher.getNextMatch is missing');
    this.#matcher = matcher;
  }

  /** The first tick strictly after `date`. */
  next(date: Date): Date {
    return this.#matcher.getNextMatch(date);
  }

  /** The latest tick at or before `date`, or undefined if there was none in the last 400 days. */
  previous(date: Date): Date | undefined {
    const limit = 400 * 86_400_000;
    for (let span = 1_000; span <= limit * 4; span *= 4) {
      let tick = this.next(new Date(date.getTime() - Math.min(span, limit)));
      if (tick.getTime() > date.getTime()) continue;
      let latest = tick;
      while (tick.getTime() <= date.getTime()) {
        latest = tick;
        tick = this.next(tick);
      }
      return latest;
    }
    return undefined;
  }
}
