// Host readings of the VMs this site runs: one ProcessSensors per QEMU process, replaced when the VM's
// QEMU changes (it left and came back). The edge's placement loop reads its own VMs here and the
// core's through the peer method `vm.sensors`, answered from the core's instance of this class.
import type { HostReading } from '../shared/placement.ts';
import { ProcessSensors } from '../interaction-detect/host-sensors.ts';
import { isAlive } from '../migrator/qemu/process-info.ts';
import type { VmLibrary } from './vm-library.ts';

export class VmSensors {
  readonly #library: VmLibrary;
  readonly #log: (line: string) => void;
  readonly #byVm = new Map<string, { pid: number; sensors: ProcessSensors }>();

  constructor(library: VmLibrary, log: (line: string) => void) {
    this.#library = library;
    this.#log = log;
  }

  /** Rates since the previous read of this VM; null when its QEMU does not run here. */
  async read(vm: string): Promise<HostReading | null> {
    const runtime = await this.#library.loadRuntime(vm).catch(() => undefined);
    if (runtime === undefined || !(await isAlive(runtime.pid))) {
      this.#byVm.get(vm)?.sensors.close();
      this.#byVm.delete(vm);
      return null;
    }
    let entry = this.#byVm.get(vm);
    if (entry?.pid !== runtime.pid) {
      entry?.sensors.close();
      entry = { pid: runtime.pid, sensors: new ProcessSensors(runtime.pid, { log: (line) => this.#log(`sensors of ${vm}: ${line}`) }) };
      this.#byVm.set(vm, entry);
    }
    const { gpuBusy, vcpuBusy, diskBytesPerS, netBytesPerS } = await entry.sensors.read();
    return { gpuBusy, vcpuBusy, diskBytesPerS, netBytesPerS };
  }

  close(): void {
    for (const { sensors } of this.#byVm.values()) sensors.close();
    this.#byVm.clear();
  }
}
