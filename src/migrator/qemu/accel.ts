// Chooses the accelerator for `accel: auto`. KVM is the normal case on a laptop, but a /dev/kvm that
// exists is not proof that it works: under nested virtualization a KVM guest can hang in early boot.
// So auto boots the guest kernel under KVM once and keeps KVM only if the kernel reaches userspace.
import { spawn } from 'node:child_process';
import { access, mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Accel, AccelChoice, GuestBoot } from './common/spec.ts';
import { QEMU_BINARY, findExecutable } from './vm.ts';
import { QemuNotFoundError } from './errors.ts';

export interface AccelDecision {
  accel: Accel;
  reason: string;
}

/** The kernel prints this when it hands over to /init: boot got past the stage where broken KVM hangs. */
const USERSPACE_MARKER = 'Run /init as init process';
const PROBE_TIMEOUT_MS = 20_000;

/** Whether this process may open /dev/kvm (not whether a KVM guest boots: see resolveAccel). */
export async function kvmUsable(): Promise<boolean> {
  try {
    await access('/dev/kvm', fsConstants.R_OK | fsConstants.W_OK);
    return true;
  } catch {
    return false;
  }
}

async function bootsUnderKvm(binary: string, boot: GuestBoot): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), 'snowbird-kvm-probe-'));
  const log = join(dir, 'serial.log');
  const child = spawn(binary, [
    '-accel', 'kvm', '-machine', 'pc', '-cpu', 'qemu64', '-m', '128', '-nodefaults', '-no-user-config',
    '-display', 'none', '-no-reboot', '-kernel', boot.kernel, '-initrd', boot.initrd,
    '-append', 'console=ttyS0 panic=-1 sb.nomem sb.nodisk', '-serial', `file:${log}`,
  ], { stdio: 'ignore' });
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });
  child.on('error', () => {
    exited = true;
  });
  try {
    const deadline = Date.now() + PROBE_TIMEOUT_MS;
    while (Date.now() < deadline && !exited) {
      const text = await readFile(log, 'utf8').catch(() => '');
      if (text.includes(USERSPACE_MARKER)) return true;
      await sleep(200);
    }
    return false;
  } finally {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Resolves `auto` to kvm or tcg. The probe's answer is cached in `cacheFile`, keyed by the QEMU
 * binary and kernel, so only the first start on a machine pays for it.
 */
export async function resolveAccel(choice: AccelChoice, boot: GuestBoot, cacheFile: string): Promise<AccelDecision> {
  if (choice === 'tcg') return { accel: 'tcg', reason: 'tcg requested' };
  if (choice === 'kvm') return { accel: 'kvm', reason: 'kvm requested' };
  if (!(await kvmUsable())) return { accel: 'tcg', reason: '/dev/kvm is missing or not accessible: using TCG (software emulation)' };

  const binary = await findExecutable(QEMU_BINARY);
  if (binary === undefined) throw new QemuNotFoundError(QEMU_BINARY);
  const key = createHash('sha256').update(`${binary}\0${boot.kernel}\0${boot.initrd}`).digest('hex');
  try {
    const cached = JSON.parse(await readFile(cacheFile, 'utf8')) as { key?: string; decision?: AccelDecision };
    if (cached.key === key && cached.decision) return cached.decision;
  } catch {
    // No cache yet.
  }
  const decision: AccelDecision = (await bootsUnderKvm(binary, boot))
    ? { accel: 'kvm', reason: 'KVM probe booted the guest kernel: using KVM' }
    : { accel: 'tcg', reason: `/dev/kvm exists but a KVM guest did not boot within ${PROBE_TIMEOUT_MS / 1000} s (nested virtualization?): using TCG` };
  await mkdir(dirname(cacheFile), { recursive: true });
  await writeFile(cacheFile, JSON.stringify({ key, decision }, null, 2));
  return decision;
}
