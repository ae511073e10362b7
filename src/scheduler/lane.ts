/**
 * A lane: one partition of one reconciler (the whole reconciler when it has none), as this
 * scheduler sees it. It holds what runs there (the trigger of the pass this scheduler launched,
 * if any) and what waits (a tick, a wake, a hand-over; a retry timer; a takeover watch). Every
 * request goes through `request`, and `#next` decides what runs when the lane's pass ends.
 *
 * The rules, in one place:
 * - A tick that meets a retry, wake, hand-over or hand-back pass here (this scheduler's own
 *   extras) runs right after it; one that meets a schedule or catch-up pass goes to the engine,
 *   which counts a skipped tick.
 * - Wakes and hand-overs that come during a pass wait for its end; wakes coalesce into one pass.
 * - After a pass, a waiting tick runs first, then a wake, then a hand-over; a tick's full pass
 *   serves a wake too, but if another replica served that tick it does not run, so the wake
 *   still follows it.
 * - A hand-over is moot once a pass launched here ran the partition: the run it names is no
 *   longer the last. A pass that gave its partition up drops all that waits: it is the new
 *   owner's to serve (or this one's, after the grace).
 * - Only the earliest retry is kept; one takeover watch at a time.
 */
import type { Logger } from 'pino';
import type { Engine, RunRequest } from '../engine/engine.js';
import type { PassResult, Trigger } from '../engine/result.js';
import type { TimerSet } from './timers.js';

/** Passes this scheduler adds between ticks: a tick that meets one here runs after it rather than being skipped. */
const EXTRA_TRIGGERS: ReadonlySet<Trigger> = new Set<Trigger>(['retry', 'wake', 'handover', 'handback']);

/** A pass to start, without its partition (the lane's). */
export type LaneRun = Omit<RunRequest, 'partition' | 'handOver'>;

export interface PassOptions {
  /**
   * The partition was claimed as this replica's own (not swept up or taken over), so the pass
   * gives it up if another replica comes to own it.
   */
  own: boolean;
  /** Called with the result when the pass ran. */
  onRan?: (result: PassResult) => void;
}

/** How a pass ended, for what follows it. */
export interface PassEnd {
  ran: boolean;
  /** It gave its partition up to another replica. */
  gaveUp: boolean;
}

export type LaneRequest =
  /** A tick of a partition claimed as this replica's own. */
  | { kind: 'tick'; tick: Date }
  /** Wake-on-change, for an own partition. */
  | { kind: 'wake' }
  /** Another replica gave this own partition up in run `runId`. */
  | { kind: 'handover'; runId: number }
  /** A pass now: if one of the lane's runs, the engine answers "running here". */
  | ({ kind: 'now'; run: LaneRun } & PassOptions)
  /** A pass now if the lane is idle; nothing otherwise. */
  | ({ kind: 'if-idle'; run: LaneRun } & PassOptions);

/** What a request did: started a pass (or asked the engine), left it waiting for the running pass, or nothing. */
export type Answer = 'started' | 'waiting' | 'dropped';

export interface LaneHost {
  /** A stopped scheduler starts nothing. */
  started(): boolean;
  /** Runs one pass and acts on its outcome; never rejects. */
  run(name: string, request: RunRequest, options: PassOptions): Promise<PassEnd>;
  timers: TimerSet;
}

/** What the scheduler's parts (sweep, takeover, hand-over) share: its engine, log and timers, whether it runs, and its lanes. */
export interface LaneContext {
  engine: Engine;
  log: Logger;
  timers: TimerSet;
  started(): boolean;
  lane(name: string, partition: number): Lane;
}

/** A part of the scheduler that works on its lanes (sweep, takeover, hand-over), with options of its own. */
export abstract class LanePart<Options> {
  constructor(
    protected readonly context: LaneContext,
    protected readonly options: Options,
  ) {}
}

/** What waits for the lane's running pass to end. */
interface Waiting {
  tick?: Date;
  wake: boolean;
  handOverRunId?: number;
}

const OWN: PassOptions = { own: true };

export class Lane {
  readonly #host: LaneHost;
  /** The trigger of the pass this scheduler launched here and that has not ended yet. */
  #running: Trigger | undefined;
  #waiting: Waiting = { wake: false };
  #retry: { at: number; timer: NodeJS.Timeout } | undefined;
  #watching = false;

  constructor(
    readonly name: string,
    readonly partition: number,
    host: LaneHost,
  ) {
    this.#host = host;
  }

  /** A pass launched here has not ended yet. */
  get busy(): boolean {
    return this.#running !== undefined;
  }

  request(request: LaneRequest): Answer {
    switch (request.kind) {
      case 'tick':
        if (this.#running !== undefined && EXTRA_TRIGGERS.has(this.#running)) return this.#wait({ tick: request.tick });
        return this.#start({ trigger: 'schedule', tick: request.tick }, OWN);
      case 'wake':
        return this.busy ? this.#wait({ wake: true }) : this.#start({ trigger: 'wake' }, OWN);
      case 'handover':
        return this.busy ? this.#wait({ handOverRunId: request.runId }) : this.#start({ trigger: 'handover', expectLastRunId: request.runId }, OWN);
      case 'if-idle':
        if (this.busy) return 'dropped';
        return this.#start(request.run, request);
      case 'now':
        return this.#start(request.run, request);
    }
  }

  /** Arms a retry pass at `at` (ms since the epoch), unless one is armed for earlier: only the earliest is kept. */
  retryAt(at: number): void {
    if (this.#retry && this.#retry.at <= at) return;
    this.cancelRetry();
    const timer = this.#host.timers.after(at - Date.now(), () => {
      this.#retry = undefined;
      this.request({ kind: 'if-idle', run: { trigger: 'retry' }, own: false });
    });
    this.#retry = { at, timer };
  }

  cancelRetry(): void {
    if (!this.#retry) return;
    this.#host.timers.cancel(this.#retry.timer);
    this.#retry = undefined;
  }

  /** A takeover watch is armed. */
  get watching(): boolean {
    return this.#watching;
  }

  /** Arms the lane's takeover watch: `look` runs after `waitMs`. */
  watch(waitMs: number, look: () => void): void {
    this.#watching = true;
    this.#host.timers.after(waitMs, () => {
      this.#watching = false;
      look();
    });
  }

  /** Forgets all that waits (the scheduler stops; its timers are cleared with its timer set). */
  forget(): void {
    this.#waiting = { wake: false };
    this.#retry = undefined;
    this.#watching = false;
  }

  #wait(what: Partial<Waiting>): Answer {
    this.#waiting = { ...this.#waiting, ...what };
    return 'waiting';
  }

  #start(run: LaneRun, options: PassOptions): Answer {
    if (!this.#host.started()) return 'dropped';
    const mine = this.#running === undefined; // else the engine answers "running here", and the running pass keeps the lane
    if (mine) this.#running = run.trigger;
    void this.#host.run(this.name, { ...run, partition: this.partition }, options).then((end) => {
      if (mine) this.#next(end);
    });
    return 'started';
  }

  /** The lane's pass ended: what came meanwhile runs now, a tick first, then a wake, then a hand-over. */
  #next({ ran, gaveUp }: PassEnd): void {
    this.#running = undefined;
    const { tick, wake, handOverRunId } = this.#waiting;
    this.#waiting = { wake: false };
    if (gaveUp) return;
    const handOver = ran ? undefined : handOverRunId;
    if (tick) {
      this.#waiting = { wake, handOverRunId: handOver };
      this.#start({ trigger: 'schedule', tick }, OWN);
    } else if (wake) {
      this.#waiting = { wake: false, handOverRunId: handOver };
      this.#start({ trigger: 'wake' }, OWN);
    } else if (handOver !== undefined) this.#start({ trigger: 'handover', expectLastRunId: handOver }, OWN);
  }
}
