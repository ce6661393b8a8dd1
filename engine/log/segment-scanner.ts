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
    let probe = probeHeader(window.buf, at, at + available);
    if (probe.kind === 'short' && position + probe.needBytes <= fileEnd) {
      window.ensure(position, probe.needBytes);
      const at2 = position - window.start;
      probe = probeHeader(window.buf, at2, at2 + window.length - at2);
    }
    if (probe.kind === 'short') {
      yield { kind: 'torn', position, bytesDropped: fileEnd - position };
      return;
    }
    if (probe.kind === 'corrupt') {
      yield { kind: 'corrupt', position, reason: probe.reason };
      return;
    }
    const from = position - window.start;
    const checksumOk = checksumHolds(window.buf, from, probe.header);
    if (!checksumOk && options.checksumMismatch !== 'report') {
      yield { kind: 'corrupt', position, reason: 'checksum mismatch' };
      return;
    }
    yield { kind: 'batch', position, header: probe.header, bytes: window.buf.subarray(from, from + probe.header.batchLength), checksumOk };
    position += probe.header.batchLength;
  }
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
