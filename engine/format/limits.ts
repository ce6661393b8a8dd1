/**
 * Limits of the record batch format itself (pure: shared with the SDK, which builds batches).
 * engine/limits.ts spreads these into the engine's one table of limits.
 */
export const formatLimits = {
  /** Encoded size of one whole batch, header included. */
  batchBytesMax: 16 * 1024 * 1024,
  /** Records in one batch. */
  batchRecordCountMax: 100_000,
  /** Body bytes of one message. */
  messageBytesMax: 8 * 1024 * 1024,
  /** Key bytes (UTF-8) of one message. */
  keyBytesMax: 4096,
  /** Total bytes of one message's headers (names + values). */
  headersBytesMax: 64 * 1024,
  /** Headers on one message. */
  headerCountMax: 64,
  /**
   * Recent batches a channel remembers per producer id to answer resends: a producer may
   * have at most this many batches in flight per channel (the SDK's inflightBatchesMax).
   */
  producerBatchCountMax: 16,
} as const;
