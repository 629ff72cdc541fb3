// The RFB (VNC) codec's public surface: one import for the display gateway and its tests.
// Pure: no I/O, no timers, no Node built-ins; bytes are Uint8Array so it runs in a browser too.

export * from './rfb-errors.ts';
export * from './rfb-encodings.ts';
export * from './rfb-pixels.ts';
export * from './rfb-handshake.ts';
export * from './rfb-client-messages.ts';
export * from './rfb-server-messages.ts';
