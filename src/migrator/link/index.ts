// The authenticated peer link between two site agents. See docs/link.md.
export { LinkClient, type ConnectOptions, type LinkClientOptions, type PairOptions } from './client.ts';
export { DEFAULT_MAX_FRAME_BYTES } from './common/frames.ts';
export { LINK_ERROR_CODES, PROTOCOL_VERSION, type LinkErrorCode } from './common/protocol.ts';
export {
  LinkError,
  PeerAuthError,
  PeerConnectError,
  PeerDisconnectedError,
  PeerFingerprintError,
  PeerProtocolError,
  PeerRequestError,
  SiteIdentityError,
  TrustStoreError,
  type PeerAuthCode,
} from './errors.ts';
export { formatAddress, parseAddress, type Endpoint } from './handshake.ts';
export { fingerprint, loadIdentity, loadOrCreateIdentity, normalizeFingerprint, type SiteIdentity } from './identity.ts';
export {
  PeerLink,
  type Handler,
  type HandlerContext,
  type PeerInfo,
  type PeerLinkEvents,
  type PeerLinkOptions,
  type RequestOptions,
  type StreamHandler,
  type StreamOptions,
  type StreamTargetStats,
} from './peer-link.ts';
export { LinkServer, type LinkServerEvents, type LinkServerOptions, type RefusedConnection } from './server.ts';
export { bridgeListener, type BridgeListener, type BridgeOptions, type BridgeStats } from './streams.ts';
export { TrustStore, type CorePairing, type PairedPeer, type PairingTokenInfo } from './trust.ts';
