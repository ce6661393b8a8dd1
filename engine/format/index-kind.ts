/**
 * What the key index indexes a record by, shared by the walk over stored records
 * (index-keys.ts) and the encoder, which hashes the same bytes as it writes them
 * (encodeBatch with `indexKeys`), so that the engine's own appends skip the walk.
 */

/** Seeds of the key hash: one per kind, so a key never collides with a msgId by design. */
export const IndexKind = { msgId: 1, key: 2, traceId: 3 } as const;
export type IndexKindId = (typeof IndexKind)[keyof typeof IndexKind];

export const traceIdHeaderName = 'traceid';
const traceIdNameBytes = new TextEncoder().encode(traceIdHeaderName);

/** Whether the `length` bytes at buf[at] are a header name that is `traceid`. */
export function isTraceIdName(buf: Uint8Array, at: number, length: number): boolean {
  if (length !== traceIdNameBytes.length) return false;
  for (let i = 0; i < length; i++) if (buf[at + i] !== traceIdNameBytes[i]) return false;
  return true;
}

/**
 * Where a batch's key-index entries sit, as its encoder wrote them: triples in
 * `entries` of (record index × 4 + IndexKind, start, end), byte ranges of `bytes` (the batch
 * before compression), in exactly the order a walk of the records adds them (per record:
 * msgId, then key, then the first `traceid` header). Hashed by the engine while the batch's
 * write is in flight, they make the index a rebuild from the log makes, byte for byte.
 */
export interface IndexKeyRanges {
  readonly bytes: Uint8Array;
  readonly entries: Uint32Array;
}
