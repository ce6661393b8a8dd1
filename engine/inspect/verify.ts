/**
 * verify: read everything, change nothing, list every fault as `file, position, what`.
 *
 * Per segment (segment-check.ts, spread over the worker pool): every batch's header and
 * checksum, every record, offsets and broker times in order, and the index files the
 * checkpoint vouches for. Per channel (here): the checkpoint's claims against the files,
 * and offsets continuous across segments. Per store/topic: topic.json and the channel
 * folders it promises.
 *
 * What is a fault: anything that open would truncate, drop, rebuild or scan because it does
 * not hold — a torn tail on the active segment included (it is cut on open). What is not:
 * index files of an active segment the checkpoint does not vouch for (open rebuilds them
 * from the log every time), and offset gaps that a repair left on purpose (a sealed
 * segment's checkpoint entry then ends where the next segment starts, past its last batch).
 *
 * verify takes no lock and writes nothing; on a store a broker is writing, the active
 * segments may change under it (a batch being written shows as a torn tail).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadChecksum } from '../format/checksum';
import { lockHolder } from '../lock';
import { checkpointFile, inspectCheckpoint, type Checkpoint } from '../log/checkpoint';
import { orphanIndexNames, segmentFileName, type SegmentMeta } from '../log/segment';
import { segmentFileFits } from '../log/segment-scanner';
import { describePath, indexNamePattern, stagingDirName, type ChannelRef, type Layout } from './layout';
import { runSegmentTasks, type PoolOptions } from './pool';
import type { ProgressState } from './progress';
import { scanSegmentFile, type Fault, type ScanResult, type ScanTask } from './segment-check';
import { storeFileVersion } from '../store-file';

export type { Fault } from './segment-check';

export interface VerifyOptions extends PoolOptions {
  onProgress?: (state: ProgressState) => void;
}

export interface VerifyReport {
  target: string;
  kind: Layout['kind'];
  ok: boolean;
  faults: Fault[];
  /** Things worth knowing that are not faults (gaps left by repair, dropped-byte files). */
  notes: string[];
  channels: number;
  segments: number;
  batches: number;
  records: number;
  bytes: number;
  indexFilesChecked: number;
}

export type CheckpointState = { state: 'ok'; checkpoint: Checkpoint } | { state: 'missing'; checkpoint: null } | { state: 'unreadable'; checkpoint: null; problem: string };

/** The checkpoint of a channel folder, telling a missing file from an unreadable one (and why). */
export function loadCheckpoint(dir: string): CheckpointState {
  const { checkpoint, problem } = inspectCheckpoint(dir);
  if (checkpoint) return { state: 'ok', checkpoint };
  return problem === null ? { state: 'missing', checkpoint: null } : { state: 'unreadable', checkpoint: null, problem };
}

/**
 * The checkpoint entry open would trust without reading: listed with the file's size, and
 * for the active (last) segment only after a clean close (otherwise open scans it).
 */
export function vouchedMeta(cp: CheckpointState, base: number, fileBytes: number, isLast: boolean): SegmentMeta | null {
  if (cp.state !== 'ok') return null;
  const meta = cp.checkpoint.segments.find((m) => m.baseOffset === base);
  if (!meta || !segmentFileFits(fileBytes, meta.bytes)) return null;
  if (isLast && !cp.checkpoint.clean) return null;
  return meta;
}

/** How many times a live store's active segment is read again while its faults keep changing. */
const liveRescansMax = 3;

/**
 * A running broker writes its active segments while verify reads them: a part read before
 * the broker wrote it (zeros ahead of the data) and a later part read after showed as damage
 * with sound batches after it — 4-5 faults an operator would act on, gone once the broker
 * stopped (helper-50). So on a live store each active segment with a fault is read again,
 * up to liveRescansMax times or until two reads agree, and only a fault found at the same
 * place by every read is reported: damage stays where it is, while what the broker's writes
 * explain moves on or goes away. Under a steady stream of small commits (`__groups`) every
 * read found such a fault somewhere new, and verify of a healthy broker exited 1 (helper-57).
 */
async function settleLiveScans(tasks: readonly ScanTask[], results: ScanResult[], report: VerifyReport): Promise<void> {
  // These scans run here, not in the pool: the first scans may all have run in workers, and
  // this thread then had no checksum module ("checksum module not loaded", exit 1: helper-57).
  await loadChecksum();
  // Where, and what is wrong there (not how far it reaches: the next sound batch may be the
  // broker's newest, and damage just before it is still damage).
  const key = (f: Fault): string => `${f.position} ${f.what.split(';')[0]}`;
  const sameFaults = (a: ScanResult, b: ScanResult): boolean => JSON.stringify(a.faults) === JSON.stringify(b.faults);
  for (const [i, task] of tasks.entries()) {
    if (!task.isLast || results[i]!.faults.length === 0) continue;
    let previous = results[i]!;
    let everyRead = new Set(previous.faults.map(key));
    let settled = false;
    for (let n = 0; n < liveRescansMax && !settled; n++) {
      await new Promise((resolve) => setImmediate(resolve));
      const again = scanSegmentFile(task);
      settled = sameFaults(previous, again);
      const seen = new Set(again.faults.map(key));
      everyRead = new Set([...everyRead].filter((k) => seen.has(k)));
      previous = again;
    }
    // A torn tail of a segment being written is the batch being written (helper-54: every
    // verify of a store under a steady producer exited 1 with one per channel): a note.
    const torn = previous.faults.filter((f) => f.what.startsWith('torn tail:'));
    for (const f of torn) report.notes.push(`${f.file}: a batch being written at ${f.position} (its tail was cut short when read; the broker is writing this segment)`);
    // Two reads that agree: their faults stand (one the first read had not reached yet too).
    // Never agreeing: those found at the same place by every read, as the last read says them.
    const kept = previous.faults.filter((f) => !torn.includes(f) && (settled || everyRead.has(key(f))));
    const passedOver = previous.faults.length - torn.length - kept.length;
    results[i] = { ...previous, faults: kept };
    if (passedOver > 0) {
      report.notes.push(`${task.file}: faults that were not at the same place in each of ${liveRescansMax + 1} reads while the broker wrote it were passed over (reads racing its writes); stop the broker for an exact answer`);
    }
  }
}

export async function verifyStore(target: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const layout = describePath(target);
  // A store of a format this build does not know is refused, as open refuses it: its files would be misread.
  if (layout.storeDir) storeFileVersion(layout.storeDir);
  const report: VerifyReport = {
    target,
    kind: layout.kind,
    ok: true,
    faults: [],
    notes: [],
    channels: layout.channels.length,
    segments: 0,
    batches: 0,
    records: 0,
    bytes: 0,
    indexFilesChecked: 0,
  };
  checkTopics(layout, report);
  const holder = layout.storeDir ? lockHolder(layout.storeDir) : null;
  if (holder !== null) {
    report.notes.push(`the store is open by a running process (pid ${holder}): its active segments change while they are read (one with a fault is read again, and a batch being written is a note, not a fault); stop it for an exact answer`);
  }

  const checkpoints = new Map<ChannelRef, CheckpointState>();
  const tasks: ScanTask[] = [];
  for (const channel of layout.channels) {
    const cp = loadCheckpoint(channel.dir);
    checkpoints.set(channel, cp);
    const last = channel.segments[channel.segments.length - 1];
    const selected = layout.kind === 'segment' || layout.kind === 'index' ? selectOne(channel, report) : channel.segments;
    for (const s of selected) {
      const isLast = s === last;
      tasks.push({ file: s.file, baseOffset: s.baseOffset, isLast, meta: vouchedMeta(cp, s.baseOffset, s.fileBytes, isLast), wantBatches: false });
    }
  }

  const fileBytes = new Map<string, number>();
  for (const c of layout.channels) for (const s of c.segments) fileBytes.set(s.file, s.fileBytes);
  const bytesOf = (t: ScanTask): number => fileBytes.get(t.file) ?? 0;
  const bytesTotal = tasks.reduce((n, t) => n + bytesOf(t), 0);
  let segmentsDone = 0;
  let bytesDone = 0;
  const results = await runSegmentTasks('scan', tasks, options, scanSegmentFile, bytesOf, (result) => {
    segmentsDone++;
    bytesDone += result.fileBytes;
    options.onProgress?.({ phase: 'verify', segmentsDone, segmentsTotal: tasks.length, bytesDone, bytesTotal });
  });
  if (holder !== null) await settleLiveScans(tasks, results, report);
  const byFile = new Map<string, ScanResult>();
  for (const r of results) {
    byFile.set(r.file, r);
    report.segments++;
    report.batches += r.batchCount;
    report.records += r.recordCount;
    report.bytes += r.fileBytes;
    report.indexFilesChecked += r.indexFilesChecked;
    report.faults.push(...r.faults);
  }

  if (layout.kind !== 'segment' && layout.kind !== 'index') {
    for (const channel of layout.channels) checkChannel(channel, checkpoints.get(channel)!, byFile, report);
  }
  // File by file, in position order (the pool finishes segments in any order).
  report.faults.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : (a.position ?? -1) - (b.position ?? -1)));
  report.ok = report.faults.length === 0;
  return report;
}

/** For a one-file target: the segment it is (a .log) or belongs to (an index file). */
function selectOne(channel: ChannelRef, report: VerifyReport): ChannelRef['segments'] {
  if (channel.only) return [channel.only];
  // an index file: check the segment it indexes (the index check needs the log)
  const name = path.basename(report.target);
  const m = indexNamePattern.exec(name);
  const segment = m ? channel.segments.find((s) => s.baseOffset === Number(m[1])) : undefined;
  if (!segment) {
    report.faults.push({ file: path.resolve(report.target), position: null, what: 'no segment (.log) beside it with the same base offset' });
    return [];
  }
  return [segment];
}

function checkTopics(layout: Layout, report: VerifyReport): void {
  for (const topic of layout.topics) {
    if (topic.problem) {
      report.faults.push({ file: path.join(topic.dir, 'topic.json'), position: null, what: `${topic.problem} (open leaves this topic closed; repair rebuilds topic.json from its channel folders)` });
      continue;
    }
    const found = new Set(layout.channels.filter((c) => c.topic === topic.name).map((c) => c.channel));
    for (let c = 0; c < topic.channelCount!; c++) {
      if (!found.has(c)) report.faults.push({ file: path.join(topic.dir, String(c)), position: null, what: `channel folder missing (topic.json says ${topic.channelCount} channels; open would start it empty)` });
    }
    for (const channel of layout.channels) {
      if (channel.topic !== topic.name || channel.channel === null || channel.channel < topic.channelCount!) continue;
      // Segments there are messages nobody can read: open ignores the folder. An empty one is harmless.
      if (channel.segments.length > 0) report.faults.push({ file: channel.dir, position: null, what: `channel folder beyond the ${topic.channelCount} channels of topic.json holds ${channel.segments.length} segment(s) (open ignores it; repair raises the count)` });
      else report.notes.push(`${channel.dir}: channel folder beyond the ${topic.channelCount} channels of topic.json (ignored by open)`);
    }
  }
  for (const leftover of layout.leftovers) report.notes.push(`${leftover}: leftover of an interrupted topic create or delete (open removes it: a create's before serving, a delete's in the background after)`);
}

/** The checkpoint's claims against the files, and offsets continuous across segments. */
function checkChannel(channel: ChannelRef, cp: CheckpointState, byFile: Map<string, ScanResult>, report: VerifyReport): void {
  const cpFile = path.join(channel.dir, checkpointFile);
  const segments = channel.segments;
  const names = fs.readdirSync(channel.dir);
  const dropped = names.filter((n) => /\.log\.dropped-\d+(\.\d+)?$/.test(n));
  const orphans = orphanIndexNames(names).sort();
  if (orphans.length > 0) report.notes.push(`${channel.label}: ${orphans.length} index file(s) without their log (${orphans.join(', ')}), left by a removal cut short or a log removed otherwise (open and repair remove them)`);
  if (fs.existsSync(path.join(channel.dir, stagingDirName))) report.notes.push(`${channel.label}: a staging folder (.repair) of an interrupted repair is left; run repair again`);
  if (dropped.length > 0) report.notes.push(`${channel.label}: ${dropped.length} file(s) of bytes dropped by recovery or repair (*.dropped-*), kept for inspection`);
  if (cp.state !== 'ok') {
    if (segments.length > 0) {
      report.faults.push({ file: cpFile, position: null, what: cp.state === 'missing' ? 'missing (open scans every segment and rebuilds every index)' : `untrusted: ${cp.problem} (open scans every segment; repair writes it anew)` });
    }
  } else {
    const present = new Set(segments.map((s) => s.baseOffset));
    // Retention and compaction write their intent (removingBefore), delete the oldest
    // segments, then write the checkpoint without them: a crash between leaves listed segments
    // under the intent missing. Open drops them; not a fault. Missing otherwise, they are lost.
    const oldestPresent = segments.length > 0 ? Math.min(...present) : Infinity;
    const { removingBefore } = cp.checkpoint;
    for (const meta of cp.checkpoint.segments) {
      if (present.has(meta.baseOffset)) continue;
      const name = segmentFileName(meta.baseOffset, 'log');
      const offsets = meta.nextOffset > meta.baseOffset ? `offsets ${meta.baseOffset}..${meta.nextOffset - 1}` : 'no offsets';
      if (meta.baseOffset < oldestPresent && removingBefore !== null && meta.nextOffset <= removingBefore) {
        report.notes.push(`${cpFile}: lists segment ${name}, older than every segment left: a retention pass or compaction stopped before its checkpoint (open drops it)`);
      } else if (meta.baseOffset < oldestPresent && removingBefore === null) {
        report.notes.push(`${cpFile}: lists segment ${name}, older than every segment left: a retention pass stopped before its checkpoint, or the file was removed (a checkpoint of format 1 or 2 cannot tell; open drops it)`);
      } else {
        report.faults.push({ file: cpFile, position: null, what: `lists segment ${name} (${offsets}), which is missing: no removal was under way, its messages are lost` });
      }
    }
  }

  let previousEnd: number | null = null;
  let previousWhole = true;
  segments.forEach((s, i) => {
    const isLast = i === segments.length - 1;
    const scan = byFile.get(s.file);
    const listed = cp.state === 'ok' ? cp.checkpoint.segments.find((m) => m.baseOffset === s.baseOffset) : undefined;
    const nextBase = isLast ? null : segments[i + 1]!.baseOffset;
    let end = scan?.endOffset ?? s.baseOffset; // where this segment's offsets end, as open will see it

    if (cp.state === 'ok') {
      // What a crash between a roll and the seal's checkpoint leaves: open scans it, as it does the active one. Not damage.
      if (!listed && !isLast) report.notes.push(`${s.file}: sealed segment not in checkpoint.json, as a crash right after a roll leaves it (open scans it and rebuilds its indexes)`);
      // The segment a clean checkpoint lists last (the active one at that close) grows when an
      // open finds the store as that close left it: the broker writes no checkpoint then, and
      // appends to it. Open scans it.
      const grewAfterCleanClose = listed !== undefined && cp.checkpoint.clean && listed === cp.checkpoint.segments.at(-1) && s.fileBytes > listed.bytes;
      if (listed && !segmentFileFits(s.fileBytes, listed.bytes) && !(isLast && !cp.checkpoint.clean) && !grewAfterCleanClose) {
        report.faults.push({ file: s.file, position: null, what: `checkpoint.json says ${listed.bytes} bytes, the file has ${s.fileBytes} (open scans it)` });
      }
    }
    const meta = vouchedMeta(cp, s.baseOffset, s.fileBytes, isLast);
    if (meta && scan) {
      // A vouched segment is never read at open: its claims are what the broker serves.
      if (scan.whole) {
        const scanned = scan.endOffset ?? s.baseOffset;
        if (meta.nextOffset < scanned || (meta.nextOffset > scanned && (isLast || meta.nextOffset !== nextBase))) {
          report.faults.push({ file: cpFile, position: null, what: `says ${path.basename(s.file)} ends at offset ${meta.nextOffset}, its last batch ends at ${scanned}` });
        } else if (meta.nextOffset > scanned) {
          report.notes.push(`${channel.label}: offsets ${scanned}..${meta.nextOffset - 1} are empty (left by a repair)`);
        }
        if (scan.batchCount > 0 && (meta.firstTimestamp !== scan.firstTimestamp || meta.maxTimestamp !== scan.maxTimestamp)) {
          report.faults.push({
            file: cpFile,
            position: null,
            what: `says ${path.basename(s.file)} spans broker time ${meta.firstTimestamp}..${meta.maxTimestamp}, its batches span ${scan.firstTimestamp}..${scan.maxTimestamp}`,
          });
        }
      }
      end = meta.nextOffset;
    }
    if (previousEnd !== null && previousWhole && s.baseOffset !== previousEnd) {
      report.faults.push({ file: s.file, position: null, what: `starts at offset ${s.baseOffset}, the previous segment ends at ${previousEnd}` });
    }
    previousEnd = end;
    previousWhole = scan?.whole ?? false;
  });
}
