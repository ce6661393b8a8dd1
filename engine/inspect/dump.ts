/**
 * dump: every record of a segment, a channel, a topic or a store, one item per record, with
 * its batch's checksum status; or the entries of index files (.kix, .oix, .tix).
 *
 * Dump never stops at damage: a batch whose checksum fails is still decoded when it can be
 * (its records are marked BAD), and after a corrupt header the walk resyncs on the next good
 * batch (walk.ts); the damaged range is one `damage` item. Index files are parsed raw, with
 * only the bounds checks needed not to read past the file, so a corrupt one still shows.
 *
 * Items go to a callback one at a time (nothing is gathered); the callback returns false to
 * stop (a closed pipe).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { lz4Codec } from '../codec';
import { loadChecksum } from '../format/checksum';
import { msgIdToHex } from '../format/msg-id';
import { BatchFlag, decodeRecords, type BatchHeader, type StoredRecord } from '../format/record-batch';
import { keyIndexEntryBytes, keyIndexHeaderBytes, keyIndexMagic, keyIndexVersion } from '../index/key-index';
import { fileChecksum, indexHeaderBytesOf, indexVersion } from '../log/index-file';
import { offsetIndexMagic } from '../log/offset-index';
import { timeIndexMagic } from '../log/time-index';
import { describePath, indexExtensions, indexNamePattern, type ChannelRef } from './layout';
import { indexPath } from './segment-check';
import { walkSegment } from './walk';
import { storeFileVersion } from '../store-file';

export interface DumpOptions {
  /** Skip records (and index entries) with a lower offset. */
  from?: number;
  /** Stop after this many records (or index entries). */
  max?: number;
  /** Dump index files instead of records: the index file given, or those of the segments under the path. */
  index?: boolean;
}

interface Where {
  file: string;
  topic: string | null;
  channel: number | null;
}

export type DumpItem =
  | (Where & { type: 'segment'; baseOffset: number; bytes: number })
  | (Where & {
      type: 'record';
      position: number;
      offset: number;
      msgId: string;
      /** UTF-8 text; null when the record has no key. */
      key: string | null;
      /** Set instead of `key` text when the key is not valid UTF-8. */
      keyHex?: string;
      /** Producer time, ms. */
      timestamp: number;
      brokerTimestamp: number;
      deliverAt: number | null;
      headerCount: number;
      bodyBytes: number;
      checksum: 'ok' | 'BAD';
      compression: 'none' | 'lz4';
      control: boolean;
    })
  | (Where & { type: 'damage'; position: number; bytes: number; torn: boolean; reason: string })
  | { type: 'index'; file: string; kind: 'kix' | 'oix' | 'tix'; magic: string; version: number; baseOffset: number; entryCount: number; fileBytes: number; logBytes?: number | null; baseTimestamp?: number; slotCount?: number; slotsUsed?: number; problem: string | null }
  | { type: 'kix-entry'; file: string; entry: number; keyHash: string; position: number; offset: number; timestamp: number; prevEntry: number | null }
  | { type: 'oix-entry'; file: string; entry: number; offset: number; position: number }
  | { type: 'tix-entry'; file: string; entry: number; timestamp: number; offset: number };

export interface DumpSummary {
  segments: number;
  batches: number;
  badBatches: number;
  records: number;
  damagedRanges: number;
  indexFiles: number;
  indexEntries: number;
  /** True when the callback asked to stop or --max was reached. */
  stopped: boolean;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

class Stop extends Error {}

export async function dumpPath(target: string, options: DumpOptions, write: (item: DumpItem) => boolean | void): Promise<DumpSummary> {
  await loadChecksum();
  const layout = describePath(target);
  // As verify and repair: a store of a format this build does not know is refused, not misread
  // (a build of format 3 dumped a format-4 store and said every segment's end was damage).
  if (layout.storeDir) storeFileVersion(layout.storeDir);
  const summary: DumpSummary = { segments: 0, batches: 0, badBatches: 0, records: 0, damagedRanges: 0, indexFiles: 0, indexEntries: 0, stopped: false };
  const from = options.from ?? 0;
  const max = options.max ?? Infinity;
  const emit = (item: DumpItem): void => {
    if (write(item) === false) throw new Stop();
  };
  try {
    if (layout.kind === 'index') {
      dumpIndexFile(path.resolve(target), from, max, emit, summary);
      return summary;
    }
    for (const channel of layout.channels) {
      const segments = channel.only ? [channel.only] : channel.segments;
      segments.forEach((s, i) => {
        // A segment whose successor starts at or before `from` holds nothing wanted.
        const next = segments[i + 1];
        if (next && next.baseOffset <= from) return;
        if (options.index) {
          for (const ext of indexExtensions) {
            const file = indexPath(s.file, ext);
            if (fs.existsSync(file)) dumpIndexFile(file, from, max, emit, summary);
          }
        } else {
          dumpSegment(channel, s.file, from, max, emit, summary);
        }
      });
    }
  } catch (err) {
    if (!(err instanceof Stop)) throw err;
    summary.stopped = true;
  }
  return summary;
}

function dumpSegment(channel: ChannelRef, file: string, from: number, max: number, emit: (item: DumpItem) => void, summary: DumpSummary): void {
  const where: Where = { file, topic: channel.topic, channel: channel.channel };
  const fd = fs.openSync(file, 'r');
  try {
    const bytes = fs.fstatSync(fd).size;
    summary.segments++;
    emit({ type: 'segment', ...where, baseOffset: Number(path.basename(file).slice(0, 20)), bytes });
    for (const event of walkSegment(fd)) {
      if (event.kind === 'damage') {
        summary.damagedRanges++;
        // A batch whose checksum fails may still decode: show its records, marked BAD.
        const decoded = event.header && event.batchBytes ? tryDecode(event.batchBytes, event.header) : null;
        const reason = decoded && !decoded.ok ? `${event.reason}; its records do not decode (${decoded.error})` : event.reason;
        emit({ type: 'damage', ...where, position: event.position, bytes: event.bytes, torn: event.torn, reason });
        if (event.header && decoded) {
          summary.badBatches++;
          if (decoded.ok) emitRecords(where, event.position, event.header, decoded.records, 'BAD', from, max, emit, summary);
        }
        continue;
      }
      summary.batches++;
      if (event.header.baseOffset + event.header.recordCount <= from) continue;
      const decoded = tryDecode(event.bytes, event.header);
      if (!decoded.ok) {
        // The checksum holds but the records do not parse: the writer made it so.
        summary.damagedRanges++;
        emit({ type: 'damage', ...where, position: event.position, bytes: event.header.batchLength, torn: false, reason: `checksum holds but the records do not decode: ${decoded.error}` });
        continue;
      }
      emitRecords(where, event.position, event.header, decoded.records, 'ok', from, max, emit, summary);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function tryDecode(bytes: Buffer, header: BatchHeader): { ok: true; records: StoredRecord[] } | { ok: false; error: string } {
  try {
    return { ok: true, records: decodeRecords(bytes, 0, header, lz4Codec) };
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
}

function emitRecords(where: Where, position: number, header: BatchHeader, records: StoredRecord[], checksum: 'ok' | 'BAD', from: number, max: number, emit: (item: DumpItem) => void, summary: DumpSummary): void {
  const compression = (header.flags & BatchFlag.compressionMask) === 0 ? 'none' : 'lz4';
  const control = (header.flags & BatchFlag.control) !== 0;
  for (const r of records) {
    if (r.offset < from) continue;
    if (summary.records >= max) throw new Stop();
    summary.records++;
    let key: string | null = null;
    let keyHex: string | undefined;
    if (r.key) {
      try {
        key = utf8.decode(r.key);
      } catch {
        keyHex = Buffer.from(r.key).toString('hex');
      }
    }
    emit({
      type: 'record',
      ...where,
      position,
      offset: r.offset,
      msgId: msgIdToHex(r.msgId),
      key,
      ...(keyHex !== undefined ? { keyHex } : {}),
      timestamp: r.timestamp,
      brokerTimestamp: header.brokerTimestamp,
      deliverAt: r.deliverAt,
      headerCount: r.headers.length,
      bodyBytes: r.body.length,
      checksum,
      compression,
      control,
    });
  }
}

/** Dumps a .kix, .oix or .tix file raw: the header as found, then every entry that fits in the file. */
export function dumpIndexFile(file: string, from: number, max: number, emit: (item: DumpItem) => void, summary: DumpSummary): void {
  const m = indexNamePattern.exec(path.basename(file));
  const kind = (m ? m[2] : path.extname(file).slice(1)) as 'kix' | 'oix' | 'tix';
  const bytes = fs.readFileSync(file);
  summary.indexFiles++;
  const headerBytes = kind === 'kix' ? keyIndexHeaderBytes : indexHeaderBytesOf(bytes.length > 4 ? bytes.readUInt8(4) : indexVersion);
  if (bytes.length < headerBytes) {
    emit({ type: 'index', file, kind, magic: bytes.toString('latin1', 0, Math.min(4, bytes.length)), version: -1, baseOffset: -1, entryCount: 0, fileBytes: bytes.length, problem: `${bytes.length} bytes, shorter than the ${headerBytes}-byte header` });
    return;
  }
  const magic = bytes.toString('latin1', 0, 4);
  const version = bytes.readUInt8(4);
  // Said, not fatal: the rest is dumped as a file of the known layout would be read.
  const expectedMagic = { kix: keyIndexMagic, oix: offsetIndexMagic, tix: timeIndexMagic }[kind];
  const newest = kind === 'kix' ? keyIndexVersion : indexVersion;
  const headerProblem =
    magic !== expectedMagic
      ? `magic ${JSON.stringify(magic)}, expected ${expectedMagic}`
      : version < 1 || version > newest
        ? `version ${version}, not one this build reads (1..${newest}): the fields below may mean something else`
        : null;
  // A 64-bit field past 2^53 (a damaged header) is shown rounded, as a JSON number must be,
  // and its exact value is said in the problem.
  const unsafe: string[] = [];
  const field64 = (name: string, value: bigint): number => {
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) unsafe.push(`${name} is ${value}, past 2^53 (shown rounded)`);
    return Number(value);
  };
  // The file's checksum, as open and verify check it (a flipped byte showed no problem here,
  // while verify said "checksum mismatch": helper-59). Only for a header this build reads.
  const checksumAt = kind === 'kix' ? 32 : 24;
  const checksumProblem = headerProblem === null && bytes.length >= checksumAt + 8 && fileChecksum(bytes, checksumAt) !== bytes.readBigUInt64LE(checksumAt) ? 'checksum mismatch (open and repair rebuild this file from the log)' : null;
  const problems = (sizeProblem: string | null): string | null => [headerProblem, checksumProblem, ...unsafe, sizeProblem].filter((p) => p !== null).join('; ') || null;
  const baseOffset = field64('baseOffset', bytes.readBigInt64LE(8));
  // The log size the index was built for: not in version 1 files.
  const logBytes = version === 1 ? null : field64('logBytes', bytes.readBigUInt64LE(kind === 'kix' ? 40 : 32));
  const roomFor = (): void => {
    if (summary.indexEntries >= max) throw new Stop();
  };
  if (kind === 'kix') {
    const baseTimestamp = field64('baseTimestamp', bytes.readBigInt64LE(16));
    const slotCount = bytes.readUInt32LE(24);
    const entryCount = bytes.readUInt32LE(28);
    const slotsEnd = keyIndexHeaderBytes + slotCount * 4;
    const fits = slotsEnd <= bytes.length ? Math.floor((bytes.length - slotsEnd) / keyIndexEntryBytes) : 0;
    let slotsUsed = 0;
    for (let s = 0; s < slotCount && keyIndexHeaderBytes + s * 4 + 4 <= bytes.length; s++) if (bytes.readUInt32LE(keyIndexHeaderBytes + s * 4) !== 0) slotsUsed++;
    const expected = slotsEnd + entryCount * keyIndexEntryBytes;
    const problem = problems(expected !== bytes.length ? `${bytes.length} bytes, the header's ${slotCount} slots and ${entryCount} entries need ${expected}` : null);
    emit({ type: 'index', file, kind, magic, version, baseOffset, entryCount, fileBytes: bytes.length, logBytes, baseTimestamp, slotCount, slotsUsed, problem });
    for (let i = 0; i < Math.min(entryCount, fits); i++) {
      const at = slotsEnd + i * keyIndexEntryBytes;
      const offset = baseOffset + bytes.readUInt32LE(at + 8);
      if (offset < from) continue;
      roomFor();
      summary.indexEntries++;
      const prev = bytes.readUInt32LE(at + 16);
      emit({
        type: 'kix-entry',
        file,
        entry: i,
        keyHash: bytes.readUInt32LE(at).toString(16).padStart(8, '0'),
        position: bytes.readUInt32LE(at + 4),
        offset,
        timestamp: baseTimestamp + bytes.readUInt32LE(at + 12),
        prevEntry: prev === 0 ? null : prev - 1,
      });
    }
    return;
  }
  const entryCount = bytes.readUInt32LE(16);
  const entryBytes = bytes.readUInt32LE(20);
  const want = kind === 'oix' ? 8 : 12;
  const fits = entryBytes === want ? Math.floor((bytes.length - headerBytes) / want) : 0;
  const problem = problems(
    entryBytes !== want
      ? `entry size ${entryBytes}, expected ${want}`
      : bytes.length !== headerBytes + entryCount * want
        ? `${bytes.length} bytes for ${entryCount} entries of ${want}`
        : null,
  );
  emit({ type: 'index', file, kind, magic, version, baseOffset, entryCount, fileBytes: bytes.length, logBytes, problem });
  for (let i = 0; i < Math.min(entryCount, fits); i++) {
    const at = headerBytes + i * want;
    if (kind === 'oix') {
      const offset = baseOffset + bytes.readUInt32LE(at);
      if (offset < from) continue;
      roomFor();
      summary.indexEntries++;
      emit({ type: 'oix-entry', file, entry: i, offset, position: bytes.readUInt32LE(at + 4) });
    } else {
      const offset = baseOffset + bytes.readUInt32LE(at + 8);
      if (offset < from) continue;
      roomFor();
      summary.indexEntries++;
      emit({ type: 'tix-entry', file, entry: i, timestamp: Number(bytes.readBigInt64LE(at)), offset });
    }
  }
}
