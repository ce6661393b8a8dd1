/**
 * What the key index indexes a record by, shared by the walk over stored records
 * (index-keys.ts) and the encoder, which hashes the same bytes as it writes them
 * (encodeBatch with `indexKeys`), so that the engine's own appends skip the walk.
 */

/** Seeds of the key hash: one per kind, so a key never collides with a msgId by design. */
export const IndexKind = { msgId: 1, key: 2, traceId: 3 } as const;
export type IndexKindId = (typeof IndexKind)[keyof typeof IndexKind];

export const traceIdHeaderName = 'traceid';
export const traceIdNameBytes = new TextEncoder().encode(traceIdHeaderName);

/**
 * Where a batch's key-index entries sit, as its encoder wrote them: `count` triples in
 * `entries` of (record index × 4 + IndexKind, start, end), byte ranges of `bytes` (the batch
 * before compression), in exactly the order a walk of the records adds them (per record:
 * msgId, then key, then the first `traceid` header). Hashed by the engine while the batch's
 * write is in flight, they make the index a rebuild from the log makes, byte for byte.
 */
export interface IndexKeyRanges {
  readonly bytes: Uint8Array;
  readonly entries: Uint32Array;
  readonly count: number;
}
