// The disk layer store's public API, for the site agent.
export { LayerStore, LayerStoreError, mergedLayerId, type CompactionReport, type VerifyResult } from './store.ts';
export { ImageStore, sha256File } from './images.ts';
export { layerChecksum } from './checksum.ts';
export { checkId, assertId, assertSha256, InvalidIdError } from './common/ids.ts';
export { type LayerDescriptor, type LayerRecord } from './common/model.ts';
export { matchChain, planDiskSync, compactionPlan, type ChainMatch, type DiskSyncPlan, type HeldLayer } from './common/planner.ts';
