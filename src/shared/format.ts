// Figures as people read them, shared by the CLI and the app (pure: the browser imports it too).
import type { MigrationRecord } from './migration.ts';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** Binary units, one decimal above bytes: 1536 → "1.5 KiB". */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${UNITS[unit]}`;
}

/**
 * A move's memory strategy in a few words: what was asked and, where it differs, what happened
 * (`auto → post-copy`, `auto → pre-copy + throttle`, `hybrid`).
 */
export function formatStrategy(r: Pick<MigrationRecord, 'strategy' | 'memory'>): string {
  const m = r.memory;
  if (m === undefined || r.strategy !== 'auto') return r.strategy;
  return `auto → ${m.used === 'postcopy' ? 'post-copy' : 'pre-copy'}${m.autoConverge ? ' + throttle' : ''}`;
}
