// Plain-text formatting for the CLI.
import type { IntegritySummary } from '../migrator/qemu/common/integrity.ts';
import type { MigrationRecord } from '../shared/migration.ts';
import type { ProgressView } from '../shared/progress.ts';
import { formatBytes, formatStrategy } from '../shared/format.ts';

export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return `${[line(header), ...rows.map(line)].join('\n')}\n`;
}

export function formatIntegrity(integrity: IntegritySummary): string[] {
  const { memory, disk } = integrity;
  const verdict = memory.violations + disk.violations === 0 ? 'intact' : 'VIOLATIONS FOUND';
  return [
    `  guest: up ${(integrity.uptimeMs / 1000).toFixed(1)} s${integrity.rebooted ? ' (REBOOTED while watched)' : ''}, integrity ${verdict}`,
    `    memory: pass ${memory.pass}, ${memory.heartbeats} heartbeat(s) seen, ${memory.violations} violation(s)${memory.lastViolation ? ` — last: ${memory.lastViolation}` : ''}`,
    `    disk:   pass ${disk.pass}, ${disk.heartbeats} heartbeat(s) seen, ${disk.violations} violation(s)${disk.lastViolation ? ` — last: ${disk.lastViolation}` : ''}`,
    ...integrity.errors.map((e) => `    error: ${e}`),
  ];
}


export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/**
 * One line of a text progress bar (see shared/progress.ts): phase k/n, a bar and the bytes of a
 * known total (marked when it grows), or the bytes alone; the windowed rate and the ETA when known.
 */
export function formatProgress(v: ProgressView, width = 24): string {
  const head = `${v.from}→${v.to} ${`${v.phase} (${v.phaseNumber}/${v.phaseCount})`.padEnd(16)}`;
  const rate = v.rate > 0 ? ` at ${formatBytes(v.rate)}/s` : '';
  const eta = v.etaSeconds === undefined ? '' : `, ETA ${formatMs(v.etaSeconds * 1000)}`;
  if (v.total === undefined || v.total === 0) return `${head} ${formatBytes(v.bytes)} sent${rate}`;
  const fraction = Math.min(1, v.bytes / v.total);
  const filled = Math.round(fraction * width);
  const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}%`;
  return `${head} ${bar} ${formatBytes(v.bytes)} of ${formatBytes(v.total)}${v.totalGrowing ? ' (growing: the guest keeps writing)' : ''}${rate}${eta}`;
}

export function formatMigrationSummary(r: MigrationRecord): string[] {
  const head = r.outcome === 'committed'
    ? `${r.vm} moved ${r.from} → ${r.to} (${formatStrategy(r)}) in ${formatMs(r.totalMs)}, downtime ${r.downtimeMs === undefined ? '?' : formatMs(r.downtimeMs)}`
    : r.outcome === 'cancelled'
      ? `${r.vm} stayed at the ${r.from}: the move to the ${r.to} was cancelled during ${r.failedPhase ?? '?'}, after ${formatMs(r.totalMs)}`
      : `${r.vm} did NOT move ${r.from} → ${r.to}: failed in phase ${r.failedPhase ?? '?'}: ${r.error ?? ''} — the VM still runs at the ${r.from}`;
  const phases = Object.entries(r.phaseMs).map(([phase, ms]) => `${phase} ${formatMs(ms)}${r.phaseBytes[phase as keyof typeof r.phaseBytes] ? ` / ${formatBytes(r.phaseBytes[phase as keyof typeof r.phaseBytes] ?? 0)}` : ''}`);
  const streams = Object.entries(r.streamBytes).map(([stream, bytes]) => `${stream} ${formatBytes(bytes)}`);
  const total = Object.values(r.streamBytes).reduce((a, b) => a + b, 0);
  const dedup = formatDedup(r);
  return [
    head,
    ...(phases.length > 0 ? [`  phases:  ${phases.join(', ')}`] : []),
    `  on the link: ${formatBytes(total)} (${streams.join(', ') || '-'})`,
    ...(r.memory === undefined ? [] : [`  memory: ${r.memory.reason}${r.memory.postcopyMs === undefined ? '' : `; post-copy ran ${formatMs(r.memory.postcopyMs)} (the guest at the ${r.to}, some pages still at the ${r.from})`}`]),
    ...(dedup === undefined ? [] : [`  dedup: ${dedup}`]),
  ];
}

/** What the memory stream's dedup did: raw → on the link, or why it was not used, or how it failed. */
export function formatDedup(r: MigrationRecord): string | undefined {
  const d = r.dedup;
  if (d === undefined) return undefined;
  if (!d.used) return `not used${d.reason ? ` (${d.reason})` : ''}`;
  const wire = r.streamBytes['migration'] ?? 0;
  const saved = d.rawBytes > 0 ? ` (${((wire / d.rawBytes) * 100).toFixed(1)}%)` : '';
  const refs = d.refBytes ? `, ${formatBytes(d.refBytes)} of it already at the ${r.to}` : '';
  const failed = d.failed ? `; FAILED: ${d.failed}` : '';
  const why = d.reason ? ` [${d.reason}]` : '';
  return `memory stream ${formatBytes(d.rawBytes)} from QEMU → ${formatBytes(wire)} on the link${saved}${refs}${d.needs ? `, ${d.needs} chunk(s) re-sent` : ''}${failed}${why}`;
}

/** A record's bytes on the link, with the memory stream's raw size when dedup carried it (the history table). */
export function formatLinkBytes(r: MigrationRecord): string {
  const total = formatBytes(Object.values(r.streamBytes).reduce((a, b) => a + b, 0));
  return r.dedup?.used ? `${total} (mem ${formatBytes(r.dedup.rawBytes)} raw)` : total;
}
