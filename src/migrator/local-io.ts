// Small file-system and socket probes shared by the migrator's I/O modules.
import { access } from 'node:fs/promises';
import { connect } from 'node:net';

export async function pathExists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * True if something accepts connections on the unix socket. A plain connect, not a protocol
 * handshake: QEMU serves one QMP client at a time and greets a second one only when the first leaves.
 */
export function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
