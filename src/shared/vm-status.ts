// A VM's state as `snowbird vm status` and `vm list` show it, wherever it runs: the agent answers for
// its own site and, at the edge, asks the core for a VM that runs there. Types only (no I/O).
import type { SiteRole } from './migration.ts';

/** What QEMU's run state means for a user. */
export type RunState = 'running' | 'paused' | 'incoming' | 'migrating' | 'shutdown' | 'other';

/** The guest processes that report an uptime (the control agent and the workloads). */
export type GuestWriter = 'ctl' | 'mem' | 'disk' | 'crunch';

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
  /** The highest guest uptime reported; it only grows while the guest keeps running (no reboot). */
  uptimeMs: number;
  /** Latest uptime per guest process that reports it (see `writerOf` in integrity.ts). */
  uptimeByWriter: Partial<Record<GuestWriter, number>>;
  /** True if one guest process's uptime went backwards, or the guest said `ready` twice: it rebooted. */
  rebooted: boolean;
  memory: WorkloadIntegrity;
  disk: WorkloadIntegrity;
  errors: string[];
}

export interface VmStatusReport {
  name: string;
  /** Where the VM runs (or, when `stopped`, the site that answered). */
  site: SiteRole;
  state: RunState | 'stopped';
  qemuStatus: string | undefined;
  pid: number | undefined;
  accel: string | undefined;
  startedAt: string | undefined;
  memoryMiB: number;
  vcpus: number;
  disk: string;
  vncSocket: string;
  integrity: IntegritySummary | undefined;
  /** A move under way: the VM runs at `from` until it switches over. */
  moving?: { from: SiteRole; to: SiteRole; phase: string };
}
