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
 * The end mark (store format 3): every group commit writes `endMark` right after its last
 * batch (the next commit overwrites it). So a whole batch is never followed by zeros alone:
 * a damaged one whose own last 4 KiB are zeros has the mark after it and is damage, where
 * without it (format 2 files) it looked like a write cut short. A cut that falls inside the
 * previous commit's mark leaves its last 1–7 bytes after the page boundary: still torn.
 *
 *   * with `checksumMismatch: 'report'` the batch is yielded with checksumOk=false and the
 *     scan goes on by its length (dump shows every batch's status); otherwise the scan stops.
 *
 * After a `corrupt` event the length field is never trusted again; findNextBatch() is the
 * way forward (repair), searching for the next position whose header and checksum both hold.
 */
import * as fs from 'node:fs';
import { batchHeaderBytes, BatchOffset, batchMagic, batchVersion, checksumHolds, probeHeader, type BatchHeader } from '../format/record-batch';
import { formatLimits } from '../format/limits';

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
    if (available >= endMarkBytes && isEndMark(window.buf, at) && zeroRunStart(fd, position + endMarkBytes, fileEnd) === position + endMarkBytes) return;
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
 * short never leaves one: the mark is its last 8 bytes, and the previous commit's mark,
 * at `position`, is where the write began. So a batch claiming bytes past such data is
 * damage (its length fields, flipped in agreement), not a torn tail, and whatever sound
 * batches lie after it are not lost silently.
 */
function wholeMarkEndsAt(fd: number, position: number, dataEnd: number): boolean {
  if (dataEnd - position < batchHeaderBytes + endMarkBytes) return false;
  const bytes = Buffer.alloc(endMarkBytes);
  return fs.readSync(fd, bytes, 0, endMarkBytes, dataEnd - endMarkBytes) === endMarkBytes && isEndMark(bytes, 0);
}

/**
 * A write cut at the page boundary just below `dataEnd`, the bytes from it to `dataEnd` being
 * what was there before: the last 1–7 bytes of the previous commit's end mark, which the
 * write began to overwrite. Not when a whole mark ends at `dataEnd` (a whole commit's own).
 */
function staleMarkAfterCut(fd: number, position: number, dataEnd: number): boolean {
  const boundary = Math.floor((dataEnd - 1) / pageBytes) * pageBytes;
  const remnant = dataEnd - boundary;
  if (boundary <= position || remnant >= endMarkBytes || dataEnd < endMarkBytes) return false;
  const bytes = Buffer.alloc(endMarkBytes);
  if (fs.readSync(fd, bytes, 0, endMarkBytes, dataEnd - endMarkBytes) !== endMarkBytes) return false;
  if (isEndMark(bytes, 0)) return false;
  return bytes.subarray(endMarkBytes - remnant).equals(endMark.subarray(endMarkBytes - remnant));
}

/**
 * Written after the last batch of every group commit (store format 3; FORMAT.md, "The end
 * mark"): ASCII "WaymEnd!". Read as a batch's baseOffset it is 2.4e18, past any offset, so
 * no batch starts with it; its last byte is not zero, so a whole commit never ends in zeros.
 */
export const endMark = Buffer.from('WaymEnd!', 'latin1');
export const endMarkBytes = 8;

export function isEndMark(buf: Uint8Array, at: number): boolean {
  for (let i = 0; i < endMarkBytes; i++) if (buf[at + i] !== endMark[i]) return false;
  return true;
}

/** Whether the file has the end mark at `position`. */
export function endMarkAt(fd: number, position: number, fileEnd: number = fs.fstatSync(fd).size): boolean {
  if (fileEnd - position < endMarkBytes) return false;
  const bytes = Buffer.alloc(endMarkBytes);
  return fs.readSync(fd, bytes, 0, endMarkBytes, position) === endMarkBytes && isEndMark(bytes, 0);
}

/**
 * Whether a sealed segment's file is the size a checkpoint entry of `bytes` says: its batches,
 * then the end mark (store format 3), or its batches alone (format 2, or a seal that found no
 * room for the mark).
 */
export function segmentFileFits(fileBytes: number, bytes: number): boolean {
  return fileBytes === bytes || (bytes > 0 && fileBytes === bytes + endMarkBytes);
}

/**
 * Where the data of a damaged tail ends: the start of the file's last run of zeros, less the
 * end mark that a whole commit left right before it (the mark is not data: nothing to save).
 */
export function damagedTailEnd(fd: number, from: number, fileEnd: number): number {
  const dataEnd = zeroRunStart(fd, from, fileEnd);
  if (dataEnd - from < endMarkBytes) return dataEnd;
  const bytes = Buffer.alloc(endMarkBytes);
  if (fs.readSync(fd, bytes, 0, endMarkBytes, dataEnd - endMarkBytes) !== endMarkBytes) return dataEnd;
  return isEndMark(bytes, 0) ? dataEnd - endMarkBytes : dataEnd;
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
