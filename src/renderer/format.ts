// Figures as people read them in the app (bytes: src/shared/format.ts, shared with the CLI).
import type { MigrationRecord } from '../shared/migration.ts';


export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export function formatClock(at: number): string {
  return new Date(at).toLocaleTimeString(undefined, { hour12: false });
}

export function formatDateTime(at: number): string {
  const d = new Date(at);
  return `${d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })} ${d.toLocaleTimeString(undefined, { hour12: false })}`;
}

/** Everything the move put on the link (all streams), or its phases' bytes when no stream was counted. */
export function recordBytes(r: MigrationRecord): number {
  const streams = Object.values(r.streamBytes).reduce((a, b) => a + b, 0);
  return streams > 0 ? streams : Object.values(r.phaseBytes).reduce<number>((a, b) => a + (b ?? 0), 0);
}

export const SITE_NAMES = { edge: 'laptop', core: 'cloud' } as const;
