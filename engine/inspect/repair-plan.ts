/**
 * Repair's plan for one channel: from what the scan found (good batches and damaged ranges
 * per segment), decide which batches stay, at which offsets and broker times, and which
 * files they end up in. Pure: no I/O.
 *
 * Two header fields are outside the batch checksum because the broker patches them on
 * append: baseOffset and brokerTimestamp (bytes 0..15). A flipped bit there leaves a batch
 * whose checksum holds but whose offset or time is wrong; dropping every batch that then
 * looks out of order would turn one bad byte into the loss of the rest of the channel. So
 * those two fields are judged by their neighbours and patched back (the same write the
 * broker does on append), never dropped:
 *
 *   | evidence                                         | decision                                |
 *   |--------------------------------------------------|-----------------------------------------|
 *   | a run of batches with no bytes between them      | offsets are dense in a run: the run's   |
 *   | (plus the file name when the run starts at 0)    | start is the majority of what each batch|
 *   |                                                  | implies; dissenters are patched         |
 *   | a run after damage whose start is past anything  | dropped: nothing says what the offsets  |
 *   | the damaged bytes before it could have held      | were, and repair never guesses them     |
 *   | (≥ 64 bytes a batch, ≤ batchRecordCountMax       | (only a run of one batch can get here)  |
 *   | records each)                                    |                                         |
 *   | a batch whose offsets overlap ones already kept  | dropped (a duplicate; e.g. a repair     |
 *   |                                                  | interrupted between rename and delete)  |
 *   | broker times: batches off the longest            | time patched to the previous kept time  |
 *   | non-decreasing sequence of the channel           | (broker time never goes back)           |
 *   | checksum holds, records do not decode            | dropped (the writer made it so)         |
 *
 * Kept batches are then grouped into pieces, each dense in offsets; a piece ends where a
 * segment ends or where dropped batches leave a gap (repair.ts says why).
 */
import { segmentFileFits } from '../log/segment-scanner';
import { batchHeaderBytes } from '../format/record-batch';
import { formatLimits } from '../format/limits';
import type { ProducerEntry } from '../log/checkpoint';
import { ProducerStates } from '../log/producer-state';
import type { ChannelRef } from './layout';
import { BatchColumn, batchColumnCount, type ScanResult } from './segment-check';
import type { PieceTask, RewriteTask } from './segment-rewrite';

export interface PlannedDrop {
  file: string;
  position: number;
  bytes: number;
  reason: string;
}

export interface PlannedPatch {
  file: string;
  position: number;
  field: 'baseOffset' | 'brokerTimestamp';
  from: number;
  to: number;
  reason: string;
}

export interface ChannelPlan {
  channel: ChannelRef;
  tasks: RewriteTask[];
  dropped: PlannedDrop[];
  patched: PlannedPatch[];
  /** Offsets no kept batch holds: [from, to). */
  gaps: Array<{ from: number; to: number }>;
  producers: ProducerEntry[];
  recordsKept: number;
}

interface Kept {
  segment: number;
  position: number;
  length: number;
  headerOffset: number;
  headerTime: number;
  offset: number;
  time: number;
  count: number;
  producerId: number;
  sequence: number;
}

export function planChannel(channel: ChannelRef, results: ScanResult[], stagingDir: string, checkpointProducers: ProducerEntry[]): ChannelPlan {
  const segments = channel.segments;
  const plan: ChannelPlan = { channel, tasks: [], dropped: [], patched: [], gaps: [], producers: [], recordsKept: 0 };
  const drops: PlannedDrop[][] = segments.map((s, i) =>
    results[i]!.damage.map((d) => ({ file: s.file, position: d.position, bytes: d.bytes, reason: d.torn ? 'torn tail: batch cut short at the end of the file' : d.reason })),
  );
  const kept: Kept[] = [];
  let next: number | null = null; // offset after the last kept batch
  let gapBytes = 0; // damaged or dropped bytes since the last kept batch

  segments.forEach((segment, s) => {
    const table = results[s]!.batches!;
    const rows = table.length / batchColumnCount;
    const at = (b: number, column: number): number => table[b * batchColumnCount + column]!;
    const damage = [...results[s]!.damage].sort((a, b) => a.position - b.position);
    let d = 0;
    let b = 0;
    while (b < rows) {
      while (d < damage.length && damage[d]!.position < at(b, BatchColumn.position)) gapBytes += damage[d++]!.bytes;
      if (!at(b, BatchColumn.decodes)) {
        drops[s]!.push({ file: segment.file, position: at(b, BatchColumn.position), bytes: at(b, BatchColumn.length), reason: 'checksum holds but the records do not decode' });
        gapBytes += at(b, BatchColumn.length);
        b++;
        continue;
      }
      // A run: batches back to back with nothing between them, so their offsets are dense.
      let e = b + 1;
      while (e < rows && at(e, BatchColumn.decodes) && at(e, BatchColumn.position) === at(e - 1, BatchColumn.position) + at(e - 1, BatchColumn.length)) e++;

      const votes = new Map<number, number>();
      let runRecords = 0;
      for (let j = b; j < e; j++) {
        const implied = at(j, BatchColumn.baseOffset) - runRecords;
        votes.set(implied, (votes.get(implied) ?? 0) + 1);
        runRecords += at(j, BatchColumn.recordCount);
      }
      const atStart = at(b, BatchColumn.position) === 0;
      if (atStart) votes.set(segment.baseOffset, (votes.get(segment.baseOffset) ?? 0) + 1);
      let start = atStart ? segment.baseOffset : at(b, BatchColumn.baseOffset);
      for (const [candidate, count] of votes) if (count > (votes.get(start) ?? 0)) start = candidate;

      // After damage the run's start is only as good as its headers. The damaged bytes held
      // at most one batch per header's worth of bytes, each of at most batchRecordCountMax
      // records: a start past that is a flipped field with nothing to correct it from
      // (a run of one batch). Offsets are never guessed: such a run is dropped, not renumbered.
      const anchor = next ?? segments[0]!.baseOffset;
      const upper = anchor + Math.ceil(gapBytes / batchHeaderBytes) * formatLimits.batchRecordCountMax;
      const implausible = start > upper && !(atStart && start === segment.baseOffset);

      let want = start;
      for (let j = b; j < e; j++) {
        const position = at(j, BatchColumn.position);
        const length = at(j, BatchColumn.length);
        const count = at(j, BatchColumn.recordCount);
        const headerOffset = at(j, BatchColumn.baseOffset);
        const offset = want;
        want += count;
        if (implausible) {
          drops[s]!.push({ file: segment.file, position, bytes: length, reason: `offset ${headerOffset} is past anything the ${gapBytes} damaged bytes before it could hold, and no neighbour corrects it` });
          gapBytes += length;
          continue;
        }
        if (next !== null && offset < next) {
          drops[s]!.push({ file: segment.file, position, bytes: length, reason: `offsets ${offset}..${offset + count - 1} overlap batches already kept (up to ${next - 1})` });
          gapBytes += length;
          continue;
        }
        if (offset !== headerOffset) plan.patched.push({ file: segment.file, position, field: 'baseOffset', from: headerOffset, to: offset, reason: 'the batches around it in the run say so' });
        const time = at(j, BatchColumn.brokerTimestamp);
        kept.push({ segment: s, position, length, headerOffset, headerTime: time, offset, time, count, producerId: at(j, BatchColumn.producerId), sequence: at(j, BatchColumn.producerSequence) });
        next = offset + count;
        gapBytes = 0;
      }
      b = e;
    }
    while (d < damage.length) gapBytes += damage[d++]!.bytes;
  });

  patchTimes(kept, segments, plan);

  // Gaps, producers, pieces.
  const logStart = segments.length > 0 ? segments[0]!.baseOffset : 0;
  let previousEnd = logStart;
  // Idempotence state as the channel keeps it: the checkpoint's entries only for batches
  // retention already deleted (below the log start), then every kept batch in order. An
  // entry for a batch repair dropped must not survive: a retry of it would be answered as a
  // duplicate and the message lost.
  const producers = new ProducerStates();
  producers.load(checkpointProducers.filter((entry) => entry[3] < logStart));
  const piecesOf: PieceTask[][] = segments.map(() => []);
  const patchesOf: Array<Array<[number, number, number]>> = segments.map(() => []);
  for (const k of kept) {
    if (k.offset > previousEnd) plan.gaps.push({ from: previousEnd, to: k.offset });
    previousEnd = k.offset + k.count;
    plan.recordsKept += k.count;
    if (k.producerId >= 0 && k.sequence >= 0) producers.record(k.producerId, k.sequence, k.count, k.offset);
    if (k.offset !== k.headerOffset || k.time !== k.headerTime) patchesOf[k.segment]!.push([k.position, k.offset, k.time]);
    const pieces = piecesOf[k.segment]!;
    let piece = pieces[pieces.length - 1];
    if (!piece || piece.endOffset !== k.offset) {
      piece = { baseOffset: k.offset, runs: [], endOffset: k.offset };
      pieces.push(piece);
    }
    const run = piece.runs[piece.runs.length - 1];
    if (run && run[0] + run[1] === k.position) run[1] += k.length;
    else piece.runs.push([k.position, k.length]);
    piece.endOffset = k.offset + k.count;
  }
  plan.producers = producers.entries();

  let lastEnd: number | null = null;
  segments.forEach((segment, s) => {
    const pieces = piecesOf[s]!;
    const segmentDrops = drops[s]!.sort((a, b) => a.position - b.position);
    plan.dropped.push(...segmentDrops);
    const isLast = s === segments.length - 1;
    const task: RewriteTask = {
      file: segment.file,
      baseOffset: segment.baseOffset,
      action: 'keep',
      truncateTo: 0,
      pieces: [],
      stagingDir,
      save: segmentDrops.map((x) => [x.position, x.bytes]),
      patches: patchesOf[s]!,
    };
    const only = pieces.length === 1 ? pieces[0]! : null;
    if (pieces.length === 0) {
      // The active segment always stays, empty if need be, named at or after the offsets kept.
      const name = lastEnd !== null && segment.baseOffset < lastEnd ? lastEnd : segment.baseOffset;
      if (!isLast) task.action = 'remove';
      else if (name === segment.baseOffset) task.action = 'truncate'; // to 0 (already empty: a no-op)
      else {
        task.action = 'rewrite';
        task.pieces = [{ baseOffset: name, runs: [], endOffset: name }];
      }
    } else if (only && only.baseOffset === segment.baseOffset && only.runs.length === 1 && only.runs[0]![0] === 0) {
      const keptEnd = only.runs[0]![1];
      // Kept as it is when whole: its batches, perhaps then the end mark (or 8 bytes the scan took for the end).
      const whole = results[s]!.damage.length === 0 && segmentFileFits(results[s]!.fileBytes, keptEnd);
      if (!whole) {
        task.action = 'truncate';
        task.truncateTo = keptEnd;
      }
    } else {
      task.action = 'rewrite';
      task.pieces = pieces;
    }
    if (pieces.length > 0) lastEnd = pieces[pieces.length - 1]!.endOffset;
    plan.tasks.push(task);
  });
  return plan;
}

/**
 * Broker time never goes back in a channel. The batches on a longest non-decreasing run of
 * times keep theirs; any other had its time field flipped (or written wrong) and gets the
 * time of the kept batch before it (after it, for the first ones).
 */
function patchTimes(kept: Kept[], segments: ChannelRef['segments'], plan: ChannelPlan): void {
  const n = kept.length;
  if (n === 0) return;
  // Patience method: tails[k] = index of the smallest last time of a run of length k + 1.
  const tails: number[] = [];
  const before = new Int32Array(n).fill(-1);
  for (let i = 0; i < n; i++) {
    const t = kept[i]!.time;
    let lo = 0;
    let hi = tails.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (kept[tails[mid]!]!.time <= t) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0) before[i] = tails[lo - 1]!;
    tails[lo] = i;
  }
  const onRun = new Uint8Array(n);
  for (let i = tails[tails.length - 1]!; i >= 0; i = before[i]!) onRun[i] = 1;
  let firstOnRun = 0;
  while (!onRun[firstOnRun]) firstOnRun++;
  let time = kept[firstOnRun]!.time;
  for (let i = 0; i < n; i++) {
    const k = kept[i]!;
    if (onRun[i]) {
      time = k.time;
      continue;
    }
    plan.patched.push({
      file: segments[k.segment]!.file,
      position: k.position,
      field: 'brokerTimestamp',
      from: k.time,
      to: time,
      reason: 'broker time out of order with the rest of the channel',
    });
    k.time = time;
  }
}
