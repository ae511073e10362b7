/** The live progress line of a manual pass on a terminal: done/found, failed, rate. */
import type { EngineEvents } from '../engine/events.js';

export class Progress {
  #found = 0;
  #done = 0;
  #failed = 0;
  #name = '';
  #started = performance.now();
  #shown = false;
  readonly #timer: NodeJS.Timeout;
  readonly #unsubscribe: (() => void)[];

  private constructor(events: EngineEvents, private readonly stream: NodeJS.WriteStream) {
    this.#unsubscribe = [
      events.on('pass:start', (p) => {
        this.#name = p.reconciler;
        this.#found = this.#done = this.#failed = 0;
        this.#started = performance.now();
      }),
      events.on('page:scanned', (p) => (this.#found += p.items)),
      events.on('item:done', () => this.#done++),
      events.on('item:deferred', () => this.#done++),
      events.on('item:failed', () => {
        this.#done++;
        this.#failed++;
      }),
    ];
    this.#timer = setInterval(() => this.#draw(), 200);
    this.#timer.unref();
  }

  /** A progress line on stderr, or undefined when stderr is not a terminal. */
  static forStderr(events: EngineEvents): Progress | undefined {
    return process.stderr.isTTY ? new Progress(events, process.stderr) : undefined;
  }

  #draw(): void {
    if (!this.#name) return;
    const seconds = (performance.now() - this.#started) / 1000;
    const rate = seconds > 0 ? Math.round(this.#done / seconds) : 0;
    this.stream.write(`\r\x1b[2K${this.#name}: ${this.#done}/${this.#found} done, ${this.#failed} failed, ${rate}/s`);
    this.#shown = true;
  }

  /** Erases the line so that other output starts on a clean line. */
  clear(): void {
    if (this.#shown) this.stream.write('\r\x1b[2K');
    this.#shown = false;
  }

  stop(): void {
    clearInterval(this.#timer);
    for (const off of this.#unsubscribe) off();
    this.clear();
  }
}
