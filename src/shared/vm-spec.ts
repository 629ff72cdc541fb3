// The schema of a VM spec wherever one is read from outside the process: vm.json on disk, or a peer's
// migration request. The TypeScript shape is VmSpec in src/migrator/qemu/common/spec.ts.
import { z } from 'zod';

export const safeId = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'names are 1-63 lowercase letters, digits, "-" or "_"');

export const vmSpecSchema = z.object({
  name: safeId,
  memoryMiB: z.number().int().min(64).max(1024 * 1024),
  vcpus: z.number().int().min(1).max(256),
  accel: z.enum(['auto', 'kvm', 'tcg']),
  boot: z.object({ kernel: z.string().max(4096), initrd: z.string().max(4096), append: z.string().max(4096) }),
  disk: z.string().max(4096),
  cpuLimitPercent: z.number().positive().optional(),
});
