import { describe, expect, it } from 'vitest';
import type { RunRequest } from '../src/engine/engine.js';
import { Lane, type PassEnd, type PassOptions } from '../src/scheduler/lane.js';
import { TimerSet } from '../src/scheduler/timers.js';

/** A lane whose passes end when the test says: each call to run is recorded with a function that ends it. */
function fakeLane() {
  const runs: { request: RunRequest; options: PassOptions; end(how?: Partial<PassEnd>): Promise<void> }[] = [];
  const timers = new TimerSet();
  const lane = new Lane('r', 1, {
    started: () => true,
    timers,
    run: (_name, request, options) =>
      new Promise<PassEnd>((resolve) => {
        runs.push({ request, options, end: async (how) => void resolve({ ran: true, gaveUp: false, ...how }) });
      }),
  });
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const triggers = () => runs.map((r) => r.request.trigger);
  return { lane, runs, timers, settle, triggers };
}

const tick = new Date('2026-01-01T00:00:00Z');

describe('Lane', () => {
  it('runs a tick that meets one of its extra passes right after it, and passes one that meets a schedule pass to the engine', async () => {
    const { lane, runs, settle, triggers } = fakeLane();
    expect(lane.request({ kind: 'wake' })).toBe('started');
    expect(lane.request({ kind: 'tick', tick })).toBe('waiting');
    await runs[0]!.end();
    await settle();
    expect(triggers()).toEqual(['wake', 'schedule']);
    expect(runs[1]!.options.own).toBe(true);
    expect(lane.request({ kind: 'tick', tick })).toBe('started'); // the engine answers "running here" and counts a skipped tick
    expect(triggers()).toEqual(['wake', 'schedule', 'schedule']);
    await runs[2]!.end({ ran: false });
    await settle();
    expect(lane.busy).toBe(true); // the engine's answer does not end the lane's own pass
  });

  it('folds wakes during a pass into one pass after it; a waiting tick goes first, the wake still follows', async () => {
    const { lane, runs, settle, triggers } = fakeLane();
    lane.request({ kind: 'handover', runId: 7 });
    lane.request({ kind: 'wake' });
    lane.request({ kind: 'wake' });
    lane.request({ kind: 'tick', tick });
    await runs[0]!.end({ ran: false });
    await settle();
    expect(triggers()).toEqual(['handover', 'schedule']);
    await runs[1]!.end({ ran: false });
    await settle();
    expect(triggers()).toEqual(['handover', 'schedule', 'wake']);
    await runs[2]!.end();
    await settle();
    expect(triggers()).toEqual(['handover', 'schedule', 'wake']);
    expect(lane.busy).toBe(false);
  });

  it('forgets a waiting hand-over once a pass of the lane ran, and runs it after one that did not', async () => {
    const ran = fakeLane();
    ran.lane.request({ kind: 'wake' });
    ran.lane.request({ kind: 'handover', runId: 3 });
    await ran.runs[0]!.end();
    await ran.settle();
    expect(ran.triggers()).toEqual(['wake']);

    const refused = fakeLane();
    refused.lane.request({ kind: 'wake' });
    refused.lane.request({ kind: 'handover', runId: 3 });
    await refused.runs[0]!.end({ ran: false });
    await refused.settle();
    expect(refused.runs[1]!.request).toMatchObject({ trigger: 'handover', expectLastRunId: 3, partition: 1 });
  });

  it('drops all that waits when its pass gave the partition up', async () => {
    const { lane, runs, settle, triggers } = fakeLane();
    lane.request({ kind: 'wake' });
    lane.request({ kind: 'wake' });
    lane.request({ kind: 'tick', tick });
    await runs[0]!.end({ gaveUp: true });
    await settle();
    expect(triggers()).toEqual(['wake']);
    expect(lane.busy).toBe(false);
  });

  it('keeps only the earliest retry, and runs it only when the lane is idle', async () => {
    const { lane, runs, settle, timers, triggers } = fakeLane();
    lane.retryAt(Date.now() + 30);
    lane.retryAt(Date.now() + 10_000); // later: ignored
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(triggers()).toEqual(['retry']);
    lane.retryAt(Date.now() + 10);
    await new Promise((resolve) => setTimeout(resolve, 40));
    expect(triggers()).toEqual(['retry']); // busy: dropped
    await runs[0]!.end();
    await settle();
    timers.clear();
  });
});
