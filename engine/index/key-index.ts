/**
 * Key index of one segment (.kix): a hash file with chained entries (its slot count in the header), after
 * RocketMQ's IndexFile. msgId, key and the `traceid` header are indexed, each hashed with its
 * own seed (format/index-keys.ts), so the three kinds share one file.
 *
 *   header, 64 bytes:  magic "WKIX"(4) version(1)=2 reserved(3) baseOffset(8) baseTimestamp(8)
 *                      slotCount(4) entryCount(4) checksum(8: xxh64 of the whole file, these 8 bytes as zero)
 *                      logBytes(8: the log size the index was built from) reserved(16)
 *   slots:             slotCount × u32 — entry number + 1 of the newest entry in the slot, 0 = empty
 *   entries, 20 bytes: keyHash(4) position(4) relativeOffset(4) timeDelta(4) prevEntry(4)
 *                      prevEntry = entry number + 1 of the next older entry in the same slot, 0 = end
 *
 * An index whose logBytes is not its segment's size is stale (an older file a power cut
 * brought back; see log/index-file.ts) and fails its check like a corrupt one. Version 1
 * files (logBytes reserved, zero) are still read; their last entry must be in the segment's
 * last batch instead (version1LastPosition).
 *
 * Invariants: prevEntry of entry i is < i + 1 (chains only point back); positions are below
 * the segment's size; relativeOffset below the segment's record count. A hit is only a
 * candidate: the caller confirms it against the record (hash collisions are expected).
 *
 * The active segment's index lives in memory (KeyIndexBuilder) and is written at roll and
 * at clean close; closed segments' files are checked whole once (checksum and structure) when
 * first used, then read with positional reads (KeyIndexFile) so a lookup touches a handful
 * of small reads.
 */
import * as fs from 'node:fs';
import { CorruptIndexError } from '../log/errors';
import { limits } from '../limits';
import { fileChecksum, IndexFileParts, staleIndexError } from '../log/index-file';

export const keyIndexMagic = 'WKIX';
export const keyIndexVersion = 2;
export const keyIndexHeaderBytes = 64;
export const keyIndexEntryBytes = 20;

export interface KeyHit {
  position: number;
  offset: number;
  timestamp: number;
}

export interface TimeRange {
  timeFrom?: number;
  timeTo?: number;
}

function inRange(timestamp: number, range: TimeRange): boolean {
  return (range.timeFrom === undefined || timestamp >= range.timeFrom) && (range.timeTo === undefined || timestamp <= range.timeTo);
}

/**
 * Entries are kept in fixed chunks rather than one array grown by doubling: a doubling
 * copied the whole array on the append path (4–15 ms at a quarter of a million entries,
 * a stall every segment in the 100 B append benchmark), a new chunk costs 80 KiB of zeroes.
 */
const chunkEntriesShift = 12;
const chunkEntries = 1 << chunkEntriesShift; // 4,096 entries, 80 KiB a chunk
const chunkMask = chunkEntries - 1;

/**
 * The in-memory key index of the active segment. It starts with few slots and doubles them
 * whenever entries pass two per slot, up to `slotCountMax`: a fixed 262,144 slots cost 1 MiB
 * of memory per channel and 1 MiB of file per segment however little it held (a 256-channel
 * topic with one message per channel took 263 MB). A doubling relinks every entry in the
 * order it was added, so the chains — and the file — are exactly what a builder made with
 * the final slot count would have; total work stays linear in the entries.
 */
export class KeyIndexBuilder {
  private slots: Uint32Array;
  /** Five u32 per entry: keyHash, position, relativeOffset, timeDelta, prevEntry (the file layout), in chunks of chunkEntries. */
  private chunks: Uint32Array[] = [];
  private count = 0;
  private baseTimestamp = -1;

  /** `slotCountMax` defaults to `slotCount`: a builder that never grows (verify compares files with one). */
  constructor(
    readonly baseOffset: number,
    slotCount: number,
    private readonly slotCountMax: number = slotCount,
  ) {
    this.slots = new Uint32Array(slotCount);
  }

  get slotCount(): number {
    return this.slots.length;
  }

  /** Doubles the slots and relinks every entry, oldest first, so each chain runs newest → oldest as before. */
  private grow(): void {
    const slots = new Uint32Array(this.slots.length * 2);
    const mask = slots.length - 1;
    for (let i = 0; i < this.count; i++) {
      const e = this.chunks[i >>> chunkEntriesShift]!;
      const at = 5 * (i & chunkMask);
      const slot = e[at]! & mask;
      e[at + 4] = slots[slot]!;
      slots[slot] = i + 1;
    }
    this.slots = slots;
  }

  get entryCount(): number {
    return this.count;
  }

  /** Loads a sealed segment's whole file back into memory (reopening it as the active segment). */
  static fromBytes(file: string, bytes: Buffer, baseOffset: number, segmentBytes: number, recordCount: number): KeyIndexBuilder {
    const header = checkKeyIndexBytes(file, bytes, baseOffset, segmentBytes, recordCount);
    const builder = new KeyIndexBuilder(baseOffset, header.slotCount, Math.max(header.slotCount, limits.keyIndexSlotCount));
    bytes.copy(Buffer.from(builder.slots.buffer), 0, keyIndexHeaderBytes, keyIndexHeaderBytes + header.slotCount * 4);
    const entriesAt = keyIndexHeaderBytes + header.slotCount * 4;
    for (let first = 0; first < header.entryCount; first += chunkEntries) {
      const chunk = new Uint32Array(5 * chunkEntries);
      const from = entriesAt + first * keyIndexEntryBytes;
      bytes.copy(Buffer.from(chunk.buffer), 0, from, from + Math.min(chunkEntries, header.entryCount - first) * keyIndexEntryBytes);
      builder.chunks.push(chunk);
    }
    builder.count = header.entryCount;
    builder.baseTimestamp = header.entryCount > 0 ? header.baseTimestamp : -1;
    return builder;
  }

  add(hash: number, position: number, offset: number, timestamp: number): void {
    if (this.baseTimestamp < 0) this.baseTimestamp = timestamp;
    if (this.count >= 2 * this.slots.length && this.slots.length < this.slotCountMax) this.grow();
    const within = this.count & chunkMask;
    if (within === 0) this.chunks.push(new Uint32Array(5 * chunkEntries));
    const e = this.chunks[this.count >>> chunkEntriesShift]!;
    const slot = hash & (this.slotCount - 1);
    const at = 5 * within;
    e[at] = hash;
    e[at + 1] = position;
    e[at + 2] = offset - this.baseOffset;
    e[at + 3] = Math.max(0, timestamp - this.baseTimestamp);
    e[at + 4] = this.slots[slot]!;
    this.count++;
    this.slots[slot] = this.count; // entry number + 1
  }

  /**
   * add() for every pair (record index, hash) of `pairs[0, 2 * count)`, all in the batch at
   * `position` whose first record is `baseOffset`: what a walk of the batch adds, in the same
   * order, from the key ranges its encoder noted (IndexKeyRanges, hashed by Segment.indexBatch).
   */
  addHashed(pairs: Uint32Array, count: number, position: number, baseOffset: number, timestamp: number): void {
    if (count === 0) return;
    if (this.baseTimestamp < 0) this.baseTimestamp = timestamp;
    // The doublings add() would make within these entries, made first: the relinking makes
    // the chains the same either way (see grow), and the loop below needs one slot count.
    while (this.count + count - 1 >= 2 * this.slots.length && this.slots.length < this.slotCountMax) this.grow();
    const slots = this.slots;
    const mask = slots.length - 1;
    const relative = baseOffset - this.baseOffset;
    const timeDelta = Math.max(0, timestamp - this.baseTimestamp);
    let n = this.count;
    let e = (n & chunkMask) === 0 ? null : this.chunks[n >>> chunkEntriesShift]!;
    for (let p = 0; p < 2 * count; p += 2) {
      const within = n & chunkMask;
      if (within === 0) this.chunks.push((e = new Uint32Array(5 * chunkEntries)));
      const hash = pairs[p + 1]!;
      const slot = hash & mask;
      const at = 5 * within;
      e![at] = hash;
      e![at + 1] = position;
      e![at + 2] = relative + pairs[p]!;
      e![at + 3] = timeDelta;
      e![at + 4] = slots[slot]!;
      n++;
      slots[slot] = n; // entry number + 1
    }
    this.count = n;
  }

  lookup(hash: number, range: TimeRange, limit: number): KeyHit[] {
    const hits: KeyHit[] = [];
    const wanted = hash >>> 0;
    let next = this.slots[hash & (this.slotCount - 1)]!;
    let steps = 0;
    while (next !== 0 && hits.length < limit && steps++ < this.count) {
      const entry = next - 1;
      const e = this.chunks[entry >>> chunkEntriesShift]!;
      const at = 5 * (entry & chunkMask);
      if (e[at] === wanted) {
        const timestamp = this.baseTimestamp + e[at + 3]!;
        if (inRange(timestamp, range)) hits.push({ position: e[at + 1]!, offset: this.baseOffset + e[at + 2]!, timestamp });
      }
      next = e[at + 4]!;
    }
    return hits;
  }

  /**
   * The file, for a log of `logBytes` bytes: its header, then views of the slots and of each
   * chunk's entries (copied as they are: the file is little-endian, as is every host Node
   * runs on). Not copied: a rolled segment's index no longer changes.
   */
  parts(logBytes: number): IndexFileParts {
    const header = Buffer.alloc(keyIndexHeaderBytes);
    header.write(keyIndexMagic, 0, 'latin1');
    header.writeUInt8(keyIndexVersion, 4);
    header.writeBigInt64LE(BigInt(this.baseOffset), 8);
    header.writeBigInt64LE(BigInt(Math.max(0, this.baseTimestamp)), 16);
    header.writeUInt32LE(this.slotCount, 24);
    header.writeUInt32LE(this.count, 28);
    header.writeBigUInt64LE(BigInt(logBytes), 40);
    const body: Uint8Array[] = [new Uint8Array(this.slots.buffer, this.slots.byteOffset, this.slots.byteLength)];
    for (let c = 0; c < this.chunks.length; c++) {
      const entries = Math.min(chunkEntries, this.count - c * chunkEntries);
      body.push(new Uint8Array(this.chunks[c]!.buffer, 0, entries * keyIndexEntryBytes));
    }
    return new IndexFileParts(header, 32, body);
  }

  /** The file in one buffer (verify compares it with the one on disk). */
  encode(logBytes: number): Buffer {
    return this.parts(logBytes).join();
  }
}

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) throw new Error('key-index: a big-endian host needs byte swapping here');

export interface KeyIndexHeader {
  baseOffset: number;
  baseTimestamp: number;
  slotCount: number;
  entryCount: number;
  version: number;
  /** The log size the index was built from; null in a version 1 file. */
  logBytes: number | null;
}

/** Checks the header against the file's size and the segment (the log size it was built for: checkBuiltFor, after the checksum). */
export function decodeKeyIndexHeader(file: string, header: Buffer, fileBytes: number, baseOffset: number): KeyIndexHeader {
  if (header.length < keyIndexHeaderBytes) throw new CorruptIndexError(file, 'shorter than the header');
  const magic = header.toString('latin1', 0, 4);
  if (magic !== keyIndexMagic) throw new CorruptIndexError(file, `magic ${JSON.stringify(magic)}, expected ${keyIndexMagic}`);
  const version = header.readUInt8(4);
  if (version !== 1 && version !== keyIndexVersion) throw new CorruptIndexError(file, `version ${version}, expected ${keyIndexVersion} (or 1)`);
  const fileBase = Number(header.readBigInt64LE(8));
  if (fileBase !== baseOffset) throw new CorruptIndexError(file, `base offset ${fileBase}, the segment's is ${baseOffset}`);
  const slotCount = header.readUInt32LE(24);
  if (slotCount === 0 || (slotCount & (slotCount - 1)) !== 0) throw new CorruptIndexError(file, `slot count ${slotCount} is not a power of two`);
  const entryCount = header.readUInt32LE(28);
  const expected = keyIndexHeaderBytes + slotCount * 4 + entryCount * keyIndexEntryBytes;
  if (fileBytes !== expected) throw new CorruptIndexError(file, `${fileBytes} bytes, expected ${expected} for ${slotCount} slots and ${entryCount} entries`);
  return { baseOffset: fileBase, baseTimestamp: Number(header.readBigInt64LE(16)), slotCount, entryCount, version, logBytes: version === 1 ? null : Number(header.readBigUInt64LE(40)) };
}

/** The stale check, after the checksum (a flipped logBytes is bit rot, said as such). */
function checkBuiltFor(file: string, header: KeyIndexHeader, segmentBytes: number): void {
  if (header.logBytes !== null && header.logBytes !== segmentBytes) throw staleIndexError(file, header.logBytes, segmentBytes);
}

/**
 * Checks every slot and entry of a whole key index file (verify, and open when the file is
 * new to us). Returns the header; throws CorruptIndexError naming the first fault.
 */
export function checkKeyIndexBytes(file: string, bytes: Buffer, baseOffset: number, segmentBytes: number, recordCount: number): KeyIndexHeader {
  const header = decodeKeyIndexHeader(file, bytes, bytes.length, baseOffset);
  if (fileChecksum(bytes, 32) !== bytes.readBigUInt64LE(32)) throw new CorruptIndexError(file, 'checksum mismatch');
  checkBuiltFor(file, header, segmentBytes);
  const slotsAt = keyIndexHeaderBytes;
  for (let s = 0; s < header.slotCount; s++) {
    const head = bytes.readUInt32LE(slotsAt + s * 4);
    if (head > header.entryCount) throw new CorruptIndexError(file, `slot ${s} points at entry ${head - 1} of ${header.entryCount}`);
  }
  const entriesAt = slotsAt + header.slotCount * 4;
  for (let i = 0; i < header.entryCount; i++) {
    const at = entriesAt + i * keyIndexEntryBytes;
    const position = bytes.readUInt32LE(at + 4);
    const relative = bytes.readUInt32LE(at + 8);
    const prev = bytes.readUInt32LE(at + 16);
    if (position >= segmentBytes) throw new CorruptIndexError(file, `entry ${i} position ${position} past the segment's ${segmentBytes} bytes`);
    if (relative >= recordCount) throw new CorruptIndexError(file, `entry ${i} offset ${baseOffset + relative} past the segment's records`);
    if (prev > i) throw new CorruptIndexError(file, `entry ${i} chains forward to entry ${prev - 1}`);
  }
  return header;
}

/**
 * For a version 1 file, which does not say the log size it was built for: the byte position
 * of its last entry's batch, -1 when it has no entries; null for a newer file (its logBytes
 * is checked instead). Entries are added in log order and every record's msgId is one, so a
 * whole file's last entry is in its segment's last batch, and a stale one's is not. (The
 * record count cannot serve: a repair may leave offsets without records.) `bytes` is a whole
 * file that passed decodeKeyIndexHeader.
 */
export function version1LastPosition(bytes: Buffer): number | null {
  if (bytes.readUInt8(4) !== 1) return null;
  const slotCount = bytes.readUInt32LE(24);
  const entryCount = bytes.readUInt32LE(28);
  return entryCount === 0 ? -1 : bytes.readUInt32LE(keyIndexHeaderBytes + slotCount * 4 + (entryCount - 1) * keyIndexEntryBytes + 4);
}

/** A closed segment's key index, read with positional reads. */
export class KeyIndexFile {
  private readonly scratch = Buffer.alloc(keyIndexEntryBytes);

  private constructor(
    readonly file: string,
    private readonly fd: number,
    readonly header: KeyIndexHeader,
  ) {}

  /**
   * Opens the file after checking its header, size, checksum and the log size it was built
   * for (one sequential read). The
   * entry-by-entry walk (chains, bounds) is verify's: lookups bound every chain step anyway
   * and confirm every hit against the record.
   */
  static open(file: string, baseOffset: number, segmentBytes: number, check?: (bytes: Buffer) => void): KeyIndexFile {
    const fd = fs.openSync(file, 'r');
    try {
      const bytes = fs.readFileSync(fd);
      const header = decodeKeyIndexHeader(file, bytes, bytes.length, baseOffset);
      if (fileChecksum(bytes, 32) !== bytes.readBigUInt64LE(32)) throw new CorruptIndexError(file, 'checksum mismatch');
      checkBuiltFor(file, header, segmentBytes);
      check?.(bytes);
      return new KeyIndexFile(file, fd, header);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  lookup(hash: number, range: TimeRange, limit: number): KeyHit[] {
    const { slotCount, entryCount, baseOffset, baseTimestamp } = this.header;
    const hits: KeyHit[] = [];
    const buf = this.scratch;
    fs.readSync(this.fd, buf, 0, 4, keyIndexHeaderBytes + (hash & (slotCount - 1)) * 4);
    let next = buf.readUInt32LE(0);
    const entriesAt = keyIndexHeaderBytes + slotCount * 4;
    let steps = 0;
    while (next !== 0 && hits.length < limit) {
      // A chain can only point backwards; a longer walk means a corrupt file, not a lookup.
      if (next > entryCount || steps++ > entryCount) throw new CorruptIndexError(this.file, `chain leaves the file at entry ${next - 1}`);
      fs.readSync(this.fd, buf, 0, keyIndexEntryBytes, entriesAt + (next - 1) * keyIndexEntryBytes);
      if (buf.readUInt32LE(0) === hash >>> 0) {
        const timestamp = baseTimestamp + buf.readUInt32LE(12);
        if (inRange(timestamp, range)) {
          hits.push({ position: buf.readUInt32LE(4), offset: baseOffset + buf.readUInt32LE(8), timestamp });
        }
      }
      const prev = buf.readUInt32LE(16);
      if (prev >= next) throw new CorruptIndexError(this.file, `entry ${next - 1} chains forward`);
      next = prev;
    }
    return hits;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
