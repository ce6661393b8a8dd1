/**
 * Sparse offset index of one segment: entries (relativeOffset u32, position u32), one per
 * `indexIntervalBytes` of log at most, strictly increasing in both fields. lookup() gives
 * the position of the last indexed batch at or before an offset; the reader scans forward.
 */
import { CorruptIndexError } from './errors';
import { decodeIndexFile, encodeIndexFile, EntryBuffer, type IndexFileParts } from './index-file';

export const offsetIndexMagic = 'WOIX';
const entryBytes = 8;

export class OffsetIndex {
  private constructor(
    readonly baseOffset: number,
    private readonly entries: EntryBuffer,
  ) {}

  static empty(baseOffset: number): OffsetIndex {
    return new OffsetIndex(baseOffset, new EntryBuffer(entryBytes));
  }

  /** Parses a file and checks it was built for this segment's size and every entry against its bounds. */
  static decode(file: string, bytes: Buffer, baseOffset: number, segmentBytes: number, nextOffset: number): OffsetIndex {
    const { header, entries } = decodeIndexFile(file, bytes, offsetIndexMagic, entryBytes, baseOffset, segmentBytes);
    const index = new OffsetIndex(baseOffset, EntryBuffer.from(entryBytes, entries, header.entryCount));
    index.sanityCheck(file, segmentBytes, nextOffset);
    return index;
  }

  get entryCount(): number {
    return this.entries.count;
  }

  append(offset: number, position: number): void {
    const pos = this.entries.push();
    this.entries.bytes.writeUInt32LE(offset - this.baseOffset, pos);
    this.entries.bytes.writeUInt32LE(position, pos + 4);
  }

  /** Position of the last entry whose offset ≤ `offset`, or 0. */
  lookup(offset: number): number {
    return this.entryFor(offset).position;
  }

  /** The last entry whose offset ≤ `offset` — the batch starting at `position` has base offset `offset` — or the segment's start. */
  entryFor(offset: number): { offset: number; position: number } {
    const relative = offset - this.baseOffset;
    const bytes = this.entries.bytes;
    let lo = 0;
    let hi = this.entries.count - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (bytes.readUInt32LE(mid * entryBytes) <= relative) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (found < 0) return { offset: this.baseOffset, position: 0 };
    return { offset: this.baseOffset + bytes.readUInt32LE(found * entryBytes), position: bytes.readUInt32LE(found * entryBytes + 4) };
  }

  /**
   * A batch start at which a read beginning at `position` can end: the last indexed position
   * ≤ `limit` whose offset is ≤ `endOffset` (so the batches before it hold no record at or
   * past endOffset), when that is past `position`; else the first indexed position after
   * `position` (the batch there is larger than the limits allow). -1 when the index has none.
   */
  readBoundary(position: number, limit: number, endOffset = Number.MAX_SAFE_INTEGER): number {
    const bytes = this.entries.bytes;
    const endRelative = endOffset - this.baseOffset;
    let lo = 0;
    let hi = this.entries.count - 1;
    let after = -1; // first entry position > position
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (bytes.readUInt32LE(mid * entryBytes + 4) > position) {
        after = mid;
        hi = mid - 1;
      } else lo = mid + 1;
    }
    if (after < 0) return -1;
    // Both fields increase from entry to entry, so "within both limits" holds for a prefix.
    let best = -1;
    for (lo = after, hi = this.entries.count - 1; lo <= hi; ) {
      const mid = (lo + hi) >>> 1;
      if (bytes.readUInt32LE(mid * entryBytes + 4) <= limit && bytes.readUInt32LE(mid * entryBytes) <= endRelative) {
        best = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return bytes.readUInt32LE((best >= 0 ? best : after) * entryBytes + 4);
  }

  sanityCheck(file: string, segmentBytes: number, nextOffset: number): void {
    const bytes = this.entries.bytes;
    let lastOffset = -1;
    let lastPosition = -1;
    for (let i = 0; i < this.entries.count; i++) {
      const relative = bytes.readUInt32LE(i * entryBytes);
      const position = bytes.readUInt32LE(i * entryBytes + 4);
      if (relative <= lastOffset || position <= lastPosition) throw new CorruptIndexError(file, `entry ${i} is not increasing`);
      if (position >= segmentBytes) throw new CorruptIndexError(file, `entry ${i} position ${position} past the segment's ${segmentBytes} bytes`);
      if (this.baseOffset + relative >= nextOffset) throw new CorruptIndexError(file, `entry ${i} offset ${this.baseOffset + relative} past the segment's last offset`);
      lastOffset = relative;
      lastPosition = position;
    }
  }

  /** The file, for a log of `logBytes` bytes, its body a view of the entries. */
  parts(logBytes: number): IndexFileParts {
    return encodeIndexFile(offsetIndexMagic, this.baseOffset, entryBytes, this.entries.bytes, this.entries.count, logBytes);
  }
}
