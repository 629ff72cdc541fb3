// Whether a move's memory stream goes through the dedup transport (pure). Dedup trades CPU for link
// bytes: the sender chunks, hashes and compresses everything QEMU writes, in the agent's thread. It
// wins when the link is the bottleneck: then every byte it saves is link time saved, and its own cost
// hides behind the link. When the link is as fast as the transport or faster, dedup is what the stream
// waits for, and a pre-copy that has to outrun the guest's dirtying can fail to converge.
//
// `auto` compares the two, both measured on the source site just before the move: the link's
// throughput to the peer (a short probe, capped by the move's bandwidth limit) and the sender's
// throughput on this machine (a short calibration run). Dedup is used when the transport is at least
// DEDUP_SPEED_MARGIN times faster than the link, so that a loaded CPU does not turn it into the
// bottleneck halfway through.
import type { DedupMode } from '../../../shared/migration.ts';

export const DEDUP_SPEED_MARGIN = 1.5;

export interface DedupChoiceInput {
  mode: DedupMode;
  /** The link's measured throughput to the peer; undefined if it could not be measured. */
  linkBitsPerSecond?: number | undefined;
  /** The dedup sender's measured throughput on this machine; undefined if it could not be measured. */
  senderBitsPerSecond?: number | undefined;
  /** The move's cap on the memory stream (bytes/s), if any. */
  capBytesPerSecond?: number | undefined;
}

export interface DedupChoice {
  use: boolean;
  /** One line for the record and the user: the mode and, for auto, the figures it compared. */
  reason: string;
}

export function formatBitRate(bitsPerSecond: number): string {
  return bitsPerSecond >= 1e9 ? `${(bitsPerSecond / 1e9).toFixed(2)} Gbit/s` : `${Math.round(bitsPerSecond / 1e6)} Mbit/s`;
}

export function chooseDedup(input: DedupChoiceInput): DedupChoice {
  if (input.mode === 'on') return { use: true, reason: 'on: asked for (--dedup on)' };
  if (input.mode === 'off') return { use: false, reason: 'off: turned off (--dedup off)' };
  const cap = input.capBytesPerSecond === undefined ? undefined : input.capBytesPerSecond * 8;
  const link = input.linkBitsPerSecond === undefined ? cap : cap === undefined ? input.linkBitsPerSecond : Math.min(input.linkBitsPerSecond, cap);
  const sender = input.senderBitsPerSecond;
  if (link === undefined || !(link > 0)) return { use: false, reason: 'auto: off, the link to the peer could not be measured' };
  if (sender === undefined || !(sender > 0)) return { use: false, reason: 'auto: off, the dedup transport could not be measured on this machine' };
  const capped = cap !== undefined && link === cap ? ' (the move\'s bandwidth cap)' : '';
  const figures = `link ${formatBitRate(link)}${capped}, dedup ${formatBitRate(sender)} on this site`;
  return link * DEDUP_SPEED_MARGIN <= sender
    ? { use: true, reason: `auto: on, the link is the bottleneck (${figures})` }
    : { use: false, reason: `auto: off, dedup would be the bottleneck (${figures})` };
}
