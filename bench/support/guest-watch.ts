// The demo guest's control channel at both sites at once. QEMU drops what the guest writes while no
// client is on the control socket, so a benchmark that must not miss a report (a crunch that ends
// during a move) stays connected to the edge's and the core's socket whenever each exists: the
// destination's QEMU listens from the start of a move, long before the guest runs there.
import { setTimeout as sleep } from 'node:timers/promises';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';
import { ackName, type CrunchDone, type GuestCommand, type GuestReport } from '../../src/shared/guest-protocol.ts';
import { nowMs } from './rfb-probe.ts';

type Site = 'edge' | 'core';

export class GuestWatch {
  readonly vm: string;
  readonly #sockets: Record<Site, string>;
  readonly #channels = new Map<Site, GuestChannel>();
  readonly #listeners = new Set<(report: GuestReport, at: number, site: Site) => void>();
  #stopped = false;
  #loops: Promise<void>[] = [];
  /** crunch-done reports, with when (nowMs) they arrived. */
  readonly crunchDone: { report: CrunchDone; at: number; site: Site }[] = [];
  /** A second `ready`: the guest rebooted while watched. */
  readies = 0;
  uptimeMs = 0;
  rebooted = false;

  constructor(vm: string, sockets: Record<Site, string>) {
    this.vm = vm;
    this.#sockets = sockets;
  }

  start(): void {
    this.#loops = (['edge', 'core'] as const).map((site) => this.#hold(site));
  }

  async #hold(site: Site): Promise<void> {
    while (!this.#stopped) {
      let channel: GuestChannel;
      try {
        channel = await GuestChannel.connect(this.vm, this.#sockets[site], { retryUntilMs: 0 });
      } catch {
        await sleep(50);
        continue;
      }
      if (this.#stopped) {
        channel.close();
        return;
      }
      this.#channels.set(site, channel);
      channel.on('report', (report) => {
        const at = nowMs();
        if (report.type === 'crunch-done') this.crunchDone.push({ report, at, site });
        if (report.type === 'ready') this.readies += 1;
        if ('uptime_ms' in report && typeof report.uptime_ms === 'number') this.uptimeMs = Math.max(this.uptimeMs, report.uptime_ms);
        for (const f of this.#listeners) f(report, at, site);
      });
      await new Promise<void>((resolve) => channel.once('close', () => resolve()));
      this.#channels.delete(site);
    }
  }

  /** Calls `f` for every report from either site. Returns the unsubscribe. */
  onReport(f: (report: GuestReport, at: number, site: Site) => void): () => void {
    this.#listeners.add(f);
    return () => this.#listeners.delete(f);
  }

  /** Sends `command` to the guest through `site`'s channel (where it runs) and waits for the ack. */
  async send(site: Site, command: GuestCommand, timeoutMs = 30_000): Promise<{ detail: string; at: number }> {
    const deadline = Date.now() + 10_000;
    let channel = this.#channels.get(site);
    while (channel?.connected !== true) {
      if (Date.now() > deadline) throw new Error(`no control channel to the guest at the ${site}`);
      await sleep(50);
      channel = this.#channels.get(site);
    }
    const name = ackName(command);
    const ack = channel.waitFor((r) => r.type === 'ack' && r.cmd === name, { timeoutMs, what: `the ack of "${name}"` });
    channel.send(command);
    const reply = await ack;
    if (reply.type !== 'ack' || !reply.ok) throw new Error(`the guest refused "${name}": ${reply.type === 'ack' ? reply.detail : '?'}`);
    return { detail: reply.detail, at: nowMs() };
  }

  /** Waits for the crunch-done of the crunch with this pid (from its ack's detail). */
  async waitCrunch(pid: number, timeoutMs: number): Promise<{ report: CrunchDone; at: number; site: Site }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const done = this.crunchDone.find((d) => d.report.pid === pid);
      if (done !== undefined) return done;
      if (Date.now() > deadline) throw new Error(`crunch pid ${pid}: no crunch-done within ${Math.round(timeoutMs / 1000)} s`);
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    for (const channel of this.#channels.values()) channel.close();
    await Promise.all(this.#loops);
  }
}

/** The pid in a crunch ack's detail ("pid 123, work 40000 on tty1"). */
export function crunchPid(detail: string): number {
  const m = /^pid (\d+)/.exec(detail);
  if (!m?.[1]) throw new Error(`cannot read the crunch's pid from its ack: "${detail}"`);
  return Number(m[1]);
}
