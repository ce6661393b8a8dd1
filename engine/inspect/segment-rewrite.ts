/**
 * The per-segment half of repair's second pass: carry out the plan for one .log file (see
 * repair.ts for how plans are made). Runs in a piscina worker or in the calling thread.
 *
 *   | action   | what happens to the file                          | index files               |
 *   |----------|---------------------------------------------------|---------------------------|
 *   | keep     | nothing (but patches)                             | rebuilt in place          |
 *   | truncate | cut after the last kept batch (torn/corrupt tail) | rebuilt in place          |
 *   | rewrite  | kept batches copied into staged piece files, each | built with the pieces in  |
 *   |          | dense in offsets and named by its first offset;   | the staging folder        |
 *   |          | repair.ts renames them into place afterwards      |                           |
 *   | remove   | nothing here; repair.ts deletes it afterwards     | —                         |
 *
 * Patches (repair-plan.ts) write back a kept batch's baseOffset/brokerTimestamp, in place
 * for keep/truncate and in the copy for rewrite.
 *
 * Before anything is cut, every dropped byte range is copied to `<file>.dropped-<position>`
 * (as Segment.recover does), so a repair never loses bytes for good. Index files are built
 * by the engine itself (Segment.recover + seal on a file already known to be whole), so they
 * are exactly what the broker would build.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BatchOffset } from '../format/record-batch';
import { saveBytesAside, Segment, segmentFileName, type SegmentMeta } from '../log/segment';
import { segmentFileFits } from '../log/segment-scanner';
import { inspectLimits } from './limits';
import { indexPath } from './segment-check';
import { readFully } from './walk';

const copyChunkBytes = inspectLimits.copyChunkBytes;

export interface PieceTask {
  baseOffset: number;
  /** Byte ranges of the source to copy, in order: [position, length]. */
  runs: Array<[number, number]>;
  /** Offset after the piece's last record (checked against what the engine reads back). */
  endOffset: number;
}

export type RewriteAction = 'keep' | 'truncate' | 'rewrite' | 'remove';

export interface RewriteTask {
  file: string;
  baseOffset: number;
  action: RewriteAction;
  /** For truncate: the new length. */
  truncateTo: number;
  /** For rewrite: the pieces, in offset order (an empty piece is an empty last segment). */
  pieces: PieceTask[];
  stagingDir: string;
  /** Dropped ranges to copy aside first: [position, length]. */
  save: Array<[number, number]>;
  /**
   * Kept batches whose broker-owned fields are wrong: [source position, baseOffset,
   * brokerTimestamp]. Both sit outside the checksum (bytes 0..15), so writing them back is
   * the same patch the broker makes on append and the checksum still holds.
   */
  patches: Array<[number, number, number]>;
}

export interface PieceResult extends SegmentMeta {
  /** The staged .log (index files beside it), or null when the file stays where it is. */
  stagedFile: string | null;
}

export interface RewriteResult {
  file: string;
  savedTo: Array<{ position: number; file: string }>;
  /** What the segment became, in offset order; empty for a removed segment. */
  pieces: PieceResult[];
  indexFilesWritten: number;
}

export function rewriteSegmentFile(task: RewriteTask): RewriteResult {
  const result: RewriteResult = { file: task.file, savedTo: [], pieces: [], indexFilesWritten: 0 };
  const dir = path.dirname(task.file);
  if (task.save.length > 0) {
    const fd = fs.openSync(task.file, 'r');
    try {
      for (const [position, length] of task.save) result.savedTo.push({ position, file: saveBytesAside(fd, task.file, position, position + length) });
    } finally {
      fs.closeSync(fd);
    }
  }
  switch (task.action) {
    case 'remove':
      return result;
    case 'truncate': {
      const fd = fs.openSync(task.file, 'r+');
      try {
        fs.ftruncateSync(fd, task.truncateTo);
        for (const [position, offset, time] of task.patches) writeBrokerFields(fd, position, offset, time);
        fs.fdatasyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      if (task.truncateTo === 0) {
        // An empty last segment: the engine keeps its indexes in memory; stale files would only mislead.
        for (const ext of ['oix', 'tix', 'kix'] as const) fs.rmSync(indexPath(task.file, ext), { force: true });
        result.pieces.push({ baseOffset: task.baseOffset, bytes: 0, nextOffset: task.baseOffset, firstTimestamp: -1, maxTimestamp: -1, stagedFile: null });
        return result;
      }
      result.pieces.push({ ...sealInPlace(dir, task.baseOffset, null), stagedFile: null });
      result.indexFilesWritten += 3;
      return result;
    }
    case 'keep':
      if (task.patches.length > 0) {
        const fd = fs.openSync(task.file, 'r+');
        try {
          for (const [position, offset, time] of task.patches) writeBrokerFields(fd, position, offset, time);
          fs.fdatasyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
      }
      result.pieces.push({ ...sealInPlace(dir, task.baseOffset, null), stagedFile: null });
      result.indexFilesWritten += 3;
      return result;
    case 'rewrite': {
      fs.mkdirSync(task.stagingDir, { recursive: true });
      const source = fs.openSync(task.file, 'r');
      try {
        for (const piece of task.pieces) {
          const staged = path.join(task.stagingDir, segmentFileName(piece.baseOffset, 'log'));
          const bytes = copyRuns(source, staged, piece.runs, task.patches);
          if (bytes === 0) {
            result.pieces.push({ baseOffset: piece.baseOffset, bytes: 0, nextOffset: piece.baseOffset, firstTimestamp: -1, maxTimestamp: -1, stagedFile: staged });
            continue;
          }
          result.pieces.push({ ...sealInPlace(task.stagingDir, piece.baseOffset, piece.endOffset), stagedFile: staged });
          result.indexFilesWritten += 3;
        }
      } finally {
        fs.closeSync(source);
      }
      return result;
    }
  }
}

/**
 * Lets the engine read a whole, dense segment back and write its index files (seal). The
 * plan made the file whole, so a finding here is a bug in the plan, never a reason to cut.
 */
function sealInPlace(dir: string, baseOffset: number, endOffset: number | null): SegmentMeta {
  const file = path.join(dir, segmentFileName(baseOffset, 'log'));
  const bytesBefore = fs.statSync(file).size;
  const { segment, findings } = Segment.recover(dir, baseOffset);
  const finding = findings[0];
  try {
    if (finding) throw new Error(`repair: ${file} is not whole after repair (${finding.reason} at ${finding.position}); the bytes were saved to ${finding.savedTo ?? 'nowhere'}`);
    if (!segmentFileFits(bytesBefore, segment.size)) throw new Error(`repair: ${file} reads back as ${segment.size} bytes, it has ${bytesBefore}`);
    if (endOffset !== null && segment.nextOffset !== endOffset) throw new Error(`repair: ${file} ends at offset ${segment.nextOffset}, the plan says ${endOffset}`);
    segment.seal();
    return segment.meta();
  } finally {
    segment.close();
  }
}

/** Copies source ranges back to back into a new file, applying the patches that fall in them. */
function copyRuns(source: number, target: string, runs: Array<[number, number]>, patches: Array<[number, number, number]>): number {
  const out = fs.openSync(target, 'w');
  let written = 0;
  try {
    const buf = Buffer.allocUnsafe(copyChunkBytes);
    for (const [position, length] of runs) {
      const runStart = written;
      for (let done = 0; done < length; ) {
        const want = Math.min(buf.length, length - done);
        const got = readFully(source, buf.subarray(0, want), position + done);
        if (got < want) throw new Error(`repair: ${target}: source ended early at ${position + done + got}`);
        for (let off = 0; off < got; ) off += fs.writeSync(out, buf, off, got - off, written + off);
        written += got;
        done += got;
      }
      for (const [at, offset, time] of patches) {
        if (at >= position && at < position + length) writeBrokerFields(out, runStart + (at - position), offset, time);
      }
    }
    fs.fdatasyncSync(out);
  } finally {
    fs.closeSync(out);
  }
  return written;
}

/** Copies a dropped range to `<file>.dropped-<position>` and syncs it (the engine's naming: droppedBytesPath). */
/** Writes a batch's baseOffset and brokerTimestamp (bytes 0..15, outside the checksum). */
function writeBrokerFields(fd: number, position: number, offset: number, time: number): void {
  const head = Buffer.alloc(16);
  head.writeBigInt64LE(BigInt(offset), BatchOffset.baseOffset);
  head.writeBigInt64LE(BigInt(time), BatchOffset.brokerTimestamp);
  for (let off = 0; off < head.length; ) off += fs.writeSync(fd, head, off, head.length - off, position + off);
}
