/**
 * Cron arithmetic on node-cron's own matcher, so that ticks, "next run" and catch-up agree
 * exactly with the clock that fires them (including time zones and daylight saving).
 */
import nodeCron from 'node-cron';

interface TimeMatcher {
  getNextMatch(date: Date): Date;
}

const matchers = new Map<string, TimeMatcher>();

/** node-cron 4.6 keeps its matcher on the task; it is pinned, and test/schedule.test.ts fails if this moves. */
function matcherFor(expression: string, timezone: string): TimeMatcher {
  const cacheKey = `${timezone} ${expression}`;
  let matcher = matchers.get(cacheKey);
  if (!matcher) {
    const task = nodeCron.createTask(expression, () => undefined, { timezone });
    matcher = (task as unknown as { timeMatcher?: TimeMatcher }).timeMatcher;
    void task.destroy(); // only its matcher is needed: leave nothing in node-cron's task registry
    if (typeof matcher?.getNextMatch !== 'function') throw new Error('node-cron internals changed: task.timeMatcher.getNextMatch is missing');
    matchers.set(cacheKey, matcher);
  }
  return matcher;
}

/** The first tick strictly after `date`. */
export function nextTick(expression: string, timezone: string, date: Date): Date {
  return matcherFor(expression, timezone).getNextMatch(date);
}

/** The latest tick at or before `date`, or undefined if there was none in the last 400 days. */
export function previousTick(expression: string, timezone: string, date: Date): Date | undefined {
  const matcher = matcherFor(expression, timezone);
  const limit = 400 * 86_400_000;
  for (let span = 1_000; span <= limit * 4; span *= 4) {
    let tick = matcher.getNextMatch(new Date(date.getTime() - Math.min(span, limit)));
    if (tick.getTime() > date.getTime()) continue;
    let latest = tick;
    while (tick.getTime() <= date.getTime()) {
      latest = tick;
      tick = matcher.getNextMatch(tick);
    }
    return latest;
  }
  return undefined;
}
