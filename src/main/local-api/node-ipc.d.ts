// The slice of node-ipc 14's API that snowbird uses (the package ships no type declarations).
declare module 'node-ipc' {
  import type { Socket } from 'node:net';

  interface IpcConfig {
    silent: boolean;
    parser: 'raw' | 'fast' | 'guarded' | 'assured';
    maxMessageSize: number;
    maxPendingBytes: number;
    socketRoot: string;
    appspace: string;
    maxRetries: number;
    stopRetrying: boolean;
  }

  interface IpcServer {
    on(event: 'connect' | 'socket.disconnected', listener: (socket: Socket) => void): void;
    on(event: 'error', listener: (error: Error) => void): void;
    on(event: string, listener: (data: unknown, socket: Socket) => void): void;
    emit(socket: Socket, event: string, data: unknown): void;
    start(): void;
    stop(): void;
  }

  interface IpcClientSocket {
    on(event: 'connect' | 'disconnect', listener: () => void): void;
    on(event: 'error', listener: (error: Error) => void): void;
    on(event: string, listener: (data: unknown) => void): void;
    emit(event: string, data: unknown): void;
  }

  export class IPCModule {
    config: IpcConfig;
    server: IpcServer;
    of: Record<string, IpcClientSocket | undefined>;
    serve(path: string, callback?: () => void): void;
    connectTo(id: string, path: string, callback?: () => void): void;
    disconnect(id: string): void;
  }
}
