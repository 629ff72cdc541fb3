// Folds the demo guest's reports into the figures users and tests look at: is the guest alive, has it
// rebooted, and have its memory and disk invariants held? Pure, so recorded report streams test it.
import type { GuestReport } from '../../../shared/guest-protocol.ts';

export interface WorkloadIntegrity {
  heartbeats: number;
  /** Latest pass number the workload reported. */
  pass: number;
  /** Violations the guest counted since it booted (cumulative, from the latest heartbeat or violation lines). */
  violations: number;
  lastViolation?: string;
}

export interface IntegritySummary {
  ready: boolean;
  /** Guest uptime from the latest report; it only grows while the guest keeps running (no reboot). */
  uptimeMs: number;
  /** True if a report showed the guest's uptime going backwards: the guest rebooted. */
  rebooted: boolean;
  memory: WorkloadIntegrity;
  disk: WorkloadIntegrity;
  errors: string[];
}

export function emptyIntegrity(): IntegritySummary {
  return {
    ready: false,
    uptimeMs: 0,
    rebooted: false,
    memory: { heartbeats: 0, pass: 0, violations: 0 },
    disk: { heartbeats: 0, pass: 0, violations: 0 },
    errors: [],
  };
}

const MAX_ERRORS = 20;

/** The guest's heartbeat carries its cumulative count, which also covers lines we did not see. */
function withHeartbeat(w: WorkloadIntegrity, beat: { pass: number; violations: number }): WorkloadIntegrity {
  return { ...w, heartbeats: w.heartbeats + 1, pass: beat.pass, violations: Math.max(w.violations, beat.violations) };
}

function withViolation(w: WorkloadIntegrity, description: string): WorkloadIntegrity {
  return { ...w, violations: w.violations + 1, lastViolation: description };
}

export function foldIntegrity(summary: IntegritySummary, report: GuestReport): IntegritySummary {
  if (report.type === 'unparsed') return summary;
  const next: IntegritySummary = { ...summary };
  if ('uptime_ms' in report && typeof report.uptime_ms === 'number') {
    if (report.uptime_ms < summary.uptimeMs) next.rebooted = true;
    next.uptimeMs = report.uptime_ms;
  }
  switch (report.type) {
    case 'ready':
      next.ready = true;
      break;
    case 'mem-heartbeat':
      next.memory = withHeartbeat(summary.memory, report);
      break;
    case 'mem-violation':
      next.memory = withViolation(summary.memory, `page ${report.page}: expected ${report.expected}, found ${report.found}`);
      break;
    case 'disk-heartbeat':
      next.disk = withHeartbeat(summary.disk, report);
      break;
    case 'disk-violation':
      next.disk = withViolation(summary.disk, `block ${report.block}: ${report.reason}`);
      break;
    case 'error':
      next.errors = [...summary.errors, `${report.source}: ${report.detail}`].slice(-MAX_ERRORS);
      break;
    default:
      break;
  }
  return next;
}
