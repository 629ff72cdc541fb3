// One error type per lifecycle operation. Each message says what happened and what to do; the
// underlying cause is attached for logs.

export class QemuNotFoundError extends Error {
  readonly binary: string;
  constructor(binary: string) {
    super(`${binary} was not found on PATH. Install QEMU: sudo apt-get install -y qemu-system-x86 qemu-utils`);
    this.name = 'QemuNotFoundError';
    this.binary = binary;
  }
}

export class VmSocketInUseError extends Error {
  readonly socketPath: string;
  readonly pid: number | undefined;
  constructor(socketPath: string, pid: number | undefined) {
    const owner = pid === undefined ? 'another process' : `process ${pid}`;
    super(`${socketPath} is in use by ${owner}: the VM is already running. Stop it first (snowbird vm stop) or adopt it (snowbird vm status).`);
    this.name = 'VmSocketInUseError';
    this.socketPath = socketPath;
    this.pid = pid;
  }
}

export class VmStartError extends Error {
  readonly vm: string;
  constructor(vm: string, detail: string, options?: { cause?: unknown }) {
    super(`could not start VM "${vm}": ${detail}`, options);
    this.name = 'VmStartError';
    this.vm = vm;
  }
}

export class VmAdoptError extends Error {
  readonly vm: string;
  constructor(vm: string, detail: string, options?: { cause?: unknown }) {
    super(`could not take over VM "${vm}": ${detail}`, options);
    this.name = 'VmAdoptError';
    this.vm = vm;
  }
}

export class VmStopError extends Error {
  readonly vm: string;
  constructor(vm: string, detail: string, options?: { cause?: unknown }) {
    super(`could not stop VM "${vm}": ${detail}`, options);
    this.name = 'VmStopError';
    this.vm = vm;
  }
}

export class VmControlError extends Error {
  readonly vm: string;
  constructor(vm: string, detail: string, options?: { cause?: unknown }) {
    super(`VM "${vm}": ${detail}`, options);
    this.name = 'VmControlError';
    this.vm = vm;
  }
}

export class CpuLimitError extends Error {
  constructor(detail: string, options?: { cause?: unknown }) {
    super(`could not limit the VM's CPU: ${detail}`, options);
    this.name = 'CpuLimitError';
  }
}
