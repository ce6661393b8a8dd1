/**
 * One segment: a log file named by its 20-digit base offset, plus its sparse offset index
 * (.oix), time index (.tix) and key index (.kix).
 *
 * Life cycle: `create` (new active segment) or `recover` (scan an untrusted file) →
 * appends via `indexBatch` after each write → `seal` at roll (index files written and
 * synced) → read-only. `openSealed` opens a segment trusted by the checkpoint; its index
 * files are checked when first used and rebuilt from the log when they fail.
 *
 * Invariants:
 * - `size` is the byte length of whole batches; nothing past it is ever read;
 * - `nextOffset` = baseOffset + number of records (offsets are dense within a segment);
 * - broker timestamps are non-decreasing (the channel makes them so);
 * - the active segment's indexes live in memory and cover exactly [0, size);
 * - the log file may run past `size` only with the end mark (8 bytes, FORMAT.md) and zeros
 *   after it, up to `writtenTo` (the zeroed tail, written ahead in sync mode "batch":
 *   `zerosAhead`); a seal and a clean close cut the file to `size` and the mark (`fileEnd`),
 *   writing the mark if it is not there; recovery cuts it to `size`, and the mark when it is
 *   there.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { lz4Codec } from '../codec';
import { WaymarkError } from '../format/errors';
import { xxh32Range } from '../format/checksum';
import { forEachRecordKeys, IndexKind, type IndexKeyRanges } from '../format/index-keys';
import { msgIdBytes } from '../format/msg-id';
import { batchHeaderBytes, patchBatch, probeHeader, recordsSection, type BatchHeader } from '../format/record-batch';
import { checkKeyIndexBytes, KeyIndexBuilder, KeyIndexFile, version1LastPosition, type KeyHit, type TimeRange } from '../index/key-index';
import { limits } from '../limits';
import { CorruptIndexError, DamageBeforeSoundBatchesError } from './errors';
import { syncDir, type Checkpoint } from './checkpoint';
import * as pool from './fs-pool';
import { writeFileSynced, writeFileSyncedAsync, writeIndexFileAsync, type IndexFileParts } from './index-file';
import { OffsetIndex } from './offset-index';
import { batchStartsAt, damagedTailEnd, encodeEndMark, endMarkAt, endMarkBytes, findNextBatch, lastCommitOf, scanSegment, segmentFileFits } from './segment-scanner';
import { TimeIndex } from './time-index';

let hashScratch = new Uint32Array(3 * 1024);

/** (record index, xxh32) pairs of the key ranges, in one scratch array reused by every call. */
function hashRanges({ bytes, entries }: IndexKeyRanges): Uint32Array {
  const count = entries.length / 3;
  if (hashScratch.length < 2 * count) hashScratch = new Uint32Array(2 * count);
  for (let k = 0; k < count; k++) {
    const tagged = entries[3 * k]!;
    hashScratch[2 * k] = tagged >>> 2;
    hashScratch[2 * k + 1] = xxh32Range(bytes, entries[3 * k + 1]!, entries[3 * k + 2]!, tagged & 3);
  }
  return hashScratch;
}

/** A segment's log and its index files: the base offset, 20 digits, and the extension. */
export const segmentNamePattern = /^(\d{20})\.log$/;
export const indexNamePattern = /^(\d{20})\.(oix|tix|kix)$/;

/** The index files among a folder's `names` whose log is not among them (a removal cut short, a log removed by hand). */
export function orphanIndexNames(names: readonly string[]): string[] {
  const logs = new Set(names.filter((n) => segmentNamePattern.test(n)).map((n) => n.slice(0, 20)));
  return names.filter((n) => indexNamePattern.test(n) && !logs.has(n.slice(0, 20)));
}

const emptyBytes = new Uint8Array(0);
let zeros: Uint8Array | null = null;
/** One shared buffer of zeros for every segment's zeroed tail (only ever read). */
function zeroBytes(): Uint8Array {
  return (zeros ??= new Uint8Array(limits.zeroAheadBytes));
}

/** A key index's first slot count: a power of two within the limits. */
function checkKeySlotCount(count: number): void {
  if (count < limits.keyIndexSlotCountMin || count > limits.keyIndexSlotCount || (count & (count - 1)) !== 0) {
    throw new Error(`key index slot count ${count} is not a power of two within ${limits.keyIndexSlotCountMin}…${limits.keyIndexSlotCount}`);
  }
}

const outOfSpaceCodes = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/** A write failed for want of space (a full disk, a quota, a file size limit). */
export function outOfSpace(err: NodeJS.ErrnoException): boolean {
  return outOfSpaceCodes.has(err.code ?? '');
}

export function segmentFileName(baseOffset: number, extension: string): string {
  return `${String(baseOffset).padStart(20, '0')}.${extension}`;
}

/** What the checkpoint remembers of a sealed segment. */
export interface SegmentMeta {
  baseOffset: number;
  bytes: number;
  nextOffset: number;
  firstTimestamp: number;
  maxTimestamp: number;
}

/** What a scan of an untrusted segment found and did. */
export interface RecoveryFinding {
  file: string;
  position: number;
  bytesDropped: number;
  /** torn: cut short at the end (a crash); corrupt: bytes dropped; patched: an offset field outside the checksum rewritten. */
  kind: 'torn' | 'corrupt' | 'patched';
  reason: string;
  /** For corruption: where the dropped bytes were saved before truncation. */
  savedTo?: string;
}

export interface RecoveredBatch {
  header: BatchHeader;
  bytes: Buffer;
}

export class Segment {
  size = 0;
  nextOffset: number;
  firstTimestamp = -1;
  maxTimestamp = -1;
  sealed = false;
  /**
   * Bytes of the log file that are written, data or the zeroed tail after it: a write that
   * ends at or below this overwrites allocated, written blocks (no file-size change to commit).
   */
  writtenTo = 0;
  /**
   * The length of the end mark at `size`, right after the last batch (every commit writes
   * one): 16 (store format 4), 8 (a format-3 mark a recovery or reopen found there), 0 none.
   */
  markBytes = 0;
  private bytesSinceIndexEntry = Infinity;
  private offsetIndex: OffsetIndex | null = null;
  private timeIndex: TimeIndex | null = null;
  private keyBuilder: KeyIndexBuilder | null = null;
  private keyFile: KeyIndexFile | null = null;
  /** Async reads in flight (close() leaves the fd to the last of them). */
  private reading = 0;
  private closing = false;
  /** Its descriptor is closed (closeLogWhenIdle): nothing may use `fd` again. */
  private logClosed = false;
  /** Its log is unlinked (remove()): the last close frees the blocks (closeLog). */
  private removed = false;
  /**
   * The log and its index files on disk are exactly what a clean close left: the log durable,
   * the index files checked as they were loaded (reopenActive). True from reopenActive until
   * the first batch is indexed; a seal meanwhile has nothing to write or sync.
   */
  private untouched = false;
  /** The newest fdatasync asked of `fd` (syncData), settled either way; null when none is under way. */
  private syncInFlight: Promise<void> | null = null;
  /**
   * The first fdatasync of `fd` that failed. Linux reports a write-back error once per
   * descriptor: the next fdatasync returns 0 though the pages it failed to write are lost (the
   * "fsyncgate" behaviour). So a later success on this descriptor proves nothing, and every
   * later syncData rejects with this error.
   */
  private syncFailure: Error | null = null;

  /**
   * @param writesDurable the log is open O_DSYNC (sync mode "batch"): each write returns once
   *   its bytes are durable.
   */
  private constructor(
    readonly dir: string,
    readonly baseOffset: number,
    readonly fd: number,
    private readonly writesDurable = false,
  ) {
    this.nextOffset = baseOffset;
  }

  path(extension: string): string {
    return path.join(this.dir, segmentFileName(this.baseOffset, extension));
  }

  get recordCount(): number {
    return this.nextOffset - this.baseOffset;
  }

  get keyEntryCount(): number {
    return this.keyBuilder?.entryCount ?? 0;
  }

  /**
   * The hash slots of the key index being built (the least when there is none). A segment
   * that rolls full hands this on to the next one, which then starts at the size its
   * predecessor grew to: growing from 64 slots doubles a dozen times a segment, and each of
   * the last doublings relinks every entry so far on the append path (~1–3.5 ms at 65,000–
   * 256,000 entries). One that rolls by age or is emptied by retention starts small again.
   */
  get keySlotCount(): number {
    return this.keyBuilder?.slotCount ?? limits.keyIndexSlotCountMin;
  }

  /** See `untouched`: the log and index files are as a clean close left them, the log durable. */
  get untouchedSinceCleanClose(): boolean {
    return this.untouched;
  }

  meta(): SegmentMeta {
    return { baseOffset: this.baseOffset, bytes: this.size, nextOffset: this.nextOffset, firstTimestamp: this.firstTimestamp, maxTimestamp: this.maxTimestamp };
  }

  /**
   * A new, empty active segment. With `dsync` the file is opened O_DSYNC: each write returns
   * once its data is durable (a write and an fdatasync in one call, one thread-pool hand-off
   * instead of two). `keySlotCount`: the hash slots its key index starts with (a power of
   * two within the limits; ChannelLog passes on a full segment's, see `keySlotCount`).
   */
  static create(dir: string, baseOffset: number, dsync = false, keySlotCount: number = limits.keyIndexSlotCountMin): Segment {
    checkKeySlotCount(keySlotCount); // before the file is made: a refusal leaves nothing behind
    const file = path.join(dir, segmentFileName(baseOffset, 'log'));
    const fd = fs.openSync(file, writableFlags(dsync) | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
    const segment = new Segment(dir, baseOffset, fd, dsync);
    segment.startInMemoryIndexes(keySlotCount);
    return segment;
  }

  /**
   * Scans an untrusted segment (the active one after a crash, or one the checkpoint does
   * not know), truncates a torn tail silently and a corrupt tail loudly (the dropped bytes
   * are copied aside first), and rebuilds its indexes in memory. Damage with sound batches
   * after it is not a tail: DamageBeforeSoundBatchesError, nothing changed (the store repairs).
   * `lastCommitMayBeTorn` (the channel's last segment): a last group commit that did not reach
   * the disk whole is cut off first (tornLastCommit).
   */
  static recover(dir: string, baseOffset: number, onBatch?: (batch: RecoveredBatch) => void, dsync = false, lastCommitMayBeTorn = false): { segment: Segment; findings: RecoveryFinding[] } {
    const file = path.join(dir, segmentFileName(baseOffset, 'log'));
    const fd = fs.openSync(file, writableFlags(dsync));
    const segment = new Segment(dir, baseOffset, fd, dsync);
    segment.startInMemoryIndexes();
    let fileBytes = fs.fstatSync(fd).size;
    const findings: RecoveryFinding[] = [];
    // Only the channel's last segment: a commit that went on into the next segment was written
    // whole in this one before it went on (its slice's write returned first).
    const torn = lastCommitMayBeTorn ? tornLastCommit(fd, file, fileBytes) : null;
    if (torn) {
      findings.push(torn);
      fileBytes = torn.position;
    }
    let end: RecoveryFinding | null = null;
    for (const event of scanSegment(fd)) {
      if (event.kind === 'batch') {
        const { header } = event;
        // baseOffset sits outside the checksum (the broker patches it on append). The
        // checksum holds, so the batch is sound; within a segment offsets are dense, so a
        // disagreement is a flipped header bit: write back the offset its predecessor
        // implies rather than drop the rest of the file. (Broker time is outside too, but it
        // cannot be derived; the time index takes a running max, so a flipped time only
        // misplaces that batch in time.)
        const offset = segment.nextOffset;
        if (header.baseOffset !== offset) {
          findings.push({
            file,
            position: event.position,
            bytesDropped: 0,
            kind: 'patched',
            reason: `header said offset ${header.baseOffset}; rewrote ${offset} (a field outside the checksum)`,
          });
          patchBatch(event.bytes, offset, header.brokerTimestamp);
          fs.writeSync(fd, event.bytes, 0, 8, event.position);
          header.baseOffset = offset;
        }
        segment.indexBatch(event.position, header, event.bytes);
        segment.size = event.position + header.batchLength;
        onBatch?.({ header, bytes: event.bytes });
      } else if (event.kind === 'torn') {
        end = { file, position: event.position, bytesDropped: event.bytesDropped, kind: 'torn', reason: 'batch cut short at end of file' };
      } else {
        const soundAt = findNextBatch(fd, event.position + 1, fileBytes);
        if (soundAt >= 0) {
          fs.closeSync(fd);
          throw new DamageBeforeSoundBatchesError(dir, file, event.position, soundAt, event.reason);
        }
        // Up to the end mark and zeroed tail, if the file has them: they are not data.
        end = { file, position: event.position, bytesDropped: damagedTailEnd(fd, event.position, fileBytes) - event.position, kind: 'corrupt', reason: event.reason };
      }
    }
    if (end) {
      if (end.kind === 'corrupt') end.savedTo = saveBytesAside(fd, file, end.position, end.position + end.bytesDropped);
      fs.ftruncateSync(fd, segment.size);
      findings.push(end);
    } else {
      // The scan ended at the end mark or the zeroed tail: not data, no finding. The mark stays.
      segment.markBytes = segment.size > 0 ? endMarkAt(fd, segment.size, fileBytes) : 0;
      if (fileBytes > segment.fileEnd) fs.ftruncateSync(fd, segment.fileEnd);
    }
    segment.writtenTo = segment.fileEnd;
    if (findings.length > 0) fs.fdatasyncSync(fd);
    return { segment, findings };
  }

  /** A sealed segment the checkpoint vouches for; nothing is read until it is used. */
  static openSealed(dir: string, meta: SegmentMeta): Segment {
    const fd = fs.openSync(path.join(dir, segmentFileName(meta.baseOffset, 'log')), 'r');
    const segment = new Segment(dir, meta.baseOffset, fd);
    segment.size = meta.bytes;
    segment.nextOffset = meta.nextOffset;
    segment.firstTimestamp = meta.firstTimestamp;
    segment.maxTimestamp = meta.maxTimestamp;
    segment.sealed = true;
    return segment;
  }

  /**
   * Reopens the last segment after a clean close as the active one: its index files are
   * loaded (and fully checked) into memory. Throws CorruptIndexError when they fail, and the
   * caller falls back to recover().
   */
  static reopenActive(dir: string, meta: SegmentMeta, fileBytes: number, dsync = false): Segment {
    const fd = fs.openSync(path.join(dir, segmentFileName(meta.baseOffset, 'log')), writableFlags(dsync));
    const segment = new Segment(dir, meta.baseOffset, fd, dsync);
    try {
      segment.size = meta.bytes;
      // The caller found the file this size (segmentFileFits): the batches, and the end mark
      // when a format-3 close left one.
      segment.markBytes = fileBytes - meta.bytes;
      segment.writtenTo = fileBytes;
      segment.nextOffset = meta.nextOffset;
      segment.firstTimestamp = meta.firstTimestamp;
      segment.maxTimestamp = meta.maxTimestamp;
      segment.offsetIndex = OffsetIndex.decode(segment.path('oix'), readWhole(segment.path('oix')), meta.baseOffset, meta.bytes, meta.nextOffset);
      segment.timeIndex = TimeIndex.decode(segment.path('tix'), readWhole(segment.path('tix')), meta.baseOffset, meta.bytes, meta.nextOffset);
      const kix = readWhole(segment.path('kix'));
      segment.keyBuilder = KeyIndexBuilder.fromBytes(segment.path('kix'), kix, meta.baseOffset, meta.bytes, segment.recordCount);
      segment.checkKeyCoverage(kix);
      // The next batch gets an offset index entry only after another interval of bytes.
      segment.bytesSinceIndexEntry = 0;
      // The clean close made the log durable before its checkpoint (a seal's fdatasync, or
      // every write O_DSYNC), and the index files were just checked.
      segment.untouched = true;
      return segment;
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /** `keySlotCount`: checked by the caller (Segment.create) before the log file is made. */
  private startInMemoryIndexes(keySlotCount: number = limits.keyIndexSlotCountMin): void {
    this.offsetIndex = OffsetIndex.empty(this.baseOffset);
    this.timeIndex = TimeIndex.empty(this.baseOffset);
    this.keyBuilder = new KeyIndexBuilder(this.baseOffset, keySlotCount, limits.keyIndexSlotCount);
    this.bytesSinceIndexEntry = Infinity;
  }

  /** Updates the in-memory indexes for a batch now at `position` (bytes = the whole batch). */
  indexBatch(position: number, header: BatchHeader, bytes: Uint8Array, ranges: IndexKeyRanges | null = null): void {
    this.untouched = false;
    if (this.bytesSinceIndexEntry >= limits.indexIntervalBytes) {
      this.offsetIndex!.append(header.baseOffset, position);
      this.timeIndex!.append(Math.max(header.brokerTimestamp, this.maxTimestamp), header.baseOffset);
      this.bytesSinceIndexEntry = 0;
    }
    this.bytesSinceIndexEntry += header.batchLength;
    const keys = this.keyBuilder!;
    const timestamp = header.brokerTimestamp;
    if (ranges) {
      // Where our own encoder wrote the keys (store.append): no walk, and no decompression
      // of a section it has just compressed. Hashed here, while the batch's write runs.
      keys.addHashed(hashRanges(ranges), ranges.entries.length / 3, position, header.baseOffset, timestamp);
    } else {
      const section = recordsSection(bytes, 0, header, lz4Codec);
      forEachRecordKeys(section, header.recordCount, (record) => {
        const offset = header.baseOffset + record.index;
        keys.add(xxh32Range(section, record.msgIdAt, record.msgIdAt + msgIdBytes, IndexKind.msgId), position, offset, timestamp);
        if (record.keyLength >= 0) keys.add(xxh32Range(section, record.keyAt, record.keyAt + record.keyLength, IndexKind.key), position, offset, timestamp);
        if (record.traceIdLength >= 0) keys.add(xxh32Range(section, record.traceIdAt, record.traceIdAt + record.traceIdLength, IndexKind.traceId), position, offset, timestamp);
      });
    }
    if (this.firstTimestamp < 0) this.firstTimestamp = header.brokerTimestamp;
    this.maxTimestamp = Math.max(this.maxTimestamp, header.brokerTimestamp);
    this.nextOffset = header.baseOffset + header.recordCount;
  }

  /**
   * seal() with the file work in the thread pool, for a segment that just rolled: the log is
   * fdatasynced and the three index files written in the pool while appends go on in the next
   * segment (done inline, the whole broker stalled 40–65 ms at every roll of a 64 MiB segment
   * of 100 B messages). The files are written from views of the in-memory indexes, hashed a
   * slice at a time between turns of the event loop (IndexFileParts.checksumInSlices).
   * The index files are not synced: they are derived data, checksummed, checked when first
   * loaded and rebuilt from the log when missing or torn (writeIndexFileAsync). Until this
   * resolves the segment keeps its in-memory indexes, which reads and lookups use, and is not
   * `sealed`, so no checkpoint vouches for it yet; a crash before then leaves a segment the
   * checkpoint does not know, which open scans and seals.
   *
   * With `syncIndexFiles` it does what seal() does, in the thread pool: each index file is
   * written and fdatasynced, one after another (the active segment at a clean close, many
   * channels at once: Store.close).
   */
  async sealInBackground(options: { syncIndexFiles?: boolean } = {}): Promise<void> {
    if (this.sealed) return;
    if (this.untouched) {
      // What would be written is on disk already, checked: the seal of an idle channel at
      // close, or of one that rolls by age before its first append.
      this.keyBuilder = null;
      this.sealed = true;
      return;
    }
    const files = this.encodeIndexFiles();
    // The checkpoint is about to vouch for the log: in sync modes "interval" and "none" this
    // makes it durable. In "batch" it is already: every write was O_DSYNC, and open synced
    // what an earlier run left (ChannelLog.leftoverTailToSync). An fdatasync with nothing to
    // write still cost ~0.3 ms here, at every close of ten thousand channels. The end mark
    // goes after the last batch if it is not there, and a zeroed tail is cut off. The cut need
    // not be synced: the checkpoint vouches for a file of `size` bytes and the mark, and open
    // scans one of any other size (a cut a power loss undid costs a scan, never data; on ext4
    // the checkpoint's own sync commits it anyway).
    if (this.endMarkOwed()) await pool.writeAll(this.fd, encodeEndMark(this.size), this.size).then(() => this.markWritten(), (err: NodeJS.ErrnoException) => this.markFailed(err));
    if (this.cutZeroedTail()) await pool.ftruncate(this.fd, this.fileEnd);
    if (!this.writesDurable) await this.syncData();
    for (const [, parts] of files) await parts.checksumInSlices();
    if (options.syncIndexFiles) for (const [file, parts] of files) await writeFileSyncedAsync(file, parts);
    else await Promise.all(files.map(([file, parts]) => writeIndexFileAsync(file, parts)));
    this.keyBuilder = null;
    this.sealed = true;
  }

  /**
   * fdatasync of the log, one at a time on this descriptor: a call made while another runs
   * starts once that one is over. Two at once (the sync timer's and a roll's seal, in sync
   * mode "interval") shared one write-back error: the kernel reported it to one caller and
   * returned 0 to the other, which then vouched for lost bytes. Rejects with the first failure
   * from then on (syncFailure): a later 0 from the kernel on this descriptor proves nothing.
   */
  syncData(): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.syncFailure) throw this.syncFailure;
      if (this.logClosed) throw new WaymarkError('STORE_CLOSED', `segment ${this.baseOffset} of ${this.dir} is closed`);
      try {
        await pool.fdatasync(this.fd);
      } catch (err) {
        this.syncFailure ??= err as Error;
        throw err;
      }
    };
    const sync = (this.syncInFlight ?? Promise.resolve()).then(run, run);
    // The chain holds one promise: the newest call's, settled either way.
    const settled: Promise<void> = sync.then(noop, noop).finally(() => {
      if (this.syncInFlight === settled) this.syncInFlight = null;
    });
    this.syncInFlight = settled;
    return sync;
  }

  /** Resolves once no fdatasync of this log is under way (never rejects): close() waits for it. */
  syncsDone(): Promise<void> {
    return this.syncInFlight ?? Promise.resolve();
  }

  /** Writes the index files, syncs the log, and makes the segment read-only. */
  seal(): void {
    if (this.sealed) return;
    if (this.endMarkOwed()) {
      try {
        fs.writeSync(this.fd, encodeEndMark(this.size), 0, endMarkBytes, this.size);
        this.markWritten();
      } catch (err) {
        this.markFailed(err as NodeJS.ErrnoException);
      }
    }
    if (this.cutZeroedTail()) fs.ftruncateSync(this.fd, this.fileEnd);
    fs.fdatasyncSync(this.fd);
    this.writeIndexFiles();
  }

  /** Writes the index files (synced) from the in-memory indexes and makes the segment read-only. */
  private writeIndexFiles(): void {
    for (const [file, parts] of this.encodeIndexFiles()) writeFileSynced(file, parts.join());
    this.keyBuilder = null;
    this.sealed = true;
  }

  /**
   * The zeros to write after a group commit that ends at `end` (a slice of one shared zero
   * buffer, empty when none): in sync mode "batch", a commit of at most
   * `zeroAheadCommitBytesMax` that would take the file past `writtenTo` also writes zeros to
   * the next multiple of `zeroAheadBytes` (never past `segmentBytes`). So the commits after it
   * overwrite written blocks, and their O_DSYNC write has no new size or block allocation to
   * commit to the file system's journal — on ext4 a third less device time and half the CPU
   * of an append (BENCHMARKS.md). Call `wrote(end + zeros.length)` once the write is done.
   */
  zerosAhead(end: number, segmentBytes: number): Uint8Array {
    if (!this.writesDurable || end <= this.writtenTo || end - this.size > limits.zeroAheadCommitBytesMax) return emptyBytes;
    const to = Math.min(segmentBytes, (Math.floor(end / limits.zeroAheadBytes) + 1) * limits.zeroAheadBytes);
    return to > end ? zeroBytes().subarray(0, to - end) : emptyBytes;
  }

  /**
   * A write with zeros ahead failed for want of space: none are written from here on, and a
   * seal cuts the file back to `size`, whatever part of the zeros reached it.
   */
  zeroAheadFailed(): void {
    this.writtenTo = Number.MAX_SAFE_INTEGER;
  }

  /** A write of the log up to `end` is done (data, its end mark and any zeros after it). */
  wrote(end: number): void {
    this.writtenTo = Math.max(this.writtenTo, end);
  }

  /** Whether the file runs past `fileEnd` (a zeroed tail, which a seal cuts off). */
  private cutZeroedTail(): boolean {
    const cut = this.writtenTo > this.fileEnd;
    this.writtenTo = this.fileEnd;
    return cut;
  }

  /** Where the file ends once sealed: the batches, then the end mark when it is there. */
  get fileEnd(): number {
    return this.size + this.markBytes;
  }

  /** A seal writes the end mark after the last batch when no commit left it there (after a recovery that cut a tail, or in a file a store of format 2 wrote). */
  private endMarkOwed(): boolean {
    return this.markBytes === 0 && this.size > 0;
  }

  private markWritten(): void {
    this.markBytes = endMarkBytes;
    this.writtenTo = Math.max(this.writtenTo, this.fileEnd);
  }

  /** No room for 8 more bytes: sealed without the mark (it only sharpens a later scan's verdict), never failed for it. */
  private markFailed(err: NodeJS.ErrnoException): void {
    if (!outOfSpace(err)) throw err;
    this.writtenTo = Math.max(this.writtenTo, this.size + endMarkBytes); // a part of it may be there: cut it off
  }

  /** The three index files of this segment as they are written at a seal: [path, parts] (views of the in-memory indexes, checksums not yet filled). */
  private encodeIndexFiles(): Array<[string, IndexFileParts]> {
    return [
      [this.path('oix'), this.offsetIndex!.parts(this.size)],
      [this.path('tix'), this.timeIndex!.parts(this.size)],
      [this.path('kix'), this.keyBuilder!.parts(this.size)],
    ];
  }

  /**
   * Loads (and checks) one sealed index when first needed — reads need only the offset
   * index, lookups only the key index — and rebuilds all three from the log when one fails.
   */
  private ensureIndex(which: 'offset' | 'time' | 'key'): void {
    try {
      if (which === 'offset') this.offsetIndex ??= OffsetIndex.decode(this.path('oix'), readWhole(this.path('oix')), this.baseOffset, this.size, this.nextOffset);
      else if (which === 'time') this.timeIndex ??= TimeIndex.decode(this.path('tix'), readWhole(this.path('tix')), this.baseOffset, this.size, this.nextOffset);
      else if (!this.keyBuilder) this.keyFile ??= KeyIndexFile.open(this.path('kix'), this.baseOffset, this.size, (bytes) => this.checkKeyCoverage(bytes));
    } catch (err) {
      if (!(err instanceof CorruptIndexError) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.rebuildIndexes();
    }
  }

  /**
   * A version 1 key index (no logBytes) must reach the segment's last batch: else it is an
   * older, whole file — left by a build before version 2 and brought back by a power cut after
   * this one wrote a newer file unsynced (a roll) — and it would miss every later key.
   */
  private checkKeyCoverage(bytes: Buffer): void {
    const last = version1LastPosition(bytes);
    if (last === null || this.size === 0) return;
    if (last < 0 || this.batchEndAt(last) !== this.size) {
      throw new CorruptIndexError(this.path('kix'), `version 1 file whose last entry is not in the segment's last batch: stale (an older file)`);
    }
  }

  /** Where the batch starting at `position` ends, from its header; -1 when none starts there. */
  private batchEndAt(position: number): number {
    const head = this.readNow(position, batchHeaderBytes);
    if (head.length < batchHeaderBytes) return -1;
    const probe = probeHeader(head, 0);
    if (probe.kind === 'ok') return position + probe.header.batchLength;
    return probe.kind === 'short' ? position + probe.needBytes : -1;
  }

  /** Checks every index entry (verify, and the open-time check of a sealed segment). */
  checkIndexes(): void {
    OffsetIndex.decode(this.path('oix'), readWhole(this.path('oix')), this.baseOffset, this.size, this.nextOffset);
    TimeIndex.decode(this.path('tix'), readWhole(this.path('tix')), this.baseOffset, this.size, this.nextOffset);
    checkKeyIndexBytes(this.path('kix'), readWhole(this.path('kix')), this.baseOffset, this.size, this.recordCount);
  }

  /** Rebuilds the three index files of a sealed segment from its log. */
  rebuildIndexes(): void {
    this.keyFile?.close();
    this.keyFile = null;
    this.startInMemoryIndexes();
    const nextOffset = this.nextOffset;
    this.firstTimestamp = -1; // recomputed batch by batch, as when the segment was written
    this.maxTimestamp = -1;
    for (const event of scanSegment(this.fd, { end: this.size })) {
      if (event.kind !== 'batch') throw new CorruptIndexError(this.path('log'), `log damaged at ${event.position} while rebuilding indexes: run waymark repair`);
      this.indexBatch(event.position, event.header, event.bytes);
    }
    this.nextOffset = nextOffset;
    this.writeIndexFiles(); // the log is sealed, durable and opened read-only: not touched
    this.keyFile = KeyIndexFile.open(this.path('kix'), this.baseOffset, this.size);
  }

  /** Position of the last indexed batch at or before `offset` (scan forward from there). */
  positionFor(offset: number): number {
    this.ensureIndex('offset');
    return this.offsetIndex!.lookup(offset);
  }

  /** positionFor, with the base offset of the batch there (what its header must say). */
  entryFor(offset: number): { offset: number; position: number } {
    this.ensureIndex('offset');
    return this.offsetIndex!.entryFor(offset);
  }

  /** See OffsetIndex.readBoundary: where a read from `position` may end on a known batch start. */
  readBoundary(position: number, limit: number, endOffset?: number): number {
    this.ensureIndex('offset');
    return this.offsetIndex!.readBoundary(position, limit, endOffset);
  }

  /** An offset at or before the first message with broker time ≥ `timestamp`. */
  offsetForTime(timestamp: number): number {
    this.ensureIndex('time');
    return this.timeIndex!.lookup(timestamp);
  }

  keyLookup(hash: number, range: TimeRange, limit: number): KeyHit[] {
    this.ensureIndex('key');
    return this.keyBuilder ? this.keyBuilder.lookup(hash, range, limit) : this.keyFile!.lookup(hash, range, limit);
  }

  /** Reads up to `length` bytes at `position`, never past `end` (into `into` when it is large enough). */
  read(position: number, length: number, end: number = this.size, into?: Buffer): Promise<Buffer> {
    // A segment deleted (retention, compaction) while a reader is between two reads: its fd
    // number may already name another file, so it is never used again.
    if (this.closing) {
      // Deleted by retention or compaction: the reader reads on from the log start. Else its
      // topic was deleted or the store closed: the store says which (Store.readOf).
      if (this.removed) return Promise.reject(new WaymarkError('OFFSET_OUT_OF_RANGE', `segment ${this.baseOffset} of ${this.dir} was deleted while being read (retention): read again from the log start`));
      return Promise.reject(new WaymarkError('STORE_CLOSED', `segment ${this.baseOffset} of ${this.dir} was closed while being read`));
    }
    const want = Math.max(0, Math.min(length, end - position));
    const buf = into && into.length >= want ? into.subarray(0, want) : Buffer.allocUnsafe(want);
    this.reading++;
    return new Promise<Buffer>((resolve, reject) => {
      const step = (got: number): void => {
        if (got >= want) return resolve(buf);
        fs.read(this.fd, buf, got, want - got, position + got, (err, n) => {
          if (err) return reject(err);
          if (n === 0) return resolve(buf.subarray(0, got));
          step(got + n);
        });
      };
      step(0);
    }).finally(() => {
      if (--this.reading === 0 && this.closing) this.closeLogWhenIdle();
    });
  }

  /**
   * A synchronous positional read, for lookups: one batch from the page cache costs tens of
   * microseconds, less than a trip through the thread pool, and its latency does not depend
   * on what else is queued there.
   */
  readNow(position: number, length: number, end: number = this.size): Buffer {
    return this.readNowInto(Buffer.allocUnsafe(Math.max(0, Math.min(length, end - position))), position, end);
  }

  /** readNow into `buf` (as many bytes as it holds, up to `end`); returns the part filled. */
  readNowInto(buf: Buffer, position: number, end: number = this.size): Buffer {
    const want = Math.max(0, Math.min(buf.length, end - position));
    let got = 0;
    while (got < want) {
      const n = fs.readSync(this.fd, buf, got, want - got, position + got);
      if (n === 0) break;
      got += n;
    }
    return got === buf.length ? buf : buf.subarray(0, got);
  }

  /**
   * Closes the files; a read or an fdatasync in flight in the thread pool keeps the log's fd
   * until it is done (an fdatasync of a closed descriptor failed the channel for good with
   * EBADF, and one of a reused number would have synced another file: helper-58).
   */
  close(): void {
    if (this.closing) return;
    this.closing = true;
    this.keyFile?.close();
    this.keyFile = null;
    this.closeLogWhenIdle();
  }

  /** Closes the log once no read nor fdatasync of it is under way (the last read calls it again). */
  private closeLogWhenIdle(): void {
    if (this.reading > 0 || this.logClosed) return;
    const sync = this.syncInFlight;
    if (sync) {
      void sync.then(() => this.closeLogWhenIdle());
      return;
    }
    this.logClosed = true;
    this.closeLog();
  }

  /** Whether an fdatasync of the log is under way (syncData). */
  get syncing(): boolean {
    return this.syncInFlight !== null;
  }

  /**
   * The last close of a removed log frees its blocks: for a 64 MiB segment here 20–22 ms, which
   * a synchronous close spent on the event loop at every segment retention or compaction
   * deleted, every client waiting (a /tmp probe). So that close goes through the thread pool;
   * an error from it has nothing left to act on (the file is gone).
   */
  private closeLog(): void {
    if (this.removed) fs.close(this.fd, noop);
    else fs.closeSync(this.fd);
  }

  /**
   * Removes the segment (retention, compaction): unlinks its log, while its descriptor is
   * still open (a read in flight finishes on it), and closes it. When the log cannot be
   * unlinked (EIO, EROFS…) this throws with nothing changed, the segment whole and open. Once
   * the log is gone the segment is. Returns its index files, for the caller to unlink (through
   * the thread pool: unlinking a file nobody holds open frees its blocks) and to try again
   * when that fails (a log-less index is never read: recovery lists logs).
   */
  remove(): string[] {
    unlinkIfPresent(this.path('log'));
    this.removed = true;
    this.close();
    return ['oix', 'tix', 'kix'].map((extension) => this.path(extension));
  }
}

/** unlink(2), a file already gone being no error (an index never written, a retry). */
export function unlinkIfPresent(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

function readWhole(file: string): Buffer {
  return fs.readFileSync(file);
}

/** Copies bytes about to be truncated because of corruption to a side file, so nothing is lost for good. */
/** Flags of a segment that may be written: read-write, and O_DSYNC when every write must be durable on return. */
function writableFlags(dsync: boolean): number {
  return fs.constants.O_RDWR | (dsync ? fs.constants.O_DSYNC : 0);
}

/**
 * Where bytes cut from `file` at `position` are kept: `<file>.dropped-<position>`, or with
 * `.2`, `.3`, … after it when an earlier cut at the same position is already there (a
 * second crash, or a repair after recovery) — saved bytes are never overwritten.
 */
export function droppedBytesPath(file: string, position: number): string {
  const first = `${file}.dropped-${position}`;
  if (!fs.existsSync(first)) return first;
  for (let n = 2; ; n++) if (!fs.existsSync(`${first}.${n}`)) return `${first}.${n}`;
}

/**
 * Whether a channel's last segment may end in a torn commit, to be cut (tornLastCommit): not
 * when a clean close's checkpoint vouches for it — its last commit was acknowledged and is
 * durable, so damage in it is bit rot, repaired batch by batch with the sound ones kept
 * (helper-55: repair cut a clean store's whole last commit, acknowledged batches with it, and
 * their offsets were handed out again). Open and repair ask the same question.
 */
export function lastCommitMayBeTorn(checkpoint: Checkpoint | null, baseOffset: number, fileBytes: number): boolean {
  const meta = checkpoint?.segments.find((m) => m.baseOffset === baseOffset);
  return !(checkpoint?.clean && meta && segmentFileFits(fileBytes, meta.bytes));
}

/**
 * tornLastCommit on a channel's last segment file that nothing holds open (`waymark repair`,
 * before it scans, where lastCommitMayBeTorn): the same rule as open, so a repair run after a
 * crash before any open does not keep a later batch of a torn commit and lose the one before
 * it. The cut is synced.
 */
export function cutTornLastCommit(file: string): RecoveryFinding | null {
  const fd = fs.openSync(file, 'r+');
  try {
    const finding = tornLastCommit(fd, file, fs.fstatSync(fd).size);
    if (finding) fs.fdatasyncSync(fd);
    return finding;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A last group commit that did not reach the disk whole (FORMAT.md, "The end mark"): a whole
 * format-4 mark ends the data and says where its commit began, and a batch at or after that
 * start is torn or damaged. A power cut inside the commit's write can leave that (the device
 * may keep some of its sectors and not others, the mark among those kept); nothing in the
 * commit was acknowledged, since an acknowledgement waits for all of it. So it is not damage
 * in the middle of the log (whose sound batches after it are kept, and a producer's sequence
 * learned from them, refusing the resend of the batch before as a duplicate): the file is cut
 * back to the commit's start, its bytes saved aside first (`.dropped-…`). Reported as damage
 * all the same: by its bytes, a batch of an acknowledged last commit damaged later looks alike.
 * Returns that finding, or null when the last commit is whole or unknown (format 3).
 */
function tornLastCommit(fd: number, file: string, fileBytes: number): RecoveryFinding | null {
  const commit = lastCommitOf(fd, fileBytes);
  if (commit === null || commit.start >= commit.markAt) return null;
  let brokenAt = -1;
  for (const event of scanSegment(fd, { start: commit.start, end: fileBytes })) {
    if (event.kind !== 'batch') {
      brokenAt = event.position;
      break;
    }
  }
  // The commit start is read from the mark (a 32-bit check): acted on only once the batches
  // before it lead there.
  if (brokenAt < 0 || !batchStartsAt(fd, commit.start)) return null;
  const savedTo = saveBytesAside(fd, file, commit.start, commit.markAt);
  fs.ftruncateSync(fd, commit.start);
  return {
    file,
    position: commit.start,
    bytesDropped: commit.markAt - commit.start,
    kind: 'corrupt',
    reason: `a batch at ${brokenAt} fails inside the last group commit (bytes ${commit.start}..${commit.markAt - 1}, its end mark whole): a power cut during its write (in sync mode batch, none of it acknowledged) or later damage; cut back to the commit's start`,
    savedTo,
  };
}

/**
 * Copies bytes `from..to` of a segment to `<file>.dropped-<from>` (droppedBytesPath), before
 * they are cut: the copy's data and its name are durable first (fdatasync, then the folder's
 * fsync), so that a power cut cannot keep the cut and lose the copy. Open's recovery and
 * repair's rewrite both save this way. Returns the copy's path.
 */
export function saveBytesAside(fd: number, file: string, from: number, to: number): string {
  const target = droppedBytesPath(file, from);
  const length = to - from;
  const buf = Buffer.allocUnsafe(Math.max(1, Math.min(length, 8 * 1024 * 1024)));
  const out = fs.openSync(target, 'w');
  try {
    for (let done = 0; done < length; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, length - done), from + done);
      if (n === 0) break;
      for (let off = 0; off < n; ) off += fs.writeSync(out, buf, off, n - off, done + off);
      done += n;
    }
    fs.fdatasyncSync(out);
  } finally {
    fs.closeSync(out);
  }
  syncDir(path.dirname(target));
  return target;
}

function noop(): void {}
