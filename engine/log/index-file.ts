/**
 * The shared shape of the sparse index files (.oix offset index, .tix time index):
 *
 *   header, 40 bytes: magic(4) version(1)=2 reserved(3) baseOffset(8 LE) entryCount(4 LE) entryBytes(4 LE)
 *                     checksum(8 LE: xxh64 of the whole file with these 8 bytes zero) logBytes(8 LE)
 *   entries: entryCount × entryBytes
 *
 * `logBytes` is the size of the log the index was built from. An index file that passes
 * every other check but was built for another size is stale: a filesystem that can bring an
 * older file back after a power cut (the index files of a roll are not fsynced, and a clean
 * close overwrites those of the one before) would otherwise hand out an index that covers
 * only part of its segment. Version 1 files (32-byte header, no logBytes) are still read,
 * without that check; they are replaced as their segment is next sealed or rebuilt.
 *
 * Indexes are derived data (Kafka: "in the event of a crash it is rebuilt"): checked when
 * loaded (checksum, size, then the entries' order and bounds) and rebuilt from the log when
 * a check fails. Kafka trusts its indexes without a checksum; ours are loaded whole anyway,
 * so an xxh64 over them costs microseconds and catches bit rot that a sanity check cannot
 * (a flipped key hash would otherwise make a lookup silently miss).
 */
import * as fs from 'node:fs';
import { xxh64, xxh64Stream, type Xxh64Stream } from '../format/checksum';
import { CorruptIndexError } from './errors';
import * as pool from './fs-pool';

export const indexVersion = 2;
/** Header bytes by version: 32 in version 1, 40 since logBytes. */
export function indexHeaderBytesOf(version: number): number {
  return version === 1 ? 32 : 40;
}
export const indexHeaderBytes = indexHeaderBytesOf(indexVersion);

export interface IndexFileHeader {
  version: number;
  baseOffset: number;
  entryCount: number;
  /** The log size the index was built from; null in a version 1 file. */
  logBytes: number | null;
  headerBytes: number;
}

/**
 * An index file as it is written: its header, then views of the index's own memory (not
 * copied: the index of a rolled segment no longer changes). The header's checksum field is
 * zero until `checksum` or `checksumInSlices` fills it.
 */
export class IndexFileParts {
  constructor(
    readonly header: Buffer,
    private readonly checksumAt: number,
    readonly body: readonly Uint8Array[],
  ) {}

  /** The header and the body, for one writev. */
  get pieces(): Uint8Array[] {
    return [this.header, ...this.body];
  }

  /** Fills the checksum field: xxh64 of the whole file with those 8 bytes zero. */
  checksum(): this {
    const hash = this.startHash();
    for (const piece of this.body) hash.update(piece);
    this.header.writeBigUInt64LE(hash.digest(), this.checksumAt);
    return this;
  }

  /**
   * checksum() with a turn of the event loop after every `sliceBytes` hashed: a seal in the
   * background. The key index of a full segment of 100 B messages is 7.7 MB: copied into one
   * buffer and hashed in one go, the seal held every client of the broker 7.7–11.3 ms at each
   * roll; now its longest step is 0.2–1.3 ms (/tmp probe timing the seal's synchronous part).
   */
  async checksumInSlices(sliceBytes = indexHashSliceBytes): Promise<this> {
    const hash = this.startHash();
    let sinceTurn = 0;
    for (const piece of this.body) {
      for (let at = 0; at < piece.length; ) {
        if (sinceTurn >= sliceBytes) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          sinceTurn = 0;
        }
        const end = Math.min(piece.length, at + sliceBytes - sinceTurn);
        hash.update(piece.subarray(at, end));
        sinceTurn += end - at;
        at = end;
      }
    }
    this.header.writeBigUInt64LE(hash.digest(), this.checksumAt);
    return this;
  }

  /** The whole file in one buffer, its checksum filled (a synchronous seal; verify's comparison). */
  join(): Buffer {
    this.checksum();
    return Buffer.concat(this.pieces);
  }

  private startHash(): Xxh64Stream {
    this.header.writeBigUInt64LE(0n, this.checksumAt);
    const hash = xxh64Stream();
    hash.update(this.header);
    return hash;
  }
}

/** How many bytes of an index file a seal in the background hashes between turns of the event loop (tens of µs with the native hasher). */
const indexHashSliceBytes = 256 * 1024;

export function encodeIndexFile(magic: string, baseOffset: number, entryBytes: number, entries: Uint8Array, entryCount: number, logBytes: number): IndexFileParts {
  const header = Buffer.alloc(indexHeaderBytes);
  header.write(magic, 0, 'latin1');
  header.writeUInt8(indexVersion, 4);
  header.writeBigInt64LE(BigInt(baseOffset), 8);
  header.writeUInt32LE(entryCount, 16);
  header.writeUInt32LE(entryBytes, 20);
  header.writeBigUInt64LE(BigInt(logBytes), 32);
  return new IndexFileParts(header, 24, [entries.subarray(0, entryCount * entryBytes)]);
}

/**
 * xxh64 of a whole index file with its 8-byte checksum field (at `at`) taken as zero, so the
 * header is covered too. The field is restored before returning.
 */
export function fileChecksum(bytes: Buffer, at: number): bigint {
  const stored = bytes.readBigUInt64LE(at);
  bytes.writeBigUInt64LE(0n, at);
  const sum = xxh64(bytes);
  bytes.writeBigUInt64LE(stored, at);
  return sum;
}

/** The CorruptIndexError of an index built for another log size than the segment's. */
export function staleIndexError(file: string, logBytes: number, segmentBytes: number): CorruptIndexError {
  return new CorruptIndexError(file, `built for ${logBytes} bytes of log, the segment has ${segmentBytes}: stale (an older file)`);
}

/**
 * Reads and checks the header (and the checksum); throws CorruptIndexError naming the file
 * and the numbers. With `segmentBytes`, a version 2 file must have been built for that size.
 */
export function decodeIndexFile(file: string, bytes: Buffer, magic: string, entryBytes: number, baseOffset: number, segmentBytes?: number): { header: IndexFileHeader; entries: Buffer } {
  if (bytes.length < 5) throw new CorruptIndexError(file, `${bytes.length} bytes, shorter than the header`);
  const gotMagic = bytes.toString('latin1', 0, 4);
  if (gotMagic !== magic) throw new CorruptIndexError(file, `magic ${JSON.stringify(gotMagic)}, expected ${magic}`);
  const version = bytes.readUInt8(4);
  if (version !== 1 && version !== indexVersion) throw new CorruptIndexError(file, `version ${version}, expected ${indexVersion} (or 1)`);
  const headerBytes = indexHeaderBytesOf(version);
  if (bytes.length < headerBytes) throw new CorruptIndexError(file, `${bytes.length} bytes, shorter than the header`);
  const fileBase = Number(bytes.readBigInt64LE(8));
  if (fileBase !== baseOffset) throw new CorruptIndexError(file, `base offset ${fileBase}, the segment's is ${baseOffset}`);
  const entryCount = bytes.readUInt32LE(16);
  const gotEntryBytes = bytes.readUInt32LE(20);
  if (gotEntryBytes !== entryBytes) throw new CorruptIndexError(file, `entry size ${gotEntryBytes}, expected ${entryBytes}`);
  if (bytes.length !== headerBytes + entryCount * entryBytes) {
    throw new CorruptIndexError(file, `${bytes.length} bytes for ${entryCount} entries of ${entryBytes}`);
  }
  const entries = bytes.subarray(headerBytes);
  if (fileChecksum(bytes, 24) !== bytes.readBigUInt64LE(24)) throw new CorruptIndexError(file, 'checksum mismatch');
  const logBytes = version === 1 ? null : Number(bytes.readBigUInt64LE(32));
  if (logBytes !== null && segmentBytes !== undefined && logBytes !== segmentBytes) throw staleIndexError(file, logBytes, segmentBytes);
  return { header: { version, baseOffset: fileBase, entryCount, logBytes, headerBytes }, entries };
}

/** Writes a whole file and fdatasyncs it (index files are written once, at roll or close). */
export function writeFileSynced(file: string, bytes: Uint8Array): void {
  const fd = fs.openSync(file, 'w');
  try {
    let written = 0;
    while (written < bytes.length) written += fs.writeSync(fd, bytes, written, bytes.length - written, written);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes a file through the thread pool, not synced: for index files, which are derived data
 * — each carries a checksum, is checked when first loaded, and is rebuilt from the (synced)
 * log when missing or torn — so their bytes may reach the disk with the kernel's writeback.
 */
export function writeIndexFileAsync(file: string, parts: IndexFileParts): Promise<void> {
  return writeFileThroughPool(file, parts, false);
}

/** writeFileSynced through the thread pool (a segment sealed at store close, many channels at once). */
export function writeFileSyncedAsync(file: string, parts: IndexFileParts): Promise<void> {
  return writeFileThroughPool(file, parts, true);
}

async function writeFileThroughPool(file: string, parts: IndexFileParts, sync: boolean): Promise<void> {
  const fd = await pool.open(file, 'w');
  try {
    await pool.writev(fd, parts.pieces, 0);
    if (sync) await pool.fdatasync(fd);
  } finally {
    await pool.close(fd);
  }
}

/** A growable array of fixed-size little-endian entries. */
export class EntryBuffer {
  bytes: Buffer;
  count = 0;
  constructor(readonly entryBytes: number, initialCount = 256) {
    this.bytes = Buffer.alloc(entryBytes * initialCount);
  }
  /** Returns the byte position of a new entry, growing the buffer when needed. */
  push(): number {
    const pos = this.count * this.entryBytes;
    if (pos + this.entryBytes > this.bytes.length) {
      const grown = Buffer.alloc(this.bytes.length * 2);
      this.bytes.copy(grown);
      this.bytes = grown;
    }
    this.count++;
    return pos;
  }
  static from(entryBytes: number, entries: Buffer, count: number): EntryBuffer {
    const buffer = new EntryBuffer(entryBytes, Math.max(count, 16));
    entries.copy(buffer.bytes, 0, 0, count * entryBytes);
    buffer.count = count;
    return buffer;
  }
}
