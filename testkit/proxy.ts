/**
 * A TCP proxy that fails the way networks do below the driver: it resets every open
 * connection (both sides get an RST), or it stalls: it accepts new connections and forwards
 * nothing, and what is sent meanwhile is lost (as behind a NAT or a load balancer that lost
 * its state), while every socket stays open, and a side that closes meanwhile leaves the other
 * side open. After `resume()` it forwards again; `reset()` or `close()` ends what was left open.
 * Or it is cut: every connection reset, new ones refused (counted), until `restore()`.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

interface Pair {
  client: Socket;
  upstream: Socket;
}

export class FaultyProxy {
  /** Connections accepted so far. */
  accepted = 0;
  /** Connections refused since the last `cut()`. */
  attemptsWhileCut = 0;
  #stalled = false;
  #cut = false;
  readonly #pairs = new Set<Pair>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** Listens on a free port of 127.0.0.1, forwarding to `host:port`. */
  static async start(target: { host: string; port: number }): Promise<FaultyProxy> {
    let proxy!: FaultyProxy;
    const server = createServer((client) => proxy.#accept(client, target));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new FaultyProxy(server, (server.address() as { port: number }).port);
    return proxy;
  }

  #accept(client: Socket, target: { host: string; port: number }): void {
    if (this.#cut) {
      this.attemptsWhileCut++;
      client.destroy();
      return;
    }
    this.accepted++;
    const upstream = connect(target.port, target.host);
    const pair: Pair = { client, upstream };
    this.#pairs.add(pair);
    client.on('data', (chunk: Buffer) => void (this.#stalled || upstream.write(chunk)));
    upstream.on('data', (chunk: Buffer) => void (this.#stalled || client.write(chunk)));
    // A side that closes while the proxy stalls does not tell the other: that one stays open, and
    // silent, as a server's socket does when a NAT lost the connection's state.
    const end = (closed: Socket) => () => {
      const other = closed === client ? upstream : client;
      if (this.#stalled) return void closed.destroy();
      if (!this.#pairs.delete(pair)) return;
      closed.destroy();
      other.destroy();
    };
    for (const socket of [client, upstream]) socket.on('error', end(socket)).on('close', end(socket));
  }

  /** Every open connection gets a reset, on both sides; new ones are accepted as usual. */
  reset(): void {
    for (const pair of [...this.#pairs]) {
      this.#pairs.delete(pair);
      pair.client.resetAndDestroy();
      pair.upstream.resetAndDestroy();
    }
  }

  /** Every open connection ends, and new ones are refused until `restore()`: the peer is unreachable. */
  cut(): void {
    this.#cut = true;
    this.attemptsWhileCut = 0;
    this.reset();
  }

  restore(): void {
    this.#cut = false;
  }

  /** From now on nothing is forwarded, on old connections or new ones, until `resume()`: what is sent meanwhile is lost. */
  stall(): void {
    this.#stalled = true;
  }

  /** Forwards again. A connection that lost bytes while stalled is out of step: only its peers can tell. */
  resume(): void {
    this.#stalled = false;
  }

  get connections(): number {
    return this.#pairs.size;
  }

  close(): Promise<void> {
    this.reset();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
