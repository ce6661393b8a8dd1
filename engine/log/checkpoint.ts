/**
 * The channel checkpoint (checkpoint.json): what recovery may trust without reading.
 *
 *   { "version": 3, "clean": bool, "removingBefore": offset, "segments": [SegmentMeta…], "producers": [[id, firstSeq, lastSeq, baseOffset, count]…], "checksum": "…" }
 *
 * The checksum (checked-json.ts) makes a damaged file untrusted as a whole: a full scan, which
 * re-learns the producers too. Versions 1 (no checksum) and 2 (no removingBefore) are still read.
 *
 * `removingBefore` is the intent of a removal (retention, compaction): written, before the
 * first file goes, as the offset below which listed segments may be missing; 0 in every
 * other checkpoint. A listed segment missing without it is data lost by something other than
 * the broker, which verify and open say (before version 3 the two could not be told apart).
 *
 * Written atomically (temp file, fdatasync, rename, fsync of the folder) once a rolled
 * segment is sealed (its index files written, in the background), after retention, at open
 * (clean=false; none when the open found the channel as a clean close left it:
 * ChannelLog.cleanCheckpointCurrent; when that write fails it is owed to the next retention
 * pass: see ChannelLog.checkpointFailedAtOpen) and at clean close (clean=true, the active
 * segment included). Sealed segments it lists whose file size matches are trusted;
 * everything else is scanned.
 *
 * The writes at store open and close go through the thread pool (writeCheckpointAsync), many
 * channels at once (IoSlots): the same steps in the same order, so the same file after a crash.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkedJsonText, parseCheckedJson } from './checked-json';
import * as pool from './fs-pool';
import { writeFileSynced } from './index-file';
import type { SegmentMeta } from './segment';

export const checkpointFile = 'checkpoint.json';
const checkpointVersion = 3;

export type ProducerEntry = [producerId: number, firstSeq: number, lastSeq: number, baseOffset: number, count: number];

export interface Checkpoint {
  clean: boolean;
  /** Listed segments wholly below it may be missing (a removal was under way); 0: none may; null: a file of version 1 or 2, which cannot say. */
  removingBefore: number | null;
  segments: SegmentMeta[];
  producers: ProducerEntry[];
}

/**
 * The segments `checkpoint` lists whose logs are not among `present` (base offsets) and that
 * no removal's intent covers: lost by something other than the broker. None for a checkpoint
 * of format 1 or 2, which cannot tell (removingBefore null).
 */
export function lostSegments(checkpoint: Checkpoint | null, present: ReadonlySet<number>): SegmentMeta[] {
  const intent = checkpoint?.removingBefore ?? null;
  if (intent === null) return [];
  return checkpoint!.segments.filter((meta) => !present.has(meta.baseOffset) && meta.nextOffset > intent);
}

export function readCheckpoint(dir: string): Checkpoint | null {
  return inspectCheckpoint(dir).checkpoint;
}

/**
 * The checkpoint, or null with why: `problem` is null when there is no file, else what makes
 * it untrusted (open then scans every segment; verify says it).
 */
export function inspectCheckpoint(dir: string): { checkpoint: Checkpoint; problem: null } | { checkpoint: null; problem: string | null } {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, checkpointFile), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { checkpoint: null, problem: null };
    throw err;
  }
  const untrusted = (problem: string): { checkpoint: null; problem: string } => ({ checkpoint: null, problem });
  let parsed: { fields: Record<string, unknown>; checked: boolean };
  try {
    parsed = parseCheckedJson(text);
  } catch (err) {
    return untrusted((err as Error).message);
  }
  const { version, clean, segments, producers = [], removingBefore } = parsed.fields;
  if (version !== 1 && version !== 2 && version !== checkpointVersion) return untrusted(`version ${JSON.stringify(version)} is not one this build reads (1, 2, ${checkpointVersion})`);
  if (version !== 1 && !parsed.checked) return untrusted('no checksum');
  if (version === checkpointVersion && !count(removingBefore)) return untrusted('removingBefore is not an offset');
  if (!Array.isArray(segments) || !segments.every(isSegmentMeta)) return untrusted('a segment entry is not what open expects');
  if (!Array.isArray(producers) || !producers.every(isProducerEntry)) return untrusted('a producer entry is not what open expects');
  return { checkpoint: { clean: clean === true, removingBefore: version === checkpointVersion ? (removingBefore as number) : null, segments, producers }, problem: null };
}

/** Non-negative safe integers in the right relations; anything else makes the checkpoint untrusted (a full scan). */
function isSegmentMeta(value: unknown): value is SegmentMeta {
  const m = value as Partial<Record<keyof SegmentMeta, unknown>> | null;
  if (typeof m !== 'object' || m === null) return false;
  const { baseOffset, bytes, nextOffset, firstTimestamp, maxTimestamp } = m;
  if (!count(baseOffset) || !count(bytes) || !count(nextOffset) || nextOffset < baseOffset) return false;
  return timestamp(firstTimestamp) && timestamp(maxTimestamp);
}

function isProducerEntry(value: unknown): value is ProducerEntry {
  return Array.isArray(value) && value.length === 5 && value.every((n) => Number.isSafeInteger(n)) && value[4] > 0 && value[0] >= 0;
}

function count(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

/** A broker time in ms, or -1 for none yet. */
function timestamp(value: unknown): boolean {
  return Number.isSafeInteger(value) && (value as number) >= -1;
}

export function writeCheckpoint(dir: string, checkpoint: Checkpoint): void {
  writeFileAtomic(path.join(dir, checkpointFile), checkpointText(checkpoint));
}

/** temp + fdatasync + rename + fsync(dir): the file is either the old or the new one after a crash. */
export function writeFileAtomic(file: string, text: string): void {
  const temp = `${file}.tmp`;
  // Every byte, or an error: one writeSync may write less (a full disk, a file size limit),
  // and a short file renamed over a good one was a topic left closed at the next open.
  writeFileSynced(temp, Buffer.from(text));
  fs.renameSync(temp, file);
  syncDir(path.dirname(file));
}

/** writeCheckpoint through the thread pool. */
export function writeCheckpointAsync(dir: string, checkpoint: Checkpoint): Promise<void> {
  return writeFileAtomicAsync(path.join(dir, checkpointFile), checkpointText(checkpoint));
}

function checkpointText(checkpoint: Checkpoint): string {
  const { clean, segments, producers } = checkpoint;
  return checkedJsonText({ version: checkpointVersion, clean, removingBefore: checkpoint.removingBefore ?? 0, segments, producers });
}

/** writeFileAtomic through the thread pool: the same steps, in the same order. */
async function writeFileAtomicAsync(file: string, text: string): Promise<void> {
  const temp = `${file}.tmp`;
  const fd = await pool.open(temp, 'w');
  try {
    await pool.writeAll(fd, Buffer.from(text), 0);
    await pool.fdatasync(fd);
  } finally {
    await pool.close(fd);
  }
  await pool.rename(temp, file);
  await syncDirAsync(path.dirname(file));
}

/** syncDir through the thread pool. */
export async function syncDirAsync(dir: string): Promise<void> {
  const fd = await pool.open(dir, 'r');
  try {
    await pool.fsync(fd);
  } finally {
    await pool.close(fd);
  }
}

export function syncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
