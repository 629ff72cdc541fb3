// Plain-text formatting for the CLI.
import type { IntegritySummary } from '../migrator/qemu/common/integrity.ts';

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
