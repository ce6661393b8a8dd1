/**
 * The keys a record is indexed by (msgId, key, the `traceid` header), extracted by walking
 * the records section without building record objects — the append path runs this for
 * every record, so it allocates only views.
 */
import { WaymarkError } from './errors';
import { msgIdBytes } from './msg-id';
import { Reader } from './varint';
import { RecordAttr } from './record-batch';
import { isTraceIdName } from './index-kind';

export { IndexKind, traceIdHeaderName, type IndexKindId, type IndexKeyRanges } from './index-kind';

/** Where one record's index keys sit in the records section: byte positions, length -1 when absent. */
export interface RecordKeys {
  index: number;
  /** The 16-byte msgId starts here. */
  msgIdAt: number;
  keyAt: number;
  keyLength: number;
  traceIdAt: number;
  traceIdLength: number;
}

/**
 * Calls `visit` for every record of an (uncompressed) records section with the positions of
 * its keys. One cursor and one RecordKeys object for the whole walk (`visit` must not keep
 * it): no views, no objects per record.
 */
export function forEachRecordKeys(section: Uint8Array, recordCount: number, visit: (keys: RecordKeys) => void): void {
  const outer = new Reader(section, 0, section.length);
  const r = new Reader(section, 0, 0);
  const keys: RecordKeys = { index: 0, msgIdAt: 0, keyAt: 0, keyLength: -1, traceIdAt: 0, traceIdLength: -1 };
  for (let i = 0; i < recordCount; i++) {
    const size = outer.varint();
    const end = outer.pos + size;
    if (end > section.length) throw new WaymarkError('CORRUPT_BATCH', `record ${i} runs past the records section`);
    r.pos = outer.pos;
    r.end = end;
    const attributes = r.u8();
    r.varint(); // offsetDelta
    r.varint(); // timestampDelta
    keys.index = i;
    keys.msgIdAt = r.skip(msgIdBytes);
    if (attributes & RecordAttr.hasKey) {
      keys.keyLength = r.varint();
      keys.keyAt = r.skip(keys.keyLength);
    } else {
      keys.keyLength = -1;
    }
    keys.traceIdLength = -1;
    const headerCount = r.varint();
    for (let h = 0; h < headerCount; h++) {
      const nameLength = r.varint();
      const nameAt = r.skip(nameLength);
      const valueLength = r.varint();
      const valueAt = r.skip(valueLength);
      if (keys.traceIdLength < 0 && isTraceIdName(section, nameAt, nameLength)) {
        keys.traceIdAt = valueAt;
        keys.traceIdLength = valueLength;
      }
    }
    visit(keys);
    outer.pos = end;
  }
}

