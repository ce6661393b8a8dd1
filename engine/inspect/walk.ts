/**
 * A segment walk that goes on past damage: the one reader dump, verify and repair share.
 *
 * scanSegment (engine/log/segment-scanner.ts) stops at the first torn or corrupt batch,
 * which is right for recovery (it truncates there) but wrong for the tools: a damaged batch
 * in the middle must cost only that batch. This walk resumes with findNextBatch after every
 * fault and reports each damaged range once.
 *
 * Decision table for a fault at `position` (LevelDB's reader is the model: after a checksum
 * failure the length field is not trusted on its own):
 *
 *   | scanner event                  | resume at                                           | torn? |
 *   |--------------------------------|-----------------------------------------------------|-------|
 *   | batch, checksum fails          | position + batchLength when that is the end of the  | no    |
 *   |                                | file or a good batch starts there; else the next    |       |
 *   |                                | good batch after position                           |       |
 *   | corrupt header                 | the next good batch after position                  | no    |
 *   | short (cut off at end of file) | the next good batch after position; none → the end  | only when nothing good follows |
 *
 * "Good batch" = consistent header and holding checksum. The range from `position` to the
 * resume point is one damage event, whose `bytes` is exactly what repair drops. With nothing
 * good after the damage it ends where the file's end mark or zeroed tail starts (FORMAT.md),
 * if it has them: the scanner ends the walk there, they are not data (repair cuts them off).
 */
import * as fs from 'node:fs';
import { batchHeaderBytes, checksumHolds, probeHeader, type BatchHeader } from '../format/record-batch';
import { damagedTailEnd, findNextBatch, scanSegment } from '../log/segment-scanner';

export type WalkEvent =
  /** A whole batch whose checksum holds. `bytes` is a view valid until the next event. */
  | { kind: 'batch'; position: number; header: BatchHeader; bytes: Buffer }
  | {
      kind: 'damage';
      position: number;
      /** Bytes from `position` to the next good batch (or the end of the walk). */
      bytes: number;
      /** A batch cut short at the end of the file with nothing good after it: a crash mid-write. */
      torn: boolean;
      /** Nothing good after it: the damage runs to the end of the data (the file's end, or its end mark or zeroed tail). */
      toEnd: boolean;
      reason: string;
      /** For a checksum mismatch: the (untrusted) header and bytes, so dump can still show them. */
      header: BatchHeader | null;
      batchBytes: Buffer | null;
    };

export interface WalkOptions {
  start?: number;
  end?: number;
}

export function* walkSegment(fd: number, options: WalkOptions = {}): Generator<WalkEvent> {
  const end = options.end ?? fs.fstatSync(fd).size;
  let position = options.start ?? 0;
  while (position < end) {
    let resumeAt = end; // where the next scan starts; `end` = the walk is over
    for (const event of scanSegment(fd, { start: position, end, checksumMismatch: 'report' })) {
      if (event.kind === 'batch' && event.checksumOk) {
        yield { kind: 'batch', position: event.position, header: event.header, bytes: event.bytes };
        continue;
      }
      if (event.kind === 'batch') {
        const { header } = event;
        const after = event.position + header.batchLength;
        const next = after === end || goodBatchAt(fd, after, end) ? after : findNextBatch(fd, event.position + 1, end);
        resumeAt = next < 0 ? Math.max(after, damagedTailEnd(fd, event.position, end)) : next;
        const last = header.baseOffset + header.recordCount - 1;
        yield {
          kind: 'damage',
          position: event.position,
          bytes: resumeAt - event.position,
          torn: false,
          toEnd: next < 0 || next >= end,
          reason: `checksum mismatch (batch says offsets ${header.baseOffset}..${last}, ${header.batchLength} bytes)`,
          header,
          batchBytes: event.bytes,
        };
        break;
      }
      const next = findNextBatch(fd, event.position + 1, end);
      // A torn tail is the bytes the scanner dropped (what open reports); other damage runs to where the data ends.
      resumeAt = next >= 0 ? next : event.kind === 'torn' ? event.position + event.bytesDropped : damagedTailEnd(fd, event.position, end);
      const torn = event.kind === 'torn' && next < 0;
      const reason =
        event.kind === 'corrupt' ? `corrupt batch header: ${event.reason}` : torn ? 'batch cut short at the end of the file' : 'batch length runs past the next good batch';
      yield { kind: 'damage', position: event.position, bytes: resumeAt - event.position, torn, toEnd: next < 0, reason, header: null, batchBytes: null };
      break;
    }
    if (resumeAt <= position) throw new Error(`walkSegment: no progress at ${position}`); // findNextBatch only looks forward
    position = resumeAt;
  }
}

/** True when a whole batch with a holding checksum starts at `position`. */
export function goodBatchAt(fd: number, position: number, end: number): boolean {
  if (end - position < batchHeaderBytes) return false;
  const head = Buffer.allocUnsafe(batchHeaderBytes);
  if (readFully(fd, head, position) < batchHeaderBytes) return false;
  const probe = probeHeader(head, 0, batchHeaderBytes);
  if (probe.kind === 'corrupt') return false;
  const length = probe.kind === 'ok' ? probe.header.batchLength : probe.needBytes;
  if (position + length > end) return false;
  const whole = Buffer.allocUnsafe(length);
  if (readFully(fd, whole, position) < length) return false;
  const full = probeHeader(whole, 0, length);
  return full.kind === 'ok' && checksumHolds(whole, 0, full.header);
}

/** Reads `buf.length` bytes at `position` (fewer only at the end of the file). */
export function readFully(fd: number, buf: Uint8Array, position: number): number {
  let got = 0;
  while (got < buf.length) {
    const n = fs.readSync(fd, buf, got, buf.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}
