/**
 * Messages as users see them, decoded from the record batches a broker pushes. Every batch's
 * checksum is verified here: the same xxh64 the producer computed, end to end.
 *
 * The records are parsed straight into Message objects (the record layout is in
 * engine/FORMAT.md; engine/format/record-batch.ts readRecord is the reference reader, and
 * this one checks the same things: every length against the record's end, attribute bits,
 * offset deltas, header count, no bytes left over). It does not go through decodeRecords:
 * at a million messages a second its per-record objects (a Reader, a StoredRecord, a
 * headers array, msgId and body views) were most of a consumer's CPU and garbage.
 */
import { WaymarkError } from '../engine/format/errors';
import { formatLimits } from '../engine/format/limits';
import { msgIdBytes, msgIdToHex } from '../engine/format/msg-id';
import { checksumHolds, probeHeader, recordsSection, RecordAttr, type BatchHeader } from '../engine/format/record-batch';
import { nodeCodec } from './codec';

export interface Message {
  topic: string;
  channel: number;
  offset: number;
  /** 32 hex digits. */
  msgId: string;
  key: string | null;
  headers: Record<string, string>;
  body: Uint8Array;
  /** Producer time, ms. */
  timestamp: number;
  /** Broker append time, ms. */
  brokerTimestamp: number;
  deliverAt: number | null;
}

const decoder = new TextDecoder();

export interface DecodedBatch {
  header: BatchHeader;
  bytes: number;
  messages: Message[];
}

type NodeBufferLike = Uint8Array & { toString(encoding: string, start?: number, end?: number): string };
// In Node a push arrives as a Buffer, and views of a Buffer are Buffers (each a costly
// FastBuffer): records are parsed from a plain Uint8Array over the same memory, and only a
// body is handed out as a Buffer, as before (Message.body is a Uint8Array either way).
const NodeBuffer = (globalThis as { Buffer?: { from(b: ArrayBufferLike, offset: number, length: number): NodeBufferLike } }).Buffer;
// The class of Node's Buffers (what Buffer.from and a Buffer's subarray make, found as
// Buffer[Symbol.species]): made directly, a body skips Buffer.from's argument checks — a
// tenth of the cost of decoding a 100-byte message.
const BufferClass = (NodeBuffer as unknown as { [Symbol.species]?: new (b: ArrayBufferLike, offset: number, length: number) => Uint8Array } | undefined)?.[Symbol.species];

function bodyView(section: Uint8Array, start: number, length: number): Uint8Array {
  return BufferClass ? new BufferClass(section.buffer, section.byteOffset + start, length) : section.subarray(start, start + length);
}

let hexScratch: Uint8Array | null = null;

/** The msgIds at these positions of `section` as one string of 32 hex digits each (one native call in Node). */
function msgIdsHex(section: Uint8Array, positions: readonly number[]): string {
  if (!NodeBuffer) {
    let out = '';
    for (const at of positions) out += msgIdToHex(section.subarray(at, at + msgIdBytes));
    return out;
  }
  const bytes = positions.length * msgIdBytes;
  if (!hexScratch || hexScratch.length < bytes) hexScratch = new Uint8Array(Math.max(bytes, 16 * 1024));
  const scratch = hexScratch;
  for (let i = 0; i < positions.length; i++) {
    const from = positions[i]!;
    const to = i * msgIdBytes;
    for (let b = 0; b < msgIdBytes; b++) scratch[to + b] = section[from + b]!;
  }
  return NodeBuffer.from(scratch.buffer, scratch.byteOffset, bytes).toString('hex');
}

function corrupt(what: string): WaymarkError {
  return new WaymarkError('CORRUPT_BATCH', `corrupt record: ${what}`);
}

// The parser's cursor: decoding is synchronous, so one module-level position serves (no
// reader object per record).
let at = 0;

function varint(buf: Uint8Array, end: number): number {
  let result = 0;
  let multiplier = 1;
  for (let i = 0; i < 8; i++) {
    if (at >= end) throw corrupt('varint runs past the end');
    const byte = buf[at++]!;
    result += (byte & 0x7f) * multiplier;
    if (byte < 0x80) return result;
    multiplier *= 0x80;
  }
  throw corrupt('varint longer than 8 bytes');
}

function signedVarint(buf: Uint8Array, end: number): number {
  const value = varint(buf, end);
  return value % 2 === 0 ? value / 2 : -(value + 1) / 2;
}

/** Skips `length` bytes (checked against `end`); returns where they start. */
function skip(length: number, end: number): number {
  if (length < 0 || at + length > end) throw corrupt(`${length} bytes run past the end`);
  const start = at;
  at += length;
  return start;
}

/**
 * Decodes whole batches back to back, dropping records before `fromOffset`; throws
 * CORRUPT_BATCH at the first batch that fails. (A msgStream's packs; a consumer decodes a
 * push one batch at a time with decodeBatchAt.)
 */
export function decodeBatches(topic: string, channel: number, bytes: Uint8Array, fromOffset: number): DecodedBatch[] {
  const out: DecodedBatch[] = [];
  const plain = plainBytes(bytes);
  for (let pos = 0; pos < plain.length; ) {
    const batch = decodeBatchAt(topic, channel, plain, pos, fromOffset);
    out.push(batch);
    pos += batch.bytes;
  }
  return out;
}

/** `bytes` as a plain Uint8Array over the same memory (views of a Node Buffer are costly Buffers). */
export function plainBytes(bytes: Uint8Array): Uint8Array {
  return bytes.constructor === Uint8Array ? bytes : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * The one batch at byte `pos` of `plain` (a plainBytes view), checksum verified, its records
 * from `fromOffset` on; throws CORRUPT_BATCH when it fails. `bytes` of the result is the
 * batch's length: the next batch starts there.
 */
export function decodeBatchAt(topic: string, channel: number, plain: Uint8Array, pos: number, fromOffset: number): DecodedBatch {
  const probe = probeHeader(plain, pos);
  if (probe.kind !== 'ok') throw damaged(topic, channel, `the batch at byte ${pos} of a push (offset ${fromOffset} or later) is ${probe.kind === 'short' ? 'cut short' : probe.reason}`);
  const header = probe.header;
  if (!checksumHolds(plain, pos, header)) throw damaged(topic, channel, `the batch at offset ${header.baseOffset} fails its checksum`);
  const stored = recordsSection(plain, pos, header, nodeCodec());
  try {
    return { header, bytes: header.batchLength, messages: decodeMessages(topic, channel, plainBytes(stored), header, fromOffset) };
  } catch (err) {
    if (err instanceof WaymarkError && err.code === 'CORRUPT_BATCH') throw damaged(topic, channel, `the batch at offset ${header.baseOffset}: ${err.message}`);
    throw err;
  }
}

/** CORRUPT_BATCH naming where, and where to look: a consumer cannot tell a damaged copy on the broker's disk from damage on the way. */
function damaged(topic: string, channel: number, what: string): WaymarkError {
  return new WaymarkError('CORRUPT_BATCH', `topic ${topic} channel ${channel}: ${what}; the broker's copy may be damaged (waymark verify on its data folder lists what is)`);
}

/** The records of one batch's (decompressed) records section, from `fromOffset` on. */
function decodeMessages(topic: string, channel: number, section: Uint8Array, header: BatchHeader, fromOffset: number): Message[] {
  const messages: Message[] = [];
  const idPositions: number[] = [];
  const sectionEnd = section.length;
  const { baseOffset, firstTimestamp, brokerTimestamp, recordCount } = header;
  at = 0;
  for (let index = 0; index < recordCount; index++) {
    const size = varint(section, sectionEnd);
    const end = at + size;
    if (end > sectionEnd) throw new WaymarkError('CORRUPT_BATCH', `record ${index} runs past the records section`);
    const attributes = section[skip(1, end)]!;
    if ((attributes & ~RecordAttr.knownMask) !== 0) throw new WaymarkError('CORRUPT_BATCH', `record ${index}: unknown attribute bits`);
    const offsetDelta = varint(section, end);
    if (offsetDelta !== index) throw new WaymarkError('CORRUPT_BATCH', `record ${index} has offsetDelta ${offsetDelta}`);
    const offset = baseOffset + index;
    if (offset < fromOffset) {
      at = end; // before the asked offset: skipped whole (its checksum was verified with the batch)
      continue;
    }
    const timestamp = firstTimestamp + signedVarint(section, end);
    idPositions.push(skip(msgIdBytes, end));
    let key: string | null = null;
    if (attributes & RecordAttr.hasKey) {
      const length = varint(section, end);
      const start = skip(length, end);
      key = decoder.decode(section.subarray(start, start + length));
    }
    const headerCount = varint(section, end);
    if (headerCount > formatLimits.headerCountMax) throw new WaymarkError('CORRUPT_BATCH', `record ${index}: ${headerCount} headers`);
    const headers: Record<string, string> = {};
    for (let h = 0; h < headerCount; h++) {
      const nameLength = varint(section, end);
      const nameStart = skip(nameLength, end);
      const valueLength = varint(section, end);
      const valueStart = skip(valueLength, end);
      headers[decoder.decode(section.subarray(nameStart, nameStart + nameLength))] = decoder.decode(section.subarray(valueStart, valueStart + valueLength));
    }
    const deliverAt = attributes & RecordAttr.hasDeliverAt ? firstTimestamp + signedVarint(section, end) : null;
    const bodyLength = varint(section, end);
    const bodyStart = skip(bodyLength, end);
    if (at !== end) throw new WaymarkError('CORRUPT_BATCH', `record ${index}: ${end - at} trailing bytes`);
    messages.push({ topic, channel, offset, msgId: '', key, headers, body: bodyView(section, bodyStart, bodyLength), timestamp, brokerTimestamp, deliverAt });
  }
  if (at !== sectionEnd) throw new WaymarkError('CORRUPT_BATCH', `${sectionEnd - at} bytes left after ${recordCount} records`);
  if (messages.length > 0) {
    const hex = msgIdsHex(section, idPositions);
    // slice() of the batch's hex string is a view, not a copy (V8 sliced strings).
    for (let i = 0; i < messages.length; i++) messages[i]!.msgId = hex.slice(i * 32, i * 32 + 32);
  }
  return messages;
}
