// A TCP relay on loopback between an edge and its core, so a test can cut the link between two real
// agents (every TLS connection through it: control, NBD, memory, display) and keep it down a while.
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export class TcpRelay {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #downUntil = 0;

  private constructor(server: Server) {
    this.#server = server;
  }

  /** Listens on 127.0.0.1 (a free port) and forwards every connection to `target` (`host:port`). */
  static async start(target: string): Promise<TcpRelay> {
    const split = target.lastIndexOf(':');
    const host = target.slice(0, split);
    const port = Number(target.slice(split + 1));
    // Half-open both ways: a stream that ends its side (the link probe does) still gets its answer.
    const server = createServer({ allowHalfOpen: true });
    const relay = new TcpRelay(server);
    server.on('connection', (client) => relay.#forward(client, host, port));
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
    return relay;
  }

  #forward(client: Socket, host: string, port: number): void {
    if (Date.now() < this.#downUntil) return void client.destroy();
    const upstream = createConnection({ host, port, allowHalfOpen: true });
    for (const [a, b] of [[client, upstream], [upstream, client]] as const) {
      this.#sockets.add(a);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        this.#sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  }

  get address(): string {
    const address = this.#server.address();
    if (address === null || typeof address === 'string') throw new Error('the relay is not listening');
    return `127.0.0.1:${address.port}`;
  }

  /** Drops every connection through the relay at once, and refuses new ones for `downMs`. */
  cut(downMs = 0): void {
    this.#downUntil = Date.now() + downMs;
    for (const socket of this.#sockets) socket.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
