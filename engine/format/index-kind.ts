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
 * A batch's key-index entries as its encoder hashed them: `count` pairs of (record index,
 * xxh32 hash) in `pairs`, in exactly the order a walk of the records adds them (per record:
 * msgId, then key, then the first `traceid` header), so the index built from them is the one
 * a rebuild from the log makes, byte for byte.
 */
export interface IndexKeyHashes {
  readonly pairs: Uint32Array;
  readonly count: number;
}
