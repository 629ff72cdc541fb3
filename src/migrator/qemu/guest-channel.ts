// The host end of the demo guest's control channel (its second serial port, a unix socket on the
// host): commands go in as lines, JSON reports come out as lines and are folded into an integrity
// summary. QEMU's chardev socket takes one client at a time, so one process holds it.
import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatGuestCommand, parseGuestLine, type GuestCommand, type GuestReport } from '../../shared/guest-protocol.ts';
import { emptyIntegrity, foldIntegrity, type IntegritySummary } from './common/integrity.ts';
import { VmControlError } from './errors.ts';

interface GuestChannelEvents {
  report: [GuestReport];
  close: [];
}

export class GuestChannel extends EventEmitter<GuestChannelEvents> {
  readonly vm: string;
  private readonly socket: Socket;
  private summary: IntegritySummary = emptyIntegrity();
  private open = true;

  private constructor(vm: string, socket: Socket) {
    super();
    this.vm = vm;
    this.socket = socket;
    const lines = createInterface({ input: socket, crlfDelay: Infinity });
    lines.on('line', (line) => {
      const report = parseGuestLine(line);
      this.summary = foldIntegrity(this.summary, report);
      this.emit('report', report);
    });
    socket.on('error', () => socket.destroy());
    // readline re-emits its input's errors: a reset connection (QEMU exiting as the VM moves away)
    // must end the channel like any close, not throw from an unhandled 'error' event.
    lines.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.open = false;
      this.emit('close');
    });
  }

  /** Connects to the control socket, retrying while QEMU is still creating it. */
  static async connect(vm: string, path: string, options: { retryUntilMs?: number } = {}): Promise<GuestChannel> {
    const deadline = Date.now() + (options.retryUntilMs ?? 5000);
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        return new GuestChannel(vm, socket);
      } catch (cause) {
        if (Date.now() >= deadline) {
          throw new VmControlError(vm, `cannot open the guest control channel ${path}: ${(cause as Error).message}. Is the VM running, and is no other snowbird process attached?`, { cause });
        }
        await sleep(100);
      }
    }
  }

  get integrity(): IntegritySummary {
    return this.summary;
  }

  get connected(): boolean {
    return this.open;
  }

  send(command: GuestCommand): void {
    if (!this.open) throw new VmControlError(this.vm, 'the guest control channel is closed');
    this.socket.write(`${formatGuestCommand(command)}\n`);
  }

  /** Resolves with the first report (from now on) that satisfies `predicate`. */
  waitFor<R extends GuestReport>(predicate: (r: GuestReport) => r is R, options?: { timeoutMs?: number; what?: string }): Promise<R>;
  waitFor(predicate: (r: GuestReport) => boolean, options?: { timeoutMs?: number; what?: string }): Promise<GuestReport>;
  waitFor(predicate: (r: GuestReport) => boolean, options: { timeoutMs?: number; what?: string } = {}): Promise<GuestReport> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    const what = options.what ?? 'a guest report';
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off('report', onReport);
        this.off('close', onClose);
      };
      const onReport = (r: GuestReport): void => {
        if (predicate(r)) {
          done();
          resolve(r);
        }
      };
      const onClose = (): void => {
        done();
        reject(new VmControlError(this.vm, `the guest control channel closed while waiting for ${what}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new VmControlError(this.vm, `no ${what} from the guest within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on('report', onReport);
      this.on('close', onClose);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
