/**
 * Sparse time index of one segment: entries (brokerTimestamp i64, relativeOffset u32),
 * non-decreasing in time and strictly increasing in offset. Broker timestamps are made
 * monotonic per channel on append, so "the first offset with time ≥ T" is well defined.
 */
import { CorruptIndexError } from './errors';
import { decodeIndexFile, encodeIndexFile, EntryBuffer, type IndexFileParts } from './index-file';

export const timeIndexMagic = 'WTIX';
const entryBytes = 12;

export class TimeIndex {
  private constructor(
    readonly baseOffset: number,
    private readonly entries: EntryBuffer,
  ) {}

  static empty(baseOffset: number): TimeIndex {
    return new TimeIndex(baseOffset, new EntryBuffer(entryBytes));
  }

  /** Parses a file and checks it was built for this segment's size and every entry against its bounds. */
  static decode(file: string, bytes: Buffer, baseOffset: number, segmentBytes: number, nextOffset: number): TimeIndex {
    const { header, entries } = decodeIndexFile(file, bytes, timeIndexMagic, entryBytes, baseOffset, segmentBytes);
    const index = new TimeIndex(baseOffset, EntryBuffer.from(entryBytes, entries, header.entryCount));
    index.sanityCheck(file, nextOffset);
    return index;
  }

  get entryCount(): number {
    return this.entries.count;
  }

  append(timestamp: number, offset: number): void {
    const pos = this.entries.push();
    this.entries.bytes.writeBigInt64LE(BigInt(timestamp), pos);
    this.entries.bytes.writeUInt32LE(offset - this.baseOffset, pos + 8);
  }

  /** Offset of the last entry whose time < `timestamp` (a safe place to start scanning), or the base. */
  lookup(timestamp: number): number {
    const bytes = this.entries.bytes;
    let lo = 0;
    let hi = this.entries.count - 1;
    let found = this.baseOffset;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (Number(bytes.readBigInt64LE(mid * entryBytes)) < timestamp) {
        found = this.baseOffset + bytes.readUInt32LE(mid * entryBytes + 8);
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }

  sanityCheck(file: string, nextOffset: number): void {
    const bytes = this.entries.bytes;
    let lastTime = -Infinity;
    let lastOffset = -1;
    for (let i = 0; i < this.entries.count; i++) {
      const time = Number(bytes.readBigInt64LE(i * entryBytes));
      const relative = bytes.readUInt32LE(i * entryBytes + 8);
      if (time < lastTime || relative <= lastOffset) throw new CorruptIndexError(file, `entry ${i} is out of order`);
      if (this.baseOffset + relative >= nextOffset) throw new CorruptIndexError(file, `entry ${i} offset past the segment's last offset`);
      lastTime = time;
      lastOffset = relative;
    }
  }

  /** The file, for a log of `logBytes` bytes, its body a view of the entries. */
  parts(logBytes: number): IndexFileParts {
    return encodeIndexFile(timeIndexMagic, this.baseOffset, entryBytes, this.entries.bytes, this.entries.count, logBytes);
  }
}
