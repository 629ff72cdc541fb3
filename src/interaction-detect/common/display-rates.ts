// The display gateway's activity records (counts per ~250 ms interval) → the input and display rates
// of one interaction sample. Pure: the agent's placement loop feeds it what the gateway published
// since the previous sample.
import type { DisplayActivity } from '../../shared/display.ts';
import type { InteractionSample } from '../../shared/placement.ts';

export type DisplayRates = Pick<InteractionSample, 'keysPerS' | 'pointerPerS' | 'fbUpdatesPerS' | 'screenChangePerS'>;

export const UNAVAILABLE_DISPLAY: DisplayRates = { keysPerS: null, pointerPerS: null, fbUpdatesPerS: null, screenChangePerS: null };

/**
 * Rates over the records' combined interval. No records (no gateway for this VM yet) means the
 * sensors are unavailable, not that nothing happened. Input counts are valid whatever the upstream
 * state (they come from the viewers); display counts only while the gateway had its VNC server.
 */
export function displayRates(records: readonly DisplayActivity[]): DisplayRates {
  const seconds = records.reduce((sum, r) => sum + r.intervalMs, 0) / 1000;
  if (records.length === 0 || seconds <= 0) return UNAVAILABLE_DISPLAY;
  const total = (pick: (r: DisplayActivity) => number, from = records): number => from.reduce((sum, r) => sum + pick(r), 0);
  const connected = records.filter((r) => r.upstream === 'connected' && r.width > 0 && r.height > 0);
  const connectedS = total((r) => r.intervalMs, connected) / 1000;
  return {
    keysPerS: total((r) => r.keyEvents) / seconds,
    pointerPerS: total((r) => r.pointerEvents) / seconds,
    fbUpdatesPerS: connectedS > 0 ? total((r) => r.fbUpdates, connected) / connectedS : null,
    screenChangePerS: connectedS > 0 ? total((r) => r.changedPixels / (r.width * r.height), connected) / connectedS : null,
  };
}
