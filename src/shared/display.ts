// Display contracts: the display gateway's activity records (its taps, one per interval, read by the
// interaction detector and the UI) and the state of its link to the VM's VNC server.
import { z } from 'zod';

/** Where the gateway's upstream (the VNC server of the VM, wherever it runs) stands. */
export const DISPLAY_UPSTREAM_STATES = ['connected', 'reconnecting', 'unreachable'] as const;
export type DisplayUpstreamState = (typeof DISPLAY_UPSTREAM_STATES)[number];

export const displayStatusSchema = z.strictObject({
  state: z.enum(DISPLAY_UPSTREAM_STATES),
  /** Why it is not connected (the last error), or what it is connected to. */
  reason: z.string().max(1024).optional(),
  /** Since when, ms since the epoch. */
  since: z.number().nonnegative(),
  /** Failed attempts since the last good session (0 when connected). */
  attempts: z.number().int().nonnegative(),
});
export type DisplayStatus = z.infer<typeof displayStatusSchema>;

const count = z.number().int().nonnegative();

/**
 * One interval of display activity (about 250 ms) as the gateway measured it. Counts are totals
 * over the interval, not rates: divide by `intervalMs`. `changedPixels` may exceed `width × height`
 * (several updates in one interval); `changedPixels / (width × height)` is the share of the screen
 * redrawn.
 */
export const displayActivitySchema = z.strictObject({
  /** End of the interval, ms since the epoch. */
  at: z.number().nonnegative(),
  /** Length of the interval actually covered (timers drift), ms. */
  intervalMs: z.number().nonnegative(),
  /** What the gateway serves (usually the VM name), when the caller named it. */
  source: z.string().max(63).optional(),
  /** KeyEvent and QEMU extended key event messages from all viewers, presses and releases. */
  keyEvents: count,
  /** PointerEvent messages from all viewers: motion, buttons, wheel. */
  pointerEvents: count,
  /** FramebufferUpdate messages from the VNC server that changed pixels. */
  fbUpdates: count,
  /** Σ width × height of their pixel rectangles. */
  changedPixels: count,
  /** The framebuffer size at the end of the interval (0 × 0 before the first connection). */
  width: count,
  height: count,
  /**
   * Input → display latency samples, ms: from a key press or pointer-button change that reached the
   * VNC server to the next FramebufferUpdate that changed pixels. One sample per input burst (the
   * clock starts at the first input after the previous sample).
   */
  latencyMs: z.array(z.number().nonnegative()).max(1024),
  /** Viewers attached at the end of the interval. */
  viewers: count,
  upstream: z.enum(DISPLAY_UPSTREAM_STATES),
});
export type DisplayActivity = z.infer<typeof displayActivitySchema>;
