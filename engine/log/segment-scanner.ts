/**
 * Sequential batch-by-batch reading of a segment file, in bounded windows — the one reader
 * that recovery, index rebuilds, dump, verify and repair share.
 *
 * Decision table for the bytes at `position` (LevelDB's log reader is the model):
 *
 *   | what is there                                     | event     | a crash can cause it? |
 *   |---------------------------------------------------|-----------|-----------------------|
 *   | a consistent header, all bytes, checksum holds     | batch     |                       |
 *   | fewer bytes than a header, or than batchLength     | torn      | yes: cut-short write  |
 *   | an inconsistent header (magic, lengths, flags)     | corrupt   | no                    |
 *   | a consistent header whose checksum fails           | corrupt*  | no                    |
 *   | the end mark, then only zeros to the end of file  | (the end) | no: the last commit's |
 *   | zeros, and only zeros to the end of the file       | (the end) | no: a zeroed tail     |
 *   | a batch whose bytes stop at a page boundary inside | torn      | yes: a write into the |
 *   |   it, only zeros after (header or checksum fails)  |           |   zeroed tail cut short |
 *   | a batch claiming bytes past the data, when a whole | corrupt   | no: a cut-short write |
 *   |   end mark ends the data (lengths flipped alike)   |           |   never leaves the mark |
 *
 * The zeroed tail (FORMAT.md): the active segment of a store in sync mode "batch" is written
 * ahead with zeros, so a small group commit overwrites blocks that are already allocated and
 * its O_DSYNC write commits no file-size change. The scan ends where only zeros are left; a
 * crash cuts a write at a page boundary (the kernel copies a write into the page cache page
 * by page), which leaves a batch whose bytes stop at one with zeros after — torn, as a batch
 * cut short at the end of a file is.
 *
 * The end mark (store format 3; 16 bytes with its commit's start since format 4, encodeEndMark):
 * every group commit writes one right after its last batch (the next commit overwrites it). So a whole batch is never followed by zeros alone:
 * a damaged one whose own last 4 KiB are zeros has the mark after it and is damage, where
 * without it (format 2 files) it looked like a write cut short. A cut that falls inside the
 * previous commit's mark leaves its last 1–15 bytes after the page boundary: still torn.
 * Damage at or after the start of the last commit that a whole format-4 mark names is a last
 * commit that did not reach the disk whole: Segment.recover cuts it off before it scans
 * (lastCommitOf); the scan itself judges batch by batch as above.
 *
 *   * with `checksumMismatch: 'report'` the batch is yielded with checksumOk=false and the
 *     scan goes on by its length (dump shows every batch's status); otherwise the scan stops.
 *
 * After a `corrupt` event the length field is never trusted again; findNextBatch() is the
 * way forward (repair), searching for the next position whose header and checksum both hold.
 */
import * as fs from 'node:fs';
import { batchHeaderBytes, BatchOffset, batchMagic, batchVersion, checksumHolds, probeHeader, readUint32, type BatchHeader } from '../format/record-batch';
import { formatLimits } from '../format/limits';
import { xxh32Range } from '../format/checksum';

export type ScanEvent =
  | { kind: 'batch'; position: number; header: BatchHeader; bytes: Buffer; checksumOk: boolean }
  | { kind: 'torn'; position: number; bytesDropped: number }
  | { kind: 'corrupt'; position: number; reason: string };

export interface ScanOptions {
  start?: number;
  end?: number;
  checksumMismatch?: 'stop' | 'report';
  windowBytes?: number;
}

const windowBytesDefault = 4 * 1024 * 1024;

/** A read-only window over a file, refilled as the cursor moves. */
class Window {
  buf: Buffer;
  start = 0; // file position of buf[0]
  length = 0;

  constructor(
    private readonly fd: number,
    private readonly fileEnd: number,
    size: number,
  ) {
    this.buf = Buffer.allocUnsafe(size);
  }

  /** Makes [position, position + need) available when the file has it; returns bytes available from position. */
  ensure(position: number, need: number): number {
    if (position >= this.start && position + need <= this.start + this.length) return this.start + this.length - position;
    if (need > this.buf.length) this.buf = Buffer.allocUnsafe(need);
    const want = Math.min(this.buf.length, this.fileEnd - position);
    let got = 0;
    while (got < want) {
      const n = fs.readSync(this.fd, this.buf, got, want - got, position + got);
      if (n === 0) break;
      got += n;
    }
    this.start = position;
    this.length = got;
    return got;
  }
}

export function* scanSegment(fd: number, options: ScanOptions = {}): Generator<ScanEvent> {
  const fileEnd = options.end ?? fs.fstatSync(fd).size;
  const window = new Window(fd, fileEnd, options.windowBytes ?? windowBytesDefault);
  let position = options.start ?? 0;
  while (position < fileEnd) {
    const available = window.ensure(position, Math.min(batchHeaderBytes, fileEnd - position));
    const at = position - window.start;
    const mark = markBytesAt(window.buf, at, available, position);
    if (mark > 0 && zeroRunStart(fd, position + mark, fileEnd) === position + mark) return;
    let probe = probeHeader(window.buf, at, at + available);
    if (probe.kind === 'short' && position + probe.needBytes <= fileEnd) {
      window.ensure(position, probe.needBytes);
      const at2 = position - window.start;
      probe = probeHeader(window.buf, at2, at2 + window.length - at2);
    }
    if (probe.kind === 'short') {
      const dataEnd = zeroRunStart(fd, position, fileEnd);
      if (dataEnd > position) {
        if (wholeMarkEndsAt(fd, position, dataEnd)) yield { kind: 'corrupt', position, reason: lengthPastMark };
        else yield { kind: 'torn', position, bytesDropped: fileEnd - position };
      }
      return;
    }
    if (probe.kind === 'corrupt') {
      const tail = zeroTailAt(fd, position, position + batchHeaderBytes, fileEnd);
      if (tail.kind === 'torn') yield { kind: 'torn', position, bytesDropped: tail.dataEnd - position };
      else if (tail.kind === 'damage') yield { kind: 'corrupt', position, reason: probe.reason };
      return;
    }
    const from = position - window.start;
    const checksumOk = checksumHolds(window.buf, from, probe.header);
    if (!checksumOk) {
      const tail = zeroTailAt(fd, position, position + probe.header.batchLength, fileEnd);
      if (tail.kind === 'torn') {
        yield { kind: 'torn', position, bytesDropped: tail.dataEnd - position };
        return;
      }
      if (tail.lengthPastMark) {
        yield { kind: 'corrupt', position, reason: lengthPastMark };
        return;
      }
    }
    if (!checksumOk && options.checksumMismatch !== 'report') {
      yield { kind: 'corrupt', position, reason: 'checksum mismatch' };
      return;
    }
    yield { kind: 'batch', position, header: probe.header, bytes: window.buf.subarray(from, from + probe.header.batchLength), checksumOk };
    position += probe.header.batchLength;
  }
}

/** The kernel's page: a crash cuts a write into the page cache only at a multiple of it. */
const pageBytes = 4096;

/**
 * At `position`, a batch start that holds no sound batch (its bytes, as its header claims or
 * at least a header, run to `claimedEnd`): 'zeros' when every byte from there to the end of
 * the file is zero (the zeroed tail: the data ends here), 'torn' when the bytes stop at a
 * page boundary before `claimedEnd` with only zeros after (a write into the zeroed tail cut
 * short), otherwise 'damage'. `dataEnd`: where the file's last run of zeros starts.
 */
function zeroTailAt(fd: number, position: number, claimedEnd: number, fileEnd: number): { kind: 'zeros' | 'torn' | 'damage'; dataEnd: number; lengthPastMark?: boolean } {
  const dataEnd = zeroRunStart(fd, position, fileEnd);
  if (dataEnd === position) return { kind: 'zeros', dataEnd };
  const cut = Math.ceil(dataEnd / pageBytes) * pageBytes;
  if (cut < claimedEnd) return wholeMarkEndsAt(fd, position, dataEnd) ? { kind: 'damage', dataEnd, lengthPastMark: true } : { kind: 'torn', dataEnd };
  return { kind: staleMarkAfterCut(fd, position, dataEnd) ? 'torn' : 'damage', dataEnd };
}

/**
 * Why a batch whose length runs past the data is damage, not a torn tail, when a whole end
 * mark ends the data (wholeMarkEndsAt): its length fields were damaged in agreement.
 */
const lengthPastMark = 'batch length runs past the end of the data, and a whole end mark ends the data: the write was whole, its length is damaged';

/**
 * Whether the data that starts with a batch at `position` and ends at `dataEnd` (where the
 * zeros or the file end) ends in a whole end mark after that batch's start. A write cut
 * short never leaves one: the mark is its last bytes, and the previous commit's mark,
 * at `position`, is where the write began. So a batch claiming bytes past such data is
 * damage (its length fields, flipped in agreement), not a torn tail, and whatever sound
 * batches lie after it are not lost silently. A format-3 mark's 8 bytes ending 8–15 bytes
 * after a page boundary are taken for what a cut left of a format-4 mark (staleMarkAfterCut).
 */
function wholeMarkEndsAt(fd: number, position: number, dataEnd: number): boolean {
  if (dataEnd - position < batchHeaderBytes + endMarkTextBytes) return false;
  const mark = markEndingAt(fd, position, dataEnd);
  if (mark === null) return false;
  return mark.bytes === endMarkBytes || remnantAfterCut(position, dataEnd) < endMarkTextBytes;
}

/**
 * A write cut at the page boundary just below `dataEnd`, the bytes from it to `dataEnd` being
 * what was there before: the last 1–15 bytes of the previous commit's end mark, which the
 * write began to overwrite (of a format-3 mark, 1–7). Not when a whole format-4 mark ends at
 * `dataEnd` (a whole commit's own). The first 1–7 of 9–15 such bytes are the old mark's
 * commit start and check, which nothing can confirm: its last 8 are the text.
 */
function staleMarkAfterCut(fd: number, position: number, dataEnd: number): boolean {
  const remnant = remnantAfterCut(position, dataEnd);
  if (remnant === 0 || remnant >= endMarkBytes) return false;
  const tail = Math.min(remnant, endMarkTextBytes);
  const bytes = Buffer.alloc(tail);
  if (fs.readSync(fd, bytes, 0, tail, dataEnd - tail) !== tail) return false;
  if (!bytes.equals(endMarkText.subarray(endMarkTextBytes - tail))) return false;
  return markEndingAt(fd, position, dataEnd)?.bytes !== endMarkBytes;
}

/** Bytes from the page boundary just below `dataEnd` to it, when that boundary is past `position` (else 0). */
function remnantAfterCut(position: number, dataEnd: number): number {
  const boundary = Math.floor((dataEnd - 1) / pageBytes) * pageBytes;
  return boundary > position ? dataEnd - boundary : 0;
}

/**
 * The end mark (FORMAT.md, "The end mark"). Store format 4 writes 16 bytes after the last
 * batch of every group commit: the position in the segment where that commit's first batch
 * starts (u32), its check (xxh32 of those 4 bytes, seed `endMarkSeed`), then the ASCII text
 * "WaymEnd!". Store format 3 wrote the text alone; it is still read. So the data of a whole
 * commit ends in the text either way: its last byte is not zero, so a whole commit never
 * ends in zeros. The commit start tells a write that did not reach the disk whole (damage at
 * or after it: a torn last commit, none of it acknowledged) from damage before it.
 */
export const endMarkText = Buffer.from('WaymEnd!', 'latin1');
export const endMarkTextBytes = 8;
/** The mark this build writes (store format 4). */
export const endMarkBytes = 16;
const endMarkSeed = 0x4d61726b; // "Mark"

/** The 16-byte end mark of a commit whose first batch starts at `commitStart`. */
export function encodeEndMark(commitStart: number): Buffer {
  const mark = Buffer.alloc(endMarkBytes);
  mark.writeUInt32LE(commitStart, 0);
  mark.writeUInt32LE(xxh32Range(mark, 0, 4, endMarkSeed), 4);
  endMarkText.copy(mark, 8);
  return mark;
}

/**
 * The length of the end mark that starts at `at` in `buf` (`available` bytes there; the mark
 * at file position `position`): 16 for a whole format-4 mark whose commit start is at or
 * before it, 8 for the format-3 text, 0 for none.
 */
function markBytesAt(buf: Uint8Array, at: number, available: number, position: number): number {
  if (available >= endMarkBytes && isEndMarkText(buf, at + 8) && commitStartOf(buf, at, position) !== null) return endMarkBytes;
  return available >= endMarkTextBytes && isEndMarkText(buf, at) ? endMarkTextBytes : 0;
}

/** The commit start a format-4 mark at `at` (file position `position`) holds, null when its check fails or it points past the mark. */
function commitStartOf(buf: Uint8Array, at: number, position: number): number | null {
  const start = readUint32(buf, at);
  const check = readUint32(buf, at + 4);
  return check === xxh32Range(buf, at, at + 4, endMarkSeed) && start <= position ? start : null;
}

function isEndMarkText(buf: Uint8Array, at: number): boolean {
  for (let i = 0; i < endMarkTextBytes; i++) if (buf[at + i] !== endMarkText[i]) return false;
  return true;
}

/**
 * The end mark that ends at `dataEnd`, starting no earlier than `from`: a format-4 mark (16
 * bytes, its commit start) or the format-3 text (8 bytes, no commit start), else null.
 */
export function markEndingAt(fd: number, from: number, dataEnd: number): { bytes: number; commitStart: number | null } | null {
  const have = Math.min(endMarkBytes, dataEnd - from);
  if (have < endMarkTextBytes) return null;
  const bytes = Buffer.alloc(have);
  if (fs.readSync(fd, bytes, 0, have, dataEnd - have) !== have || !isEndMarkText(bytes, have - endMarkTextBytes)) return null;
  if (have === endMarkBytes) {
    const start = commitStartOf(bytes, 0, dataEnd - endMarkBytes);
    if (start !== null) return { bytes: endMarkBytes, commitStart: start };
  }
  return { bytes: endMarkTextBytes, commitStart: null };
}

/**
 * Where the last group commit of a segment began, when a whole format-4 end mark ends its
 * data (before any zeroed tail): `start` (its first batch) and `markAt` (where its batches
 * end). Null otherwise (format 3, no mark, a torn write).
 */
export function lastCommitOf(fd: number, fileEnd: number = fs.fstatSync(fd).size): { start: number; markAt: number } | null {
  const dataEnd = zeroRunStart(fd, 0, fileEnd);
  const mark = markEndingAt(fd, 0, dataEnd);
  if (mark === null || mark.commitStart === null) return null;
  return { start: mark.commitStart, markAt: dataEnd - mark.bytes };
}

/** The length of the end mark at `position` in the file (16 format 4, 8 format 3), 0 when there is none. */
export function endMarkAt(fd: number, position: number, fileEnd: number = fs.fstatSync(fd).size): number {
  const have = Math.min(endMarkBytes, fileEnd - position);
  if (have < endMarkTextBytes) return 0;
  const bytes = Buffer.alloc(have);
  if (fs.readSync(fd, bytes, 0, have, position) !== have) return 0;
  return markBytesAt(bytes, 0, have, position);
}

/**
 * Whether a sealed segment's file is the size a checkpoint entry of `bytes` says: its batches,
 * then the end mark (16 bytes, store format 4; 8, format 3), or its batches alone (format 2,
 * or a seal that found no room for the mark).
 */
export function segmentFileFits(fileBytes: number, bytes: number): boolean {
  return fileBytes === bytes || (bytes > 0 && (fileBytes === bytes + endMarkBytes || fileBytes === bytes + endMarkTextBytes));
}

/**
 * Whether a batch starts at `target`: walking from 0 by each header's `batchLength` (headers
 * checked by probeHeader, checksums not) lands on it. False when a header fails on the way
 * or the walk steps over it. For a position read from an end mark before it is acted on: its
 * check is 32 bits, and a cut at a wrong place would drop sound batches.
 */
export function batchStartsAt(fd: number, target: number): boolean {
  const head = Buffer.alloc(batchHeaderBytes);
  let position = 0;
  while (position < target) {
    if (fs.readSync(fd, head, 0, batchHeaderBytes, position) !== batchHeaderBytes) return false;
    const probe = probeHeader(head, 0, batchHeaderBytes);
    if (probe.kind === 'corrupt') return false;
    const length = probe.kind === 'ok' ? probe.header.batchLength : head.readUInt32LE(BatchOffset.batchLength);
    if (length < batchHeaderBytes) return false;
    position += length;
  }
  return position === target;
}

/**
 * Where the data of a damaged tail ends: the start of the file's last run of zeros, less the
 * end mark that a whole commit left right before it (the mark is not data: nothing to save).
 */
export function damagedTailEnd(fd: number, from: number, fileEnd: number): number {
  const dataEnd = zeroRunStart(fd, from, fileEnd);
  return dataEnd - (markEndingAt(fd, from, dataEnd)?.bytes ?? 0);
}

/** Where the file's last run of zero bytes starts (`fileEnd` when its last byte is not zero), looking back no further than `from`. */
export function zeroRunStart(fd: number, from: number, fileEnd: number): number {
  const chunk = Buffer.allocUnsafe(Math.min(windowBytesDefault, Math.max(0, fileEnd - from)));
  let end = fileEnd;
  while (end > from) {
    const start = Math.max(from, end - chunk.length);
    const want = end - start;
    let got = 0;
    while (got < want) {
      const n = fs.readSync(fd, chunk, got, want - got, start + got);
      if (n === 0) return end; // the file shrank under us: treat what is gone as data, not zeros
      got += n;
    }
    for (let i = want - 1; i >= 0; i--) if (chunk[i] !== 0) return start + i + 1;
    end = start;
  }
  return from;
}

/**
 * The first position after `from` where a whole batch with a holding checksum starts, or
 * -1. Used by repair to skip a damaged batch without losing everything after it; the
 * 64-bit checksum makes a false match astronomically unlikely.
 */
export function findNextBatch(fd: number, from: number, fileEnd: number = fs.fstatSync(fd).size): number {
  const window = new Window(fd, fileEnd, windowBytesDefault);
  for (let position = from; position + batchHeaderBytes <= fileEnd; position++) {
    window.ensure(position, batchHeaderBytes);
    const at = position - window.start;
    if (window.buf[at + BatchOffset.magic] !== batchMagic || window.buf[at + BatchOffset.version] !== batchVersion) continue;
    let probe = probeHeader(window.buf, at, at + window.length - at);
    if (probe.kind === 'short' && probe.needBytes <= formatLimits.batchBytesMax && position + probe.needBytes <= fileEnd) {
      window.ensure(position, probe.needBytes);
      const at2 = position - window.start;
      probe = probeHeader(window.buf, at2, at2 + window.length - at2);
    }
    if (probe.kind !== 'ok') continue;
    if (checksumHolds(window.buf, position - window.start, probe.header)) return position;
  }
  return -1;
}
