// Folds the demo guest's reports into the figures users and tests look at: is the guest alive, has it
// rebooted, and have its memory and disk invariants held? Pure, so recorded report streams test it.
import type { GuestReport } from '../../../shared/guest-protocol.ts';
import type { GuestWriter, IntegritySummary, WorkloadIntegrity } from '../../../shared/vm-status.ts';

export type { IntegritySummary, WorkloadIntegrity } from '../../../shared/vm-status.ts';

export function emptyIntegrity(): IntegritySummary {
  return {
    ready: false,
    uptimeMs: 0,
    uptimeByWriter: {},
    rebooted: false,
    memory: { heartbeats: 0, pass: 0, violations: 0 },
    disk: { heartbeats: 0, pass: 0, violations: 0 },
    errors: [],
  };
}

const MAX_ERRORS = 20;


/**
 * The guest process that wrote a report. Each writes its lines in order, but lines of different
 * processes can arrive out of uptime order: a process that read the clock and then stalled (on a
 * post-copy page fault, say) writes an older uptime after another's newer one. Only one writer's
 * uptime going backwards means the guest restarted.
 */
function writerOf(type: GuestReport['type']): GuestWriter {
  if (type.startsWith('mem-')) return 'mem';
  if (type.startsWith('disk-')) return 'disk';
  if (type.startsWith('crunch-')) return 'crunch';
  return 'ctl';
}

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
    const writer = writerOf(report.type);
    if (report.uptime_ms < (summary.uptimeByWriter[writer] ?? 0)) next.rebooted = true;
    next.uptimeByWriter = { ...summary.uptimeByWriter, [writer]: report.uptime_ms };
    next.uptimeMs = Math.max(summary.uptimeMs, report.uptime_ms);
  }
  switch (report.type) {
    case 'ready':
      if (summary.ready) next.rebooted = true;
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
