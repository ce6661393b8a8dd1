/**
 * The engine's public API (package export "waymark/engine"). See engine/README.md.
 */
export { openStore, Store, checkTopicName } from './store';
export type { StoreOptions, StoreFault, StoreProgress, ChannelHealth, TopicConfig, TopicInfo, ChannelInfo, AppendOptions, AppendResult, StoredMessage, ReadOptions, LookupOptions } from './store';
export type { SyncMode, AppendOutcome, BatchRead } from './log/channel-log';
export type { RecoveryFinding } from './log/segment';
export { limits } from './limits';
export { lz4Codec } from './codec';
export * from './format/index';
