/**
 * Every bound of the engine in one place (TIGER_STYLE: put a limit on everything).
 * Units come last in each name. Going past a limit is a typed WaymarkError, never an
 * unbounded buffer. The relations between the limits are asserted at load, below.
 */
import { formatLimits } from './format/limits';

export const limits = {
  ...formatLimits,
  /** Channels (partitions) per topic. */
  channelCountMax: 256,
  /** Topic name length; names are [A-Za-z0-9._-] and must not start with '.'. */
  topicNameBytesMax: 200,
  /** Default size at which the active segment is rolled. */
  segmentBytesDefault: 64 * 1024 * 1024,
  /** Segment size bounds: positions inside a segment are u32 in every index. */
  segmentBytesMin: 4 * 1024,
  segmentBytesMax: 1024 * 1024 * 1024,
  /** Default age at which the active segment is rolled (7 days). */
  segmentMsDefault: 7 * 24 * 3600 * 1000,
  /** The longest segmentMs (~49.7 days): a key index entry keeps its time as a u32 of ms since the segment's first. */
  segmentMsMax: 0xffff_ffff,
  /** A sparse offset/time index entry is written at most every this many log bytes. */
  indexIntervalBytes: 4096,
  /** Hash slots a key index starts with, and has at most (powers of two); it doubles past two entries a slot. */
  keyIndexSlotCountMin: 64,
  keyIndexSlotCount: 1 << 18,
  /** Entries per key index file; when the active segment's index is full the segment rolls. */
  keyIndexEntryCountMax: 1_000_000,
  /** Bytes a single read returns at most (the caller may ask for less). */
  readBytesMax: 64 * 1024 * 1024,
  /** Messages a single read returns at most. */
  readMessagesMax: 100_000,
  /** Newest bytes a watched channel keeps in memory for tail reads (engine/log/tail-cache.ts). */
  tailCacheBytesDefault: 1024 * 1024,
  /** Batches gathered into one group commit write at most. */
  groupCommitBatchCountMax: 4096,
  /**
   * Rolled segments of a channel waiting for their seal (index files, checkpoint) at most: a
   * roll past it waits for the oldest seal, and appends wait with it. Without a bound, small
   * segments under a steady load rolled faster than they were sealed: 11,000 segments and
   * 10,600 open files in 12 s, then EMFILE failed the channel (helper-47).
   */
  sealsPendingMax: 4,
  /** Bytes gathered into one group commit write at most. */
  groupCommitBytesMax: 64 * 1024 * 1024,
  /**
   * The zeroed tail (sync mode "batch", Segment.zerosAhead): a group commit of at most this
   * many bytes that would grow the active segment's file also writes zeros after itself, to
   * the next multiple of `zeroAheadBytes`. Bigger commits just append: their journal commit is
   * a small share of their write, and zeros as large as they are would double it.
   */
  zeroAheadCommitBytesMax: 16 * 1024,
  zeroAheadBytes: 1024 * 1024,
  /** Producers whose last sequence a channel remembers for idempotent appends. */
  producerStateCountMax: 10_000,
  /** Evicted producers whose id and last sequence a channel keeps, to refuse their resends (producer-state.ts). */
  evictedProducerCountMax: 100_000,
  /** Interval of the fsync timer in sync mode "interval". */
  syncIntervalMsDefault: 50,
  /**
   * Channels whose file work at store open or close (checkpoint, index files: a few ms of
   * syncs each) is in flight at once, each with one descriptor open at a time (IoSlots).
   */
  openCloseChannelCountMax: 32,
  /** Interval of the retention sweep. */
  retentionSweepMs: 30_000,
  /** Key index hits confirmed per lookup at most (bounds a lookup of a very hot key). */
  lookupResultCountMax: 1000,
  /** Damaged batches remembered as said by lookups (StoreFault "damaged"); past it the memory starts again. */
  damageSaidMax: 10_000,
  /** A topic's owner description, UTF-8 bytes (every topic listing carries it: 7 MiB owners made a listing 22 MB). */
  ownerBytesMax: 1024,
} as const;

// Relations between limits, asserted at load.
function assert(condition: boolean, message: string): void {
  if (!condition) throw new Error(`engine/limits: ${message}`);
}
assert(limits.segmentBytesMax <= 0xffffffff, 'segment positions must fit u32');
assert(limits.batchBytesMax <= limits.groupCommitBytesMax, 'one batch must fit in one group commit');
assert((limits.keyIndexSlotCount & (limits.keyIndexSlotCount - 1)) === 0, 'slot count is a power of two');
assert((limits.keyIndexSlotCountMin & (limits.keyIndexSlotCountMin - 1)) === 0 && limits.keyIndexSlotCountMin <= limits.keyIndexSlotCount, 'the first slot count is a power of two, at most the last');
assert(limits.messageBytesMax <= limits.batchBytesMax, 'a message must fit in a batch');
assert(limits.readBytesMax >= limits.batchBytesMax, 'a read must be able to return one whole batch');
