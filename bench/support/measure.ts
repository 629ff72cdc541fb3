// Measurements shared by both sides of a benchmark: bytes through the emulated WAN (the veth pair's
// kernel counters, the same for plain QEMU and for snowbird) and the demo guest's own integrity report.
import { readFile } from 'node:fs/promises';
import { GuestChannel } from '../../src/migrator/qemu/guest-channel.ts';
import type { GuestCommand } from '../../src/shared/guest-protocol.ts';
import { ackName } from '../../src/shared/guest-protocol.ts';

export interface WireCounters {
  /** Bytes the edge sent towards the core. */
  tx: number;
  /** Bytes the core sent towards the edge. */
  rx: number;
}

/** The host end's counters (Ethernet frames: headers, TCP/TLS overhead and ACKs included). */
export async function readWire(hostInterface: string): Promise<WireCounters> {
  const read = async (name: string): Promise<number> => Number((await readFile(`/sys/class/net/${hostInterface}/statistics/${name}`, 'utf8')).trim());
  return { tx: await read('tx_bytes'), rx: await read('rx_bytes') };
}

export function wireDelta(before: WireCounters, after: WireCounters): WireCounters & { total: number } {
  const tx = after.tx - before.tx;
  const rx = after.rx - before.rx;
  return { tx, rx, total: tx + rx };
}

export interface GuestCheck {
  ok: boolean;
  memoryViolations: number;
  diskViolations: number;
  rebooted: boolean;
  uptimeMs: number;
  /** One line for the table and the log. */
  summary: string;
}

/**
 * Listens to the guest's control channel until both workloads sent `beats` heartbeats (their
 * violation counts are cumulative since each workload started), and checks the guest did not
 * reboot: its uptime only grows across moves.
 */
export async function checkGuest(vm: string, controlSocket: string, previousUptimeMs: number, beats = 2): Promise<GuestCheck> {
  const channel = await GuestChannel.connect(vm, controlSocket, { retryUntilMs: 10_000 });
  try {
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline) {
      const { memory, disk } = channel.integrity;
      if (memory.heartbeats >= beats && disk.heartbeats >= beats) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const s = channel.integrity;
    const problems: string[] = [];
    if (s.memory.heartbeats < beats || s.disk.heartbeats < beats) problems.push(`no heartbeats within 90 s (mem ${s.memory.heartbeats}, disk ${s.disk.heartbeats})`);
    if (s.memory.violations > 0) problems.push(`${s.memory.violations} memory violation(s)${s.memory.lastViolation ? ` (last: ${s.memory.lastViolation})` : ''}`);
    if (s.disk.violations > 0) problems.push(`${s.disk.violations} disk violation(s)${s.disk.lastViolation ? ` (last: ${s.disk.lastViolation})` : ''}`);
    const rebooted = s.rebooted || s.uptimeMs < previousUptimeMs;
    if (rebooted) problems.push(`the guest rebooted (uptime ${s.uptimeMs} ms, was ${previousUptimeMs} ms)`);
    if (s.errors.length > 0) problems.push(`guest errors: ${s.errors.join('; ')}`);
    return {
      ok: problems.length === 0,
      memoryViolations: s.memory.violations,
      diskViolations: s.disk.violations,
      rebooted,
      uptimeMs: s.uptimeMs,
      summary: problems.length === 0 ? 'ok' : problems.join('; '),
    };
  } finally {
    channel.close();
  }
}

/** Sends commands to the guest's control agent, each waiting for its ack. */
export async function guestCommands(vm: string, controlSocket: string, commands: GuestCommand[]): Promise<void> {
  const channel = await GuestChannel.connect(vm, controlSocket, { retryUntilMs: 10_000 });
  try {
    for (const command of commands) {
      const name = ackName(command);
      const ack = channel.waitFor((r) => r.type === 'ack' && r.cmd === name, { timeoutMs: 30_000, what: `ack of "${name}"` });
      channel.send(command);
      const reply = await ack;
      if (reply.type === 'ack' && !reply.ok) throw new Error(`the guest refused "${name}": ${reply.detail}`);
    }
  } finally {
    channel.close();
  }
}
