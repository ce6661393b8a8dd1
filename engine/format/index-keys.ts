/**
 * The keys a record is indexed by (msgId, key, the `traceid` header), extracted by walking
 * the records section without building record objects — the append path runs this for
 * every record, so it allocates only views.
 */
import { WaymarkError } from './errors';
import { msgIdBytes } from './msg-id';
import { Reader } from './varint';
import { RecordAttr } from './record-batch';

/** Seeds of the key hash: one per kind, so a key never collides with a msgId by design. */
export const IndexKind = { msgId: 1, key: 2, traceId: 3 } as const;
export type IndexKindId = (typeof IndexKind)[keyof typeof IndexKind];

export const traceIdHeaderName = 'traceid';
const traceIdName = new TextEncoder().encode(traceIdHeaderName);

export interface RecordKeys {
  index: number;
  msgId: Uint8Array;
  key: Uint8Array | null;
  traceId: Uint8Array | null;
}

/** Calls `visit` for every record of an (uncompressed) records section. */
export function forEachRecordKeys(section: Uint8Array, recordCount: number, visit: (keys: RecordKeys) => void): void {
  const reader = new Reader(section, 0, section.length);
  const keys: RecordKeys = { index: 0, msgId: section, key: null, traceId: null };
  for (let i = 0; i < recordCount; i++) {
    const size = reader.varint();
    const end = reader.pos + size;
    if (end > section.length) throw new WaymarkError('CORRUPT_BATCH', `record ${i} runs past the records section`);
    const r = new Reader(section, reader.pos, end);
    const attributes = r.u8();
    r.varint(); // offsetDelta
    r.varint(); // timestampDelta
    keys.index = i;
    keys.msgId = r.bytes(msgIdBytes);
    keys.key = attributes & RecordAttr.hasKey ? r.bytes(r.varint()) : null;
    keys.traceId = null;
    const headerCount = r.varint();
    for (let h = 0; h < headerCount; h++) {
      const name = r.bytes(r.varint());
      const value = r.bytes(r.varint());
      if (keys.traceId === null && name.length === traceIdName.length && sameBytes(name, traceIdName)) keys.traceId = value;
    }
    visit(keys);
    reader.pos = end;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
