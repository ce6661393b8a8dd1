/**
 * repair: make a folder that verify passes and the broker opens, losing only what is damaged.
 *
 * Under the folder lock (a running broker makes repair fail with STORE_LOCKED), per channel:
 *
 * 1. scan (worker pool): walk every segment past damage (walk.ts); collect the batches whose
 *    checksum holds and whose records decode, and the damaged ranges.
 * 2. plan (repair-plan.ts, in offset order across the channel): keep every batch whose
 *    checksum holds and whose records decode, unless it overlaps offsets already kept; a
 *    wrong offset or broker time in a header (outside the checksum) is written back from its
 *    neighbours. Kept batches are grouped into pieces, each dense in offsets; a piece ends
 *    where a segment ends or where dropped batches leave a gap.
 * 3. rewrite (worker pool): copy every dropped range to `<file>.dropped-<position>`; a
 *    segment that is one piece from position 0 is kept or truncated in place, any other is
 *    rewritten into staged piece files (`<channel>/.repair/`, fdatasynced), each named by its
 *    first offset; index files are rebuilt for every segment by the engine's own code.
 * 4. commit (here): rename staged files into place, delete the segments they replace, fsync
 *    the folder, then write checkpoint.json (see commitChannel for the order).
 *
 * Why split at gaps: Segment.recover (open after a crash) treats an offset that is not the
 * expected one as corruption and truncates from there. A segment with a hole in the middle
 * would be cut at the hole the first time the broker scanned it. Pieces are dense, so a scan
 * at any later open keeps every batch; the holes sit between segments, where the checkpoint
 * absorbs them (a sealed segment's nextOffset = the next segment's base offset), and a
 * rescan only logs a finding.
 *
 * Why write checkpoint.json (clean, every piece listed) rather than delete it: the broker
 * then opens without reading a byte and trusts exactly the files repair just wrote and
 * indexed. Without it, open would scan every segment and, because of the holes, log a
 * finding for each at every open.
 *
 * Crash safety: sources are only replaced or deleted after their other pieces are renamed
 * in; a crash in between leaves overlapping segments, which a second repair resolves
 * (overlapping batches are dropped as duplicates, and copied aside anyway).
 *
 * Known limit: a damaged batch at the very end of the active segment leaves no trace of its
 * offsets, so the broker hands them out again to new messages (the same as a torn tail).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WaymarkError } from '../format/errors';
import { loadChecksum } from '../format/checksum';
import { lockFolder } from '../lock';
import { limits } from '../limits';
import { lostSegments, syncDir, writeCheckpoint } from '../log/checkpoint';
import { cutTornLastCommit, lastCommitMayBeTorn, orphanIndexNames, segmentFileName, type SegmentMeta } from '../log/segment';
import { readTopicFile, topicFile, writeTopicFile } from '../log/topic-file';
import { parseJson } from '../log/checked-json';
import { BatchOffset, batchHeaderBytes, probeHeader, readInt64 } from '../format/record-batch';
import { describePath, indexExtensions, stagingDirName, type ChannelRef, type Layout } from './layout';
import { runSegmentTasks, type PoolOptions } from './pool';
import type { ProgressState } from './progress';
import { planChannel, type ChannelPlan, type PlannedPatch } from './repair-plan';
import { indexPath, scanSegmentFile, type Fault, type ScanResult } from './segment-check';
import { rewriteSegmentFile, type RewriteAction, type RewriteResult, type RewriteTask } from './segment-rewrite';
import { loadCheckpoint } from './verify';
import { markStoreCurrent, storeFileVersion, storeFormatVersion } from '../store-file';

export interface RepairOptions extends PoolOptions {
  onProgress?: (state: ProgressState) => void;
  /** The caller holds the store's folder lock (the store repairing a channel at open). */
  lockHeld?: boolean;
}

export interface DroppedRange {
  file: string;
  position: number;
  bytes: number;
  reason: string;
  /** Where the bytes were copied before they were cut. */
  savedTo: string | null;
}

export interface SegmentChange {
  file: string;
  /** patch: only broker-owned header fields were written back, in place. */
  action: Exclude<RewriteAction, 'keep'> | 'patch';
  /** The .log files it became (rewrite, truncate); empty when removed. */
  into: string[];
}

export interface RepairReport {
  target: string;
  /** The folder whose LOCK repair held. */
  lockedDir: string;
  dropped: DroppedRange[];
  /** Broker-owned header fields written back (they sit outside the checksum). */
  patched: PlannedPatch[];
  changed: SegmentChange[];
  /** Offsets that no longer hold a message: [from, to) per channel. */
  gaps: Array<{ channel: string; from: number; to: number }>;
  channels: number;
  segmentsBefore: number;
  segmentsAfter: number;
  recordsKept: number;
  indexFilesWritten: number;
  checkpointsWritten: number;
  /** What repair could not fix (the channel was left as it was). */
  problems: Fault[];
  /** topic.json files written anew from the channel folders (the old one was unreadable). */
  topicsRebuilt: Array<{ file: string; channels: number; reason: string; savedTo: string | null; createdAt: number }>;
  /** Empty folders under topics/ without a topic.json, removed. */
  foldersRemoved: string[];
  /** Topics whose channel count was raised to cover channel folders beyond it that hold segments. */
  channelsRaised: Array<{ file: string; from: number; to: number }>;
  /** Channel folders topic.json counts that were missing, made empty. */
  channelsCreated: string[];
  /**
   * store.json's format version raised to this build's before anything was written (a store
   * of format 1 or 2: repair writes format-3 segments, an end mark after each), else null.
   */
  storeMarked: { from: number; to: number } | null;
  /**
   * Segment logs shorter than checkpoint.json vouched for: bytes that were durable are gone
   * (cut off by something other than the broker) before repair ran. Nothing is left of them to
   * save; repair keeps what the file still holds, and says so here.
   */
  shortened: Array<{ file: string; vouchedBytes: number; fileBytes: number }>;
  /**
   * Segments checkpoint.json lists whose logs were gone before repair ran, with no removal
   * under way (a checkpoint of format 3 says): their messages are lost, nothing is left to
   * save. A channel whose first segments went so starts at the first one left.
   */
  missing: Array<{ file: string; from: number; to: number }>;
  /** Index files without their log, removed. */
  orphansRemoved: string[];
}

export async function repairStore(target: string, options: RepairOptions = {}): Promise<RepairReport> {
  const first = describePath(target);
  if (first.kind === 'segment' || first.kind === 'index') {
    throw new WaymarkError('INVALID_ARGUMENT', `${target}: repair works on a store, topic or channel folder (it may split segments and rewrites checkpoint.json)`);
  }
  const lockedDir = first.storeDir ?? path.resolve(target);
  const lock = options.lockHeld ? null : lockFolder(lockedDir);
  try {
    const layout = describePath(target); // again, now that nobody else may change it
    // A store of a format this build does not know is refused before anything changes, as open refuses it.
    const formatBefore = layout.storeDir ? storeFileVersion(layout.storeDir) : null;
    const report: RepairReport = {
      target,
      lockedDir,
      dropped: [],
      patched: [],
      changed: [],
      gaps: [],
      missing: [],
      orphansRemoved: [],
      channels: layout.channels.length,
      segmentsBefore: 0,
      segmentsAfter: 0,
      recordsKept: 0,
      indexFilesWritten: 0,
      checkpointsWritten: 0,
      problems: [],
      topicsRebuilt: [],
      foldersRemoved: [],
      channelsRaised: [],
      channelsCreated: [],
      storeMarked: null,
      shortened: [],
    };
    if (layout.storeDir && formatBefore !== null && formatBefore !== storeFormatVersion) {
      // Before the first write, as open does: a build of the old format must not read the marks repair writes.
      markStoreCurrent(layout.storeDir);
      report.storeMarked = { from: formatBefore, to: storeFormatVersion };
    }
    mendTopicFiles(layout, report);
    for (const channel of layout.channels) fs.rmSync(path.join(channel.dir, stagingDirName), { recursive: true, force: true });

    await loadChecksum(); // step 0 checks batches in this thread (the scans load it in theirs)
    // 0. a torn last group commit, cut back to its start as open would (Segment.recover): a
    // later batch of the commit kept, the one before it dropped, was a lost message the
    // producer's resend was refused for (DUPLICATE_SEQUENCE).
    const checkpoints = new Map(layout.channels.map((channel) => [channel, loadCheckpoint(channel.dir).checkpoint]));
    for (const channel of layout.channels) {
      const last = channel.segments[channel.segments.length - 1];
      if (!last || (channel.only !== null && channel.only.file !== last.file)) continue;
      if (!lastCommitMayBeTorn(checkpoints.get(channel)!, last.baseOffset, last.fileBytes)) continue;
      const torn = cutTornLastCommit(last.file);
      if (!torn) continue;
      report.dropped.push({ file: torn.file, position: torn.position, bytes: torn.bytesDropped, reason: torn.reason, savedTo: torn.savedTo ?? null });
      last.fileBytes = torn.position;
    }

    // 1. scan
    const scanTasks = layout.channels.flatMap((channel) =>
      channel.segments.map((s, i) => ({ file: s.file, baseOffset: s.baseOffset, isLast: i === channel.segments.length - 1, meta: null, wantBatches: true, fileBytes: s.fileBytes })),
    );
    report.segmentsBefore = scanTasks.length;
    const scanBytes = scanTasks.reduce((n, t) => n + t.fileBytes, 0);
    let done = 0;
    let bytesDone = 0;
    const scans = await runSegmentTasks('scan', scanTasks, options, scanSegmentFile, (t) => t.fileBytes, (r: ScanResult) => {
      done++;
      bytesDone += r.fileBytes;
      options.onProgress?.({ phase: 'repair: scan', segmentsDone: done, segmentsTotal: scanTasks.length, bytesDone, bytesTotal: scanBytes });
    });
    const scanOf = new Map(scans.map((r) => [r.file, r]));

    // 2. plan
    const plans: ChannelPlan[] = [];
    for (const channel of layout.channels) {
      const results = channel.segments.map((s) => scanOf.get(s.file)!);
      const unreadable = results.find((r) => r.batches === null);
      if (unreadable) {
        report.problems.push({ file: unreadable.file, position: null, what: `${unreadable.faults[0]?.what ?? 'unreadable'}; channel ${channel.label} left as it was` });
        continue;
      }
      const checkpoint = checkpoints.get(channel)!;
      for (const segment of channel.segments) {
        const listed = checkpoint?.segments.find((m) => m.baseOffset === segment.baseOffset);
        if (listed && segment.fileBytes < listed.bytes) report.shortened.push({ file: segment.file, vouchedBytes: listed.bytes, fileBytes: segment.fileBytes });
      }
      for (const meta of lostSegments(checkpoint, new Set(channel.segments.map((s) => s.baseOffset)))) {
        report.missing.push({ file: path.join(channel.dir, segmentFileName(meta.baseOffset, 'log')), from: meta.baseOffset, to: meta.nextOffset });
      }
      const producers = checkpoint?.producers ?? [];
      plans.push(planChannel(channel, results, path.join(channel.dir, stagingDirName), producers));
    }

    // 3. rewrite
    const rewriteTasks = plans.flatMap((p) => p.tasks);
    const weightOf = (t: RewriteTask): number => scanOf.get(t.file)?.fileBytes ?? 0;
    const rewriteBytes = rewriteTasks.reduce((n, t) => n + weightOf(t), 0);
    done = 0;
    bytesDone = 0;
    const rewrites = await runSegmentTasks('rewrite', rewriteTasks, options, rewriteSegmentFile, weightOf, (r: RewriteResult, t) => {
      done++;
      bytesDone += weightOf(t);
      options.onProgress?.({ phase: 'repair: rewrite', segmentsDone: done, segmentsTotal: rewriteTasks.length, bytesDone, bytesTotal: rewriteBytes });
    });
    const rewriteOf = new Map(rewrites.map((r) => [r.file, r]));

    // 4. commit
    for (const plan of plans) commitChannel(plan, rewriteOf, report);
    return report;
  } finally {
    lock?.release();
  }
}

/**
 * Brings each topic's topic.json and its channel folders into line, before the channels are
 * repaired:
 * - topic.json unreadable (or failing its checksum; the store leaves such a topic closed):
 *   with channel folders in it, topic.json is written anew — channels = the highest channel
 *   folder + 1, no retention (nothing is ever deleted by a guess), default segment sizes,
 *   createdAt from the damaged file when it passes salvageCreatedAt's check, else 0 (group
 *   positions committed before stay valid either way); an empty folder is removed;
 *   anything else is a problem left for a person.
 * - channel folders beyond the count holding segments (open ignores them): the count is
 *   raised to cover them, the other fields kept.
 * - channel folders within the count missing: made, empty (open would start them so; their
 *   data is gone either way), so that verify passes after repair.
 */
function mendTopicFiles(layout: Layout, report: RepairReport): void {
  for (const topic of layout.topics) {
    const file = path.join(topic.dir, topicFile);
    const folders = layout.channels.filter((c) => c.topic === topic.name && c.channel !== null);
    const highest = Math.max(-1, ...folders.map((c) => c.channel!));
    let count: number;
    if (topic.problem !== null) {
      if (folders.length === 0) {
        if (fs.readdirSync(topic.dir).length === 0) {
          fs.rmdirSync(topic.dir);
          report.foldersRemoved.push(topic.dir);
        } else {
          report.problems.push({ file, position: null, what: `${topic.problem}; no channel folders to rebuild it from` });
        }
        continue;
      }
      count = highest + 1;
      if (count > limits.channelCountMax) {
        report.problems.push({ file, position: null, what: `${topic.problem}; channel folders up to ${highest}, past the ${limits.channelCountMax} a topic may have` });
        continue;
      }
      const createdAt = salvageCreatedAt(file, folders);
      const savedTo = keepDamaged(file);
      writeTopicFile(topic.dir, { name: topic.name, channels: count, retentionMs: 0, retentionBytes: 0, segmentBytes: limits.segmentBytesDefault, segmentMs: limits.segmentMsDefault, owner: '', createdAt });
      report.topicsRebuilt.push({ file, channels: count, reason: topic.problem, savedTo, createdAt });
    } else {
      count = topic.channelCount!;
      const beyond = folders.filter((c) => c.channel! >= count && c.segments.length > 0).map((c) => c.channel!);
      if (beyond.length > 0) {
        const raised = Math.max(...beyond) + 1;
        if (raised > limits.channelCountMax) {
          report.problems.push({ file, position: null, what: `channel folders up to ${raised - 1} hold segments, past the ${limits.channelCountMax} a topic may have` });
        } else {
          writeTopicFile(topic.dir, { ...readTopicFile(topic.dir), channels: raised });
          report.channelsRaised.push({ file, from: count, to: raised });
          count = raised;
        }
      }
    }
    const present = new Set(folders.map((c) => c.channel!));
    for (let c = 0; c < count; c++) {
      if (present.has(c)) continue;
      const dir = path.join(topic.dir, String(c));
      fs.mkdirSync(dir);
      report.channelsCreated.push(dir);
    }
    syncDir(topic.dir);
  }
}

/**
 * The createdAt a damaged topic.json still holds, when its text parses and the value is no
 * later than the topic's oldest stored message (every message is stamped at or after its
 * topic's creation: FORMAT.md, brokerTimestamp); else 0. Clients check it (protocol rule 8):
 * rebuilt with 0, every producer and consumer connected before the repair failed for good
 * with "deleted and made again" (helper-50). Group positions count from it as before.
 */
function salvageCreatedAt(file: string, folders: readonly ChannelRef[]): number {
  let fields: unknown;
  try {
    fields = parseJson(fs.readFileSync(file, 'utf8'));
  } catch {
    return 0;
  }
  const createdAt = typeof fields === 'object' && fields !== null ? (fields as { createdAt?: unknown }).createdAt : undefined;
  if (typeof createdAt !== 'number' || !Number.isSafeInteger(createdAt) || createdAt < 0) return 0;
  let oldest = Date.now();
  for (const channel of folders) {
    const first = channel.segments[0];
    if (!first || first.fileBytes < batchHeaderBytes) continue;
    const header = Buffer.alloc(batchHeaderBytes);
    const fd = fs.openSync(first.file, 'r');
    try {
      fs.readSync(fd, header, 0, batchHeaderBytes, 0);
    } finally {
      fs.closeSync(fd);
    }
    if (probeHeader(header, 0).kind === 'corrupt') return 0; // the oldest time is not known
    oldest = Math.min(oldest, readInt64(header, BatchOffset.brokerTimestamp));
  }
  return createdAt <= oldest ? createdAt : 0;
}

/** Copies a damaged file that repair is about to replace to `<file>.damaged[-N]` (the first name free), for a person to read; null when there is none. */
function keepDamaged(file: string): string | null {
  if (!fs.existsSync(file)) return null;
  let to = `${file}.damaged`;
  for (let n = 2; fs.existsSync(to); n++) to = `${file}.damaged-${n}`;
  fs.copyFileSync(file, to);
  return to;
}

/**
 * Renames staged pieces in, deletes what they replace, fsyncs, writes the checkpoint.
 *
 * Order, so that at every moment each kept batch is in at least one file of the channel
 * folder (the staging folder is swept at the start of the next repair): first the pieces
 * whose names are new, then those that replace an existing file (a source with the same
 * first offset), then the sources that no piece replaced are deleted. A crash in between
 * leaves duplicates, never a loss.
 */
function commitChannel(plan: ChannelPlan, rewriteOf: Map<string, RewriteResult>, report: RepairReport): void {
  const dir = plan.channel.dir;
  const finals: SegmentMeta[] = [];
  const staged: string[] = [];
  for (const task of plan.tasks) {
    const result = rewriteOf.get(task.file)!;
    report.indexFilesWritten += result.indexFilesWritten;
    const saved = new Map(result.savedTo.map((s) => [s.position, s.file]));
    for (const d of plan.dropped.filter((x) => x.file === task.file)) report.dropped.push({ ...d, savedTo: saved.get(d.position) ?? null });
    for (const piece of result.pieces) {
      if (piece.stagedFile) staged.push(piece.stagedFile);
      const { stagedFile: _staged, ...meta } = piece;
      finals.push(meta);
    }
    const into = result.pieces.map((p) => path.join(dir, segmentFileName(p.baseOffset, 'log')));
    const sameSize = task.action === 'truncate' && task.truncateTo === plan.channel.segments.find((x) => x.file === task.file)?.fileBytes;
    if (task.action === 'keep' || sameSize) {
      if (task.patches.length > 0) report.changed.push({ file: task.file, action: 'patch', into });
    } else {
      report.changed.push({ file: task.file, action: task.action, into });
    }
  }
  const moveIn = (stagedLog: string): void => {
    for (const ext of indexExtensions) {
      const index = indexPath(stagedLog, ext);
      if (fs.existsSync(index)) fs.renameSync(index, path.join(dir, path.basename(index)));
    }
    fs.renameSync(stagedLog, path.join(dir, path.basename(stagedLog))); // the .log last: it is what open looks for
  };
  const replacing = staged.filter((f) => fs.existsSync(path.join(dir, path.basename(f))));
  for (const f of staged) if (!replacing.includes(f)) moveIn(f);
  syncDir(dir);
  for (const f of replacing) moveIn(f);
  syncDir(dir);
  const finalBases = new Set(finals.map((m) => m.baseOffset));
  for (const task of plan.tasks) {
    if (finalBases.has(task.baseOffset)) continue;
    fs.rmSync(task.file, { force: true });
    for (const ext of indexExtensions) fs.rmSync(indexPath(task.file, ext), { force: true });
  }
  // Index files whose log is gone (a removal cut short, a log removed by hand): nothing reads
  // them, and verify kept noting them after a repair (helper-47).
  for (const name of orphanIndexNames(fs.readdirSync(dir))) {
    fs.rmSync(path.join(dir, name), { force: true });
    report.orphansRemoved.push(path.join(dir, name));
  }
  syncDir(dir);

  // Sealed segments end where the next one starts: a gap left by dropped batches belongs
  // to the segment before it, as channel recovery expects (expectedBase = previous nextOffset).
  for (let k = 0; k < finals.length - 1; k++) {
    if (finals[k + 1]!.baseOffset < finals[k]!.nextOffset) throw new Error(`repair: ${dir}: planned segments overlap at ${finals[k + 1]!.baseOffset}`);
    finals[k]!.nextOffset = finals[k + 1]!.baseOffset;
  }
  writeCheckpoint(dir, { clean: true, removingBefore: 0, segments: finals.filter((m) => m.bytes > 0), producers: plan.producers });
  report.checkpointsWritten++;
  fs.rmSync(path.join(dir, stagingDirName), { recursive: true, force: true });
  report.segmentsAfter += finals.length;
  report.patched.push(...plan.patched);
  report.recordsKept += plan.recordsKept;
  for (const gap of plan.gaps) report.gaps.push({ channel: plan.channel.label, ...gap });
}
