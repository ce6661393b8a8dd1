/**
 * The inspection library behind `waymark dump | verify | repair` (tools/ only formats).
 * Tests call these functions directly; everything returns structured results.
 */
export { dumpPath, dumpIndexFile } from './dump';
export type { DumpItem, DumpOptions, DumpSummary } from './dump';
export { verifyStore, loadCheckpoint } from './verify';
export type { VerifyOptions, VerifyReport } from './verify';
export { repairStore } from './repair';
export type { RepairOptions, RepairReport, DroppedRange, SegmentChange } from './repair';
export type { PlannedPatch } from './repair-plan';
export { describePath, listSegments, stagingDirName } from './layout';
export type { Layout, PathKind, ChannelRef, SegmentRef, TopicRef } from './layout';
export { walkSegment } from './walk';
export type { WalkEvent } from './walk';
export type { Fault, Damage } from './segment-check';
export { ProgressLine, formatBytes } from './progress';
export type { ProgressState, ProgressStream } from './progress';
export { poolThreadCountMax, type PoolOptions } from './pool';
export { inspectLimits } from './limits';
