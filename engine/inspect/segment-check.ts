/**
 * The per-segment half of verify and of repair's first pass: walk one .log file past any
 * damage, decode every record, and check the segment's three index files against the log.
 * Runs in a piscina worker (worker.ts) or in the calling thread; takes and returns only
 * structured-clone data (no Buffers, no class instances).
 *
 * What is checked, per segment:
 * - every batch: header, checksum (walk.ts), and every record decodes (Kafka's
 *   DumpLogSegments --deep-iteration);
 * - order: the first batch starts at the file name's offset, offsets are dense, broker
 *   times never go back (the rules Segment.recover applies on open);
 * - index files, when the checkpoint vouches for the segment (otherwise open rebuilds them
 *   and what is on disk does not matter): the engine's own decoders first
 *   (OffsetIndex.decode, TimeIndex.decode, checkKeyIndexBytes), then, when the log is
 *   whole, every entry against the log: .oix entries point at batch starts with that
 *   offset, .tix entries name a batch start and its broker time, and the .kix file equals,
 *   byte for byte, the one the engine would build from this log.
 */
import * as fs from 'node:fs';
import { lz4Codec } from '../codec';
import { xxh32 } from '../format/checksum';
import { IndexKind, traceIdHeaderName } from '../format/index-keys';
import { decodeRecords, headerValue, type StoredRecord } from '../format/record-batch';
import { checkKeyIndexBytes, KeyIndexBuilder, keyIndexEntryBytes, keyIndexHeaderBytes } from '../index/key-index';
import { CorruptIndexError } from '../log/errors';
import { decodeIndexFile, fileChecksum } from '../log/index-file';
import { OffsetIndex, offsetIndexMagic } from '../log/offset-index';
import type { SegmentMeta } from '../log/segment';
import { TimeIndex, timeIndexMagic } from '../log/time-index';
import { inspectLimits } from './limits';
import { walkSegment } from './walk';

/** One thing wrong, as the tools print it: `file, position, what` (position null = the whole file). */
export interface Fault {
  file: string;
  position: number | null;
  what: string;
}

/** A byte range of a segment that holds no good batch (repair drops exactly this). */
export interface Damage {
  position: number;
  bytes: number;
  torn: boolean;
  /** Nothing good after it (walkSegment's toEnd). */
  toEnd: boolean;
  reason: string;
}

/** Columns of the batch table: one row of `batchColumnCount` numbers per batch with a holding checksum. */
export const BatchColumn = {
  position: 0,
  length: 1,
  baseOffset: 2,
  recordCount: 3,
  brokerTimestamp: 4,
  producerId: 5,
  producerSequence: 6,
  /** 1 when every record decodes, 0 when not (the checksum held, so the writer made it so). */
  decodes: 7,
} as const;
export const batchColumnCount = 8;

const faultsPerFileMax = inspectLimits.faultsPerFileMax;

export interface ScanTask {
  file: string;
  baseOffset: number;
  isLast: boolean;
  /** The checkpoint's claim when it vouches for this segment; its index files are then checked. */
  meta: SegmentMeta | null;
  /** Return the batch table (repair plans with it). */
  wantBatches: boolean;
}

export interface ScanResult {
  file: string;
  baseOffset: number;
  fileBytes: number;
  batchCount: number;
  recordCount: number;
  /** Offset after the last good batch; null when the segment has none. */
  endOffset: number | null;
  firstTimestamp: number;
  maxTimestamp: number;
  damage: Damage[];
  faults: Fault[];
  /** True when no damage and no order fault was found (index deep checks ran, checkpoint claims can be compared). */
  whole: boolean;
  indexFilesChecked: number;
  batches: Float64Array | null;
}

class BatchRows {
  data = new Float64Array(batchColumnCount * 256);
  count = 0;
  push(values: number[]): void {
    if ((this.count + 1) * batchColumnCount > this.data.length) {
      const grown = new Float64Array(this.data.length * 2);
      grown.set(this.data);
      this.data = grown;
    }
    this.data.set(values, this.count * batchColumnCount);
    this.count++;
  }
  row(i: number, column: number): number {
    return this.data[i * batchColumnCount + column]!;
  }
  trimmed(): Float64Array {
    return this.data.slice(0, this.count * batchColumnCount);
  }
}

export function indexPath(logFile: string, extension: 'oix' | 'tix' | 'kix'): string {
  return logFile.replace(/\.log$/, `.${extension}`);
}

function describeDamage(d: Damage, isLast: boolean, fileBytes: number): string {
  if (d.torn) {
    return isLast
      ? `torn tail: the last batch is cut short, ${d.bytes} bytes (open truncates them when it scans this segment, after a crash; repair always does)`
      : `torn tail in a sealed segment: the last ${d.bytes} bytes are a cut-short batch`;
  }
  const end = d.position + d.bytes;
  const to = !d.toEnd ? `the next good batch at ${end}` : end >= fileBytes ? 'the end of the file' : `the end of the data at ${end} (the end mark or zeroed tail after it is not data)`;
  return `${d.reason}; ${d.bytes} bytes unreadable up to ${to}`;
}

function readIndex(file: string, faults: Fault[]): Buffer | null {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    faults.push({ file, position: null, what: code === 'ENOENT' ? 'missing (rebuilt from the log when the broker first needs it: a read, time search or lookup in this segment; or by repair)' : `cannot read: ${(err as Error).message}` });
    return null;
  }
}

/** Runs an engine decoder; a CorruptIndexError becomes a fault. */
function engineCheck(file: string, faults: Fault[], check: () => void): boolean {
  try {
    check();
    return true;
  } catch (err) {
    if (!(err instanceof CorruptIndexError)) throw err;
    faults.push({ file, position: null, what: `${err.reason} (rebuilt from the log when the broker first needs it; or by repair)` });
    return false;
  }
}

/** Collects up to faultsPerFileMax faults of one kind for one file, then counts the rest. */
class FaultCap {
  private count = 0;
  constructor(
    private readonly file: string,
    private readonly faults: Fault[],
  ) {}
  add(position: number, what: string): void {
    if (this.count++ < faultsPerFileMax) this.faults.push({ file: this.file, position, what });
  }
  finish(what = 'more wrong entries'): void {
    const extra = this.count - faultsPerFileMax;
    if (extra > 0) this.faults.push({ file: this.file, position: null, what: `and ${extra} ${what}` });
  }
}

export function scanSegmentFile(task: ScanTask): ScanResult {
  const result: ScanResult = {
    file: task.file,
    baseOffset: task.baseOffset,
    fileBytes: 0,
    batchCount: 0,
    recordCount: 0,
    endOffset: null,
    firstTimestamp: -1,
    maxTimestamp: -1,
    damage: [],
    faults: [],
    whole: true,
    indexFilesChecked: 0,
    batches: null,
  };
  const faults = result.faults;
  let fd: number;
  try {
    fd = fs.openSync(task.file, 'r');
  } catch (err) {
    faults.push({ file: task.file, position: null, what: `cannot open: ${(err as Error).message}` });
    result.whole = false;
    return result;
  }
  try {
    result.fileBytes = fs.fstatSync(fd).size;
    const meta = task.meta;
    // The key index is compared with one built from the log as the engine would build it;
    // the file's own slot count is used so a file made under another limit still compares.
    let kixBytes: Buffer | null = null;
    let keys: KeyIndexBuilder | null = null;
    if (meta) {
      const file = indexPath(task.file, 'kix');
      kixBytes = readIndex(file, faults);
      if (kixBytes) {
        result.indexFilesChecked++;
        const bytes = kixBytes;
        let slotCount = 0;
        if (engineCheck(file, faults, () => (slotCount = checkKeyIndexBytes(file, bytes, task.baseOffset, meta.bytes, meta.nextOffset - meta.baseOffset).slotCount))) {
          keys = new KeyIndexBuilder(task.baseOffset, slotCount);
        }
      }
    }

    const rows = new BatchRows();
    const order = new FaultCap(task.file, faults);
    let expected: number | null = task.baseOffset;
    let previousTime = -1;
    let timeBefore = -1; // the broker time of the batch before the previous one
    let previousPosition = 0;
    for (const event of walkSegment(fd)) {
      if (event.kind === 'damage') {
        const damage: Damage = { position: event.position, bytes: event.bytes, torn: event.torn, toEnd: event.toEnd, reason: event.reason };
        result.damage.push(damage);
        faults.push({ file: task.file, position: event.position, what: describeDamage(damage, task.isLast, result.fileBytes) });
        result.whole = false;
        expected = null; // the next good batch starts a new run; its offset cannot be checked against the lost one
        continue;
      }
      const h = event.header;
      let records: StoredRecord[] | null = null;
      try {
        records = decodeRecords(event.bytes, 0, h, lz4Codec);
      } catch (err) {
        faults.push({ file: task.file, position: event.position, what: `checksum holds but the records do not decode: ${(err as Error).message}` });
        result.whole = false;
        expected = null;
      }
      rows.push([event.position, h.batchLength, h.baseOffset, h.recordCount, h.brokerTimestamp, h.producerId, h.producerSequence, records ? 1 : 0]);
      if (!records) continue;
      // baseOffset and brokerTimestamp are outside the checksum: a flipped bit there passes it.
      if (expected !== null && h.baseOffset !== expected) {
        const what = result.batchCount === 0 ? `first batch has offset ${h.baseOffset}, the file name says ${task.baseOffset}` : `batch has offset ${h.baseOffset} where ${expected} was expected`;
        order.add(event.position, what);
        result.whole = false;
      }
      if (h.brokerTimestamp < previousTime) {
        // One flipped time field makes the time go back after it when it was flipped forward:
        // then the batch before is ahead of both neighbours, and it is the one named.
        if (result.batchCount >= 2 && timeBefore <= h.brokerTimestamp) {
          order.add(previousPosition, `broker time ${previousTime} is ahead of the batches on either side (${timeBefore} before it, ${h.brokerTimestamp} after it)`);
        } else {
          order.add(event.position, `broker time ${h.brokerTimestamp} goes back (the batch before has ${previousTime})`);
        }
        result.whole = false;
      }
      // Follow the position chain, not the field: one flipped offset is then one fault, not two.
      expected = (expected ?? h.baseOffset) + h.recordCount;
      timeBefore = previousTime;
      previousTime = h.brokerTimestamp;
      previousPosition = event.position;
      if (keys && result.whole) {
        for (const record of records) {
          keys.add(xxh32(record.msgId, IndexKind.msgId), event.position, record.offset, h.brokerTimestamp);
          if (record.key !== null) keys.add(xxh32(record.key, IndexKind.key), event.position, record.offset, h.brokerTimestamp);
          const traceId = headerValue(record.headers, traceIdHeaderName);
          if (traceId !== undefined) keys.add(xxh32(traceId, IndexKind.traceId), event.position, record.offset, h.brokerTimestamp);
        }
      }
      result.batchCount++;
      result.recordCount += h.recordCount;
      result.endOffset = expected;
      if (result.firstTimestamp < 0) result.firstTimestamp = h.brokerTimestamp;
      result.maxTimestamp = Math.max(result.maxTimestamp, h.brokerTimestamp);
    }
    order.finish('more batches out of order');

    if (meta) {
      checkSparseIndexes(task, meta, rows, result);
      if (keys && kixBytes && result.whole) compareKeyIndex(indexPath(task.file, 'kix'), kixBytes, keys.encode(meta.bytes), faults);
    }
    if (task.wantBatches) result.batches = rows.trimmed();
  } finally {
    fs.closeSync(fd);
  }
  return result;
}

/** .oix and .tix: the engine's decoders, then (log whole) each entry against the batches. */
function checkSparseIndexes(task: ScanTask, meta: SegmentMeta, rows: BatchRows, result: ScanResult): void {
  const faults = result.faults;
  const byPosition = new Map<number, number>();
  const byOffset = new Map<number, number>();
  for (let i = 0; i < rows.count; i++) {
    if (!rows.row(i, BatchColumn.decodes)) continue;
    byPosition.set(rows.row(i, BatchColumn.position), i);
    byOffset.set(rows.row(i, BatchColumn.baseOffset), i);
  }

  const oixFile = indexPath(task.file, 'oix');
  const oix = readIndex(oixFile, faults);
  if (oix) {
    result.indexFilesChecked++;
    const ok = engineCheck(oixFile, faults, () => OffsetIndex.decode(oixFile, oix, task.baseOffset, meta.bytes, meta.nextOffset));
    if (ok && result.whole) {
      const { header, entries } = decodeIndexFile(oixFile, oix, offsetIndexMagic, 8, task.baseOffset);
      const cap = new FaultCap(oixFile, faults);
      for (let i = 0; i < header.entryCount; i++) {
        const offset = task.baseOffset + entries.readUInt32LE(i * 8);
        const position = entries.readUInt32LE(i * 8 + 4);
        const row = byPosition.get(position);
        const at = header.headerBytes + i * 8;
        if (row === undefined) cap.add(at, `entry ${i}: position ${position} is not the start of a batch`);
        else if (rows.row(row, BatchColumn.baseOffset) !== offset) cap.add(at, `entry ${i}: offset ${offset} at position ${position}, but the batch there starts at ${rows.row(row, BatchColumn.baseOffset)}`);
      }
      cap.finish();
    }
  }

  const tixFile = indexPath(task.file, 'tix');
  const tix = readIndex(tixFile, faults);
  if (tix) {
    result.indexFilesChecked++;
    const ok = engineCheck(tixFile, faults, () => TimeIndex.decode(tixFile, tix, task.baseOffset, meta.bytes, meta.nextOffset));
    if (ok && result.whole) {
      const { header, entries } = decodeIndexFile(tixFile, tix, timeIndexMagic, 12, task.baseOffset);
      const cap = new FaultCap(tixFile, faults);
      for (let i = 0; i < header.entryCount; i++) {
        const time = Number(entries.readBigInt64LE(i * 12));
        const offset = task.baseOffset + entries.readUInt32LE(i * 12 + 8);
        const row = byOffset.get(offset);
        const at = header.headerBytes + i * 12;
        if (row === undefined) cap.add(at, `entry ${i}: offset ${offset} is not the first offset of a batch`);
        else if (rows.row(row, BatchColumn.brokerTimestamp) !== time) cap.add(at, `entry ${i}: time ${time} for offset ${offset}, the batch says ${rows.row(row, BatchColumn.brokerTimestamp)}`);
      }
      cap.finish();
    }
  }
}

const kixHeaderFields: Array<[from: number, name: string]> = [
  [0, 'magic'],
  [4, 'version'],
  [8, 'baseOffset'],
  [16, 'baseTimestamp'],
  [24, 'slotCount'],
  [28, 'entryCount'],
  [32, 'checksum'],
  [40, 'logBytes'],
  [48, 'reserved bytes'],
];
const kixEntryFields = ['keyHash', 'position', 'relativeOffset', 'timeDelta', 'prevEntry'];

/**
 * Names the first difference between a key index file and the one the log gives. A version 1
 * file (written before logBytes) is compared with the version 1 form of the expected one.
 */
function compareKeyIndex(file: string, actual: Buffer, expected: Buffer, faults: Fault[]): void {
  if (actual.readUInt8(4) === 1) {
    expected.writeUInt8(1, 4);
    expected.writeBigUInt64LE(0n, 40);
    expected.writeBigUInt64LE(fileChecksum(expected, 32), 32);
  }
  const actualEntries = actual.readUInt32LE(28);
  const expectedEntries = expected.readUInt32LE(28);
  if (actualEntries !== expectedEntries) {
    faults.push({ file, position: 28, what: `holds ${actualEntries} entries, the log has ${expectedEntries} keys` });
    return;
  }
  if (actual.length !== expected.length) {
    faults.push({ file, position: null, what: `${actual.length} bytes, the log gives ${expected.length}` });
    return;
  }
  const at = actual.compare(expected) === 0 ? -1 : firstDifference(actual, expected);
  if (at < 0) return;
  const slotCount = expected.readUInt32LE(24);
  const entriesAt = keyIndexHeaderBytes + slotCount * 4;
  if (at < keyIndexHeaderBytes) {
    let name = 'header';
    for (const [from, field] of kixHeaderFields) if (at >= from) name = field;
    faults.push({ file, position: at, what: `header field ${name} differs from the one the log gives` });
  } else if (at < entriesAt) {
    const slot = (at - keyIndexHeaderBytes) >> 2;
    const s = keyIndexHeaderBytes + slot * 4;
    faults.push({ file, position: s, what: `slot ${slot} holds ${actual.readUInt32LE(s)}, the log gives ${expected.readUInt32LE(s)}` });
  } else {
    const entry = Math.floor((at - entriesAt) / keyIndexEntryBytes);
    const field = ((at - entriesAt) % keyIndexEntryBytes) >> 2;
    const f = entriesAt + entry * keyIndexEntryBytes + field * 4;
    faults.push({ file, position: f, what: `entry ${entry} ${kixEntryFields[field]} is ${actual.readUInt32LE(f)}, the log gives ${expected.readUInt32LE(f)}` });
  }
}

function firstDifference(a: Buffer, b: Buffer): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}
