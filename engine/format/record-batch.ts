/**
 * Record batches: the unit of write, storage and transfer (engine/FORMAT.md has the byte
 * table and a worked example). Pure code: no node:fs, no sockets; the SDK builds batches
 * with it and the broker appends them without re-encoding.
 *
 * Header, 64 bytes, little-endian:
 *   baseOffset(8) brokerTimestamp(8) checksum(8) | magic(1) version(1) flags(2)
 *   batchLength(4) producerId(8) producerSequence(4) recordCount(4) firstTimestamp(8)
 *   recordsLength(4) recordsLengthRaw(4) | records…
 * The checksum is xxh64 over [24, batchLength): everything except the two fields the
 * broker patches on append (baseOffset, brokerTimestamp) and the checksum itself.
 *
 * Invariants:
 * - batchLength = headerBytes + recordsLength (a flipped length field breaks this equality,
 *   so a reader tells a corrupt length from a torn tail);
 * - records are dense: record i has offsetDelta i;
 * - a checksum is computed on encode and verified on every decode from untrusted bytes.
 */
import { WaymarkError } from './errors';
import { formatLimits } from './limits';
import { xxh64 } from './checksum';
import { IndexKind, isTraceIdName, type IndexKeyRanges } from './index-kind';
import { msgIdBytes, MsgIdGenerator } from './msg-id';
import { Reader, varintSize, writeVarint, zigzag } from './varint';

export const batchMagic = 0x57; // 'W'
export const batchVersion = 1;
export const batchHeaderBytes = 64;
/** Bytes at the start of the header that the checksum does not cover. */
export const batchUncoveredBytes = 24;

export const BatchOffset = {
  baseOffset: 0,
  brokerTimestamp: 8,
  checksum: 16,
  magic: 24,
  version: 25,
  flags: 26,
  batchLength: 28,
  producerId: 32,
  producerSequence: 40,
  recordCount: 44,
  firstTimestamp: 48,
  recordsLength: 56,
  recordsLengthRaw: 60,
} as const;

export const BatchFlag = {
  /** bits 0..2: compression codec of the records section (Compression). */
  compressionMask: 0x0007,
  /** bit 3: a control batch (its records are broker markers, not user messages). */
  control: 0x0008,
  /** every other bit is reserved in version 1 and must be zero. */
  knownMask: 0x000f,
} as const;

export const Compression = { none: 0, lz4: 1 } as const;
export type CompressionId = (typeof Compression)[keyof typeof Compression];

/** Record attribute bits. */
export const RecordAttr = { hasKey: 0x01, hasDeliverAt: 0x02, knownMask: 0x03 } as const;

/** A compression codec; the engine supplies lz4 (lz4-napi). The SDK in a browser has none. */
export interface Codec {
  readonly id: CompressionId;
  compress(raw: Uint8Array): Uint8Array;
  decompress(stored: Uint8Array, rawLength: number): Uint8Array;
}

/** Records sections smaller than this are never compressed (lz4 cannot win much there). */
export const compressionBytesMin = 512;

export interface Header {
  readonly name: string;
  readonly value: Uint8Array;
}

export interface MessageInput {
  /** 16 bytes; made here when absent. */
  msgId?: Uint8Array;
  key?: string | Uint8Array | null;
  headers?: readonly Header[] | Record<string, string | Uint8Array>;
  body: string | Uint8Array;
  /** Producer time, ms; now when absent. */
  timestamp?: number;
  /** Deliver not before this Unix time in ms. */
  deliverAt?: number | null;
}

export interface BatchHeader {
  baseOffset: number;
  brokerTimestamp: number;
  checksum: bigint;
  flags: number;
  batchLength: number;
  producerId: number;
  producerSequence: number;
  recordCount: number;
  firstTimestamp: number;
  recordsLength: number;
  recordsLengthRaw: number;
}

export interface StoredRecord {
  offset: number;
  /** Producer timestamp, ms. */
  timestamp: number;
  msgId: Uint8Array;
  key: Uint8Array | null;
  headers: Header[];
  deliverAt: number | null;
  body: Uint8Array;
}

export interface EncodeOptions {
  producerId?: number;
  producerSequence?: number;
  control?: boolean;
  /** Compress the records section with this codec when that makes the batch smaller. */
  codec?: Codec | null;
  msgIds?: MsgIdGenerator;
  /** Every message already passed checkMessage (a producer checks each when it is handed over): not checked again. */
  checked?: boolean;
  /**
   * Also note where the records' index keys are as they are written (EncodedBatch.indexKeys):
   * the engine's own appends index from these instead of walking the records again.
   */
  indexKeys?: boolean;
  /**
   * Where the batch's bytes go: returns an array of exactly `bytes` bytes (a view into a
   * reused buffer, say) that encodeBatch fills completely, stale contents and all. Default: a
   * new zero-filled array. The engine lends its own (engine/batch-buffers.ts): a fresh 1 MiB
   * array costs its page faults on first write, a quarter of encoding 1,000 × 1 KiB messages.
   */
  allocate?: (bytes: number) => Uint8Array;
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();
const defaultIds = new MsgIdGenerator();

function toBytes(value: string | Uint8Array): Uint8Array {
  return typeof value === 'string' ? textEncoder.encode(value) : value;
}

/** UTF-8 length of a string without encoding it (keys and bodies are measured, then written in place). */
export function utf8Length(text: string): number {
  let length = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) length += 1;
    else if (c < 0x800) length += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        length += 4;
        i++;
      } else length += 3; // a lone surrogate becomes U+FFFD, 3 bytes
    } else length += 3;
  }
  return length;
}

/** Writes a string as UTF-8 at buf[pos..pos+length): a plain loop for ASCII, encodeInto otherwise. */
function writeUtf8(buf: Uint8Array, pos: number, text: string, length: number): void {
  if (length === text.length) {
    for (let i = 0; i < length; i++) buf[pos + i] = text.charCodeAt(i);
    return;
  }
  textEncoder.encodeInto(text, buf.subarray(pos, pos + length));
}

function lengthOf(value: string | Uint8Array): number {
  return typeof value === 'string' ? utf8Length(value) : value.length;
}

function writeValue(buf: Uint8Array, pos: number, value: string | Uint8Array, length: number): number {
  if (typeof value === 'string') writeUtf8(buf, pos, value, length);
  else buf.set(value, pos);
  return pos + length;
}

function normalizeHeaders(headers: MessageInput['headers']): Header[] {
  if (!headers) return noHeaders;
  if (Array.isArray(headers)) return headers as Header[];
  const out: Header[] = [];
  for (const [name, value] of Object.entries(headers)) out.push({ name, value: toBytes(value) });
  return out;
}

const noHeaders: Header[] = [];

/** A message's headers, names encoded: kept between the two passes only for messages that have any. */
interface PreparedHeaders {
  names: Uint8Array[];
  headers: Header[];
}

/**
 * Checks one message against the per-message limits (body, key, headers, msgId, times) and
 * throws the typed error encodeBatch would, without encoding anything. A producer calls it
 * when a message is handed over, so that a bad message fails alone instead of failing the
 * batch it would have joined. `index` names the message in the error ("message 3: …").
 */
export function checkMessage(message: MessageInput, index?: number): void {
  checkTypes(message, index);
  checkLimits(message, lengthOf(message.body), message.key == null ? -1 : lengthOf(message.key), index);
}

/** checkMessage after checkTypes, with the body's and key's lengths (-1: no key) measured by the caller. */
function checkLimits(message: MessageInput, bodyLength: number, keyLength: number, index: number | undefined): void {
  if (bodyLength > formatLimits.messageBytesMax) {
    throw new WaymarkError('MESSAGE_TOO_LARGE', `${messagePrefix(index)}body is ${bodyLength} bytes, the limit is ${formatLimits.messageBytesMax}`);
  }
  if (keyLength > formatLimits.keyBytesMax) {
    throw new WaymarkError('KEY_TOO_LARGE', `${messagePrefix(index)}key is ${keyLength} bytes, the limit is ${formatLimits.keyBytesMax}`);
  }
  const msgId = message.msgId;
  if (msgId && msgId.length !== msgIdBytes) {
    throw new WaymarkError('INVALID_ARGUMENT', `${messagePrefix(index)}msgId must be ${msgIdBytes} bytes, got ${msgId.length}`);
  }
  const timestamp = message.timestamp;
  if (timestamp !== undefined && (!Number.isSafeInteger(timestamp) || timestamp < 0)) throw new WaymarkError('INVALID_ARGUMENT', `${messagePrefix(index)}bad timestamp`);
  const deliverAt = message.deliverAt ?? null;
  if (deliverAt !== null && (!Number.isSafeInteger(deliverAt) || deliverAt < 0)) {
    throw new WaymarkError('INVALID_ARGUMENT', `${messagePrefix(index)}bad deliverAt`);
  }
  const headers = message.headers;
  if (!headers) return;
  let headerCount = 0;
  let headerBytes = 0;
  if (Array.isArray(headers)) {
    for (const header of headers as readonly Header[]) {
      headerCount++;
      headerBytes += utf8Length(header.name) + header.value.length;
    }
  } else {
    for (const name of Object.keys(headers)) {
      headerCount++;
      headerBytes += utf8Length(name) + lengthOf((headers as Record<string, string | Uint8Array>)[name]!);
    }
  }
  if (headerCount > formatLimits.headerCountMax) {
    throw new WaymarkError('HEADERS_TOO_LARGE', `${messagePrefix(index)}${headerCount} headers, the limit is ${formatLimits.headerCountMax}`);
  }
  if (headerBytes > formatLimits.headersBytesMax) {
    throw new WaymarkError('HEADERS_TOO_LARGE', `${messagePrefix(index)}headers are ${headerBytes} bytes, the limit is ${formatLimits.headersBytesMax}`);
  }
}

function isBytes(value: unknown): value is Uint8Array {
  return value instanceof Uint8Array;
}

function isText(value: unknown): value is string | Uint8Array {
  return typeof value === 'string' || value instanceof Uint8Array;
}

/**
 * The shape of a message as JavaScript hands it over (a number where a string goes, an
 * object body from JSON): refused here, typed, before anything is measured or queued. Unchecked,
 * a header value 3 made a producer's byte count NaN, and every later send waited for room
 * for ever.
 */
function checkTypes(message: MessageInput, index: number | undefined): void {
  if (typeof message !== 'object' || message === null) throw wrongType(index, `a message is an object with a body, not ${message === null ? 'null' : typeof message}`);
  if (!isText(message.body)) throw wrongType(index, `body must be a string or a Uint8Array, not ${describeType(message.body)}`);
  if (message.key != null && !isText(message.key)) throw wrongType(index, `key must be a string, a Uint8Array or null, not ${describeType(message.key)}`);
  if (message.msgId !== undefined && !isBytes(message.msgId)) throw wrongType(index, `msgId must be a Uint8Array of ${msgIdBytes} bytes, not ${describeType(message.msgId)}`);
  const headers = message.headers;
  if (headers == null) return;
  if (Array.isArray(headers)) {
    for (const header of headers as unknown[]) {
      const h = header as Partial<Header> | null;
      if (typeof h !== 'object' || h === null || typeof h.name !== 'string' || !isBytes(h.value)) throw wrongType(index, 'headers as an array hold {name: string, value: Uint8Array} objects');
    }
  } else if (typeof headers === 'object') {
    for (const name of Object.keys(headers)) {
      const value = (headers as Record<string, unknown>)[name];
      if (!isText(value)) throw wrongType(index, `header ${JSON.stringify(name)} must be a string or a Uint8Array, not ${describeType(value)}`);
    }
  } else {
    throw wrongType(index, `headers must be an object of strings, not ${describeType(headers)}`);
  }
}

function wrongType(index: number | undefined, what: string): WaymarkError {
  return new WaymarkError('INVALID_ARGUMENT', `${messagePrefix(index)}${what}`);
}

/** What a value is, for an error message: null, undefined (absent), an array, an object, a string, … */
export function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined (absent)';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

function newBytes(bytes: number): Uint8Array {
  return new Uint8Array(bytes);
}

/** Batches from this many messages up are prefetched (prefetch()). */
const prefetchCountMin = 64;
/** Where prefetch() leaves what it read, so that the reads cannot be optimised away. */
let prefetchSink = 0;

/**
 * Reads each message's object, key and body once, in a loop tight enough that the CPU has
 * many of those reads in flight at a time, before the passes that need them one message at a
 * time. A batch's messages are cold when it is encoded (a producer gathered them over
 * milliseconds; the store waited on a write meanwhile) and each pass over a message chases
 * message → body → bytes; one cache miss after another, that was most of encoding's time.
 */
function prefetch(messages: readonly MessageInput[]): void {
  let sink = 0;
  for (let i = 0; i < messages.length; i++) {
    const message = messages[i]!;
    const body = message.body;
    const key = message.key;
    if (typeof body !== 'string' && body.length > 0) sink ^= body[0]! ^ body[body.length - 1]!;
    if (typeof key === 'string') sink ^= key.length;
  }
  prefetchSink ^= sink;
}

let lanesScratch = new Int32Array(4 * 1024);

/** encodeBatch's per-message scratch, four lanes for `count` messages. */
function laneScratch(count: number): Int32Array {
  if (lanesScratch.length < 4 * count) lanesScratch = new Int32Array(4 * count);
  return lanesScratch;
}

/** "message 3: " for an error about one message of several; "" for a message on its own. Made only when an error is thrown. */
export function messagePrefix(index: number | undefined): string {
  return index === undefined ? '' : `message ${index}: `;
}

/**
 * Encodes messages into one batch with baseOffset 0 and brokerTimestamp 0 (the broker
 * patches both on append). Returns the batch and its msgIds: `packedMsgIds` back to back
 * (16 bytes per record, in record order) and, made on first use, `msgIds` as views.
 *
 * Two passes over the messages — measure and check, then write — with the per-message
 * numbers in typed arrays: a producer encodes every message it sends, and per-message
 * objects here were a large share of its garbage.
 */
export function encodeBatch(messages: readonly MessageInput[], options: EncodeOptions = {}): EncodedBatch {
  const count = messages.length;
  if (count === 0) throw new WaymarkError('INVALID_ARGUMENT', 'a batch needs at least one message');
  if (count > formatLimits.batchRecordCountMax) {
    throw new WaymarkError('BATCH_TOO_LARGE', `${count} messages in one batch, the limit is ${formatLimits.batchRecordCountMax}`);
  }
  const ids = options.msgIds ?? defaultIds;
  const firstTimestamp = messages[0]!.timestamp ?? Date.now();
  // Per message: record size, body length, key length (-1: no key), where the body goes: four
  // lanes of one scratch array shared by every call (encodeBatch never runs inside itself): a
  // producer at 10,000 msg/s seals a batch of one to three messages every turn, and typed
  // arrays per batch were a tenth of its garbage.
  const lanes = laneScratch(count);
  if (count >= prefetchCountMin) prefetch(messages);
  let withHeaders: Array<PreparedHeaders | undefined> | null = null;
  let rawLength = 0;
  let indexEntries = count; // a msgId each, and a key or a traceid header where there is one
  for (let i = 0; i < count; i++) {
    const message = messages[i]!;
    if (!options.checked) checkTypes(message, i);
    const bodyLength = lengthOf(message.body);
    const keyLength = message.key == null ? -1 : lengthOf(message.key);
    if (!options.checked) checkLimits(message, bodyLength, keyLength, i);
    const timestamp = message.timestamp ?? firstTimestamp;
    const deliverAt = message.deliverAt ?? null;
    let size = 1 + varintSize(i) + varintSize(zigzag(timestamp - firstTimestamp)) + msgIdBytes;
    if (keyLength >= 0) {
      size += varintSize(keyLength) + keyLength;
      indexEntries++;
    }
    const headers = normalizeHeaders(message.headers);
    size += varintSize(headers.length);
    if (headers.length > 0) {
      const names: Uint8Array[] = [];
      let traceId = false;
      for (const header of headers) {
        const name = textEncoder.encode(header.name); // header names are few and short
        names.push(name);
        if (!traceId && isTraceIdName(name, 0, name.length)) traceId = true;
        size += varintSize(name.length) + name.length + varintSize(header.value.length) + header.value.length;
      }
      (withHeaders ??= new Array(count))[i] = { names, headers };
      if (traceId) indexEntries++;
    }
    if (deliverAt !== null) size += varintSize(zigzag(deliverAt - firstTimestamp));
    size += varintSize(bodyLength) + bodyLength;
    lanes[4 * i] = size;
    lanes[4 * i + 1] = bodyLength;
    lanes[4 * i + 2] = keyLength;
    rawLength += varintSize(size) + size;
  }
  if (batchHeaderBytes + rawLength > formatLimits.batchBytesMax) {
    throw new WaymarkError('BATCH_TOO_LARGE', `batch would be ${batchHeaderBytes + rawLength} bytes, the limit is ${formatLimits.batchBytesMax}`);
  }

  const allocate = options.allocate ?? newBytes;
  const raw = allocate(batchHeaderBytes + rawLength);
  const msgIdBytesPacked = new Uint8Array(count * msgIdBytes);
  const keyRanges = options.indexKeys ? new Uint32Array(3 * indexEntries) : null;
  let ranged = 0;
  const idTime = Date.now();
  let pos = batchHeaderBytes;
  for (let i = 0; i < count; i++) {
    const message = messages[i]!;
    const size = lanes[4 * i]!;
    pos = writeVarint(raw, pos, size);
    const recordStart = pos;
    const keyLength = lanes[4 * i + 2]!;
    const deliverAt = message.deliverAt ?? null;
    raw[pos++] = (keyLength >= 0 ? RecordAttr.hasKey : 0) | (deliverAt !== null ? RecordAttr.hasDeliverAt : 0);
    pos = writeVarint(raw, pos, i);
    pos = writeVarint(raw, pos, zigzag((message.timestamp ?? firstTimestamp) - firstTimestamp));
    // The id goes into the packed list and the record in one loop of byte stores (cheaper
    // than a subarray and a TypedArray.set per message).
    const packedAt = i * msgIdBytes;
    const given = message.msgId;
    if (given) {
      for (let b = 0; b < msgIdBytes; b++) {
        const byte = given[b]!;
        msgIdBytesPacked[packedAt + b] = byte;
        raw[pos + b] = byte;
      }
    } else {
      ids.writeNextTwice(msgIdBytesPacked, packedAt, raw, pos, idTime);
    }
    if (keyRanges) {
      keyRanges[ranged++] = 4 * i + IndexKind.msgId;
      keyRanges[ranged++] = pos;
      keyRanges[ranged++] = pos + msgIdBytes;
    }
    pos += msgIdBytes;
    if (keyLength >= 0) {
      pos = writeVarint(raw, pos, keyLength);
      const keyAt = pos;
      pos = writeValue(raw, pos, message.key!, keyLength);
      if (keyRanges) {
        keyRanges[ranged++] = 4 * i + IndexKind.key;
        keyRanges[ranged++] = keyAt;
        keyRanges[ranged++] = pos;
      }
    }
    const prepared = withHeaders?.[i];
    if (prepared) {
      pos = writeVarint(raw, pos, prepared.headers.length);
      let traceId = false;
      for (let h = 0; h < prepared.headers.length; h++) {
        const name = prepared.names[h]!;
        const value = prepared.headers[h]!.value;
        pos = writeVarint(raw, pos, name.length);
        raw.set(name, pos);
        pos += name.length;
        pos = writeVarint(raw, pos, value.length);
        raw.set(value, pos);
        if (keyRanges && !traceId && isTraceIdName(name, 0, name.length)) {
          traceId = true; // the first one only, as the walk does
          keyRanges[ranged++] = 4 * i + IndexKind.traceId;
          keyRanges[ranged++] = pos;
          keyRanges[ranged++] = pos + value.length;
        }
        pos += value.length;
      }
    } else {
      raw[pos++] = 0; // no headers
    }
    if (deliverAt !== null) pos = writeVarint(raw, pos, zigzag(deliverAt - firstTimestamp));
    const bodyLength = lanes[4 * i + 1]!;
    pos = writeVarint(raw, pos, bodyLength);
    lanes[4 * i + 3] = pos; // the body is copied by the loop below
    pos += bodyLength;
    if (pos - recordStart !== size) throw new Error(`encodeBatch: record ${i} size ${pos - recordStart} != ${size}`);
  }
  // The bodies last, in a loop of their own: with nothing else between the copies, the CPU
  // keeps many of their cache misses in flight. Copied inside the loop above, between the
  // record headers, 1,000 bodies of 1 KiB took 0.27 ms a batch in store.append; alone, 0.18
  // (BENCHMARKS.md, session 20).
  for (let i = 0; i < count; i++) writeValue(raw, lanes[4 * i + 3]!, messages[i]!.body, lanes[4 * i + 1]!);
  if (pos !== raw.length) throw new Error('encodeBatch: records section length mismatch');
  if (keyRanges && ranged !== keyRanges.length) throw new Error('encodeBatch: index key count mismatch');

  let batch = raw;
  let compression: CompressionId = Compression.none;
  const codec = options.codec;
  if (codec && rawLength >= compressionBytesMin && worthCompressing(codec, raw.subarray(batchHeaderBytes))) {
    const compressed = codec.compress(raw.subarray(batchHeaderBytes));
    if (compressed.length <= rawLength - rawLength / compressionGainMin) {
      batch = allocate(batchHeaderBytes + compressed.length);
      batch.set(compressed, batchHeaderBytes);
      compression = codec.id;
    }
  }
  const flags = compression | (options.control ? BatchFlag.control : 0);
  writeHeader(batch, {
    flags,
    producerId: options.producerId ?? -1,
    producerSequence: options.producerSequence ?? -1,
    recordCount: count,
    firstTimestamp,
    recordsLength: batch.length - batchHeaderBytes,
    recordsLengthRaw: rawLength,
  });
  return new EncodedBatch(batch, msgIdBytesPacked, keyRanges ? { bytes: raw, entries: keyRanges } : null);
}


/** encodeBatch's result. */
export class EncodedBatch {
  private views: Uint8Array[] | null = null;
  constructor(
    readonly batch: Uint8Array,
    /** The records' msgIds, 16 bytes each, back to back in record order. */
    readonly packedMsgIds: Uint8Array,
    /** Where the records' index keys are (with EncodeOptions.indexKeys), else null. */
    readonly indexKeys: IndexKeyRanges | null = null,
  ) {}

  /** The msgIds as one 16-byte view each (made on first use). */
  get msgIds(): Uint8Array[] {
    if (!this.views) {
      const views: Uint8Array[] = new Array(this.packedMsgIds.length / msgIdBytes);
      for (let i = 0; i < views.length; i++) views[i] = this.packedMsgIds.subarray(i * msgIdBytes, (i + 1) * msgIdBytes);
      this.views = views;
    }
    return this.views;
  }
}

/**
 * Compression is kept only when it saves at least 1/compressionGainMin of the section:
 * every reader (indexing, fetch, lookup) pays to decompress, so a 1 % gain is a loss.
 * A sample decides first, so incompressible data costs one small compress, not a whole one.
 */
export const compressionGainMin = 8;
const compressionSampleBytes = 4096;

function worthCompressing(codec: Codec, section: Uint8Array): boolean {
  if (section.length <= compressionSampleBytes * 2) return true;
  const sample = section.subarray(0, compressionSampleBytes);
  return codec.compress(sample).length <= compressionSampleBytes - compressionSampleBytes / compressionGainMin;
}

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

function writeHeader(
  batch: Uint8Array,
  h: { flags: number; producerId: number; producerSequence: number; recordCount: number; firstTimestamp: number; recordsLength: number; recordsLengthRaw: number },
): void {
  // Byte stores, not a DataView and three BigInts: a producer writes one header per batch.
  writeInt64(batch, BatchOffset.baseOffset, 0);
  writeInt64(batch, BatchOffset.brokerTimestamp, 0);
  batch[BatchOffset.magic] = batchMagic;
  batch[BatchOffset.version] = batchVersion;
  batch[BatchOffset.flags] = h.flags & 0xff;
  batch[BatchOffset.flags + 1] = (h.flags >>> 8) & 0xff;
  writeUint32(batch, BatchOffset.batchLength, batch.length);
  writeInt64(batch, BatchOffset.producerId, h.producerId);
  writeUint32(batch, BatchOffset.producerSequence, h.producerSequence >>> 0);
  writeUint32(batch, BatchOffset.recordCount, h.recordCount);
  writeInt64(batch, BatchOffset.firstTimestamp, h.firstTimestamp);
  writeUint32(batch, BatchOffset.recordsLength, h.recordsLength);
  writeUint32(batch, BatchOffset.recordsLengthRaw, h.recordsLengthRaw);
  view(batch).setBigUint64(BatchOffset.checksum, computeChecksum(batch), true);
}

/** Little-endian u32 (0 <= value < 2^32). */
function writeUint32(buf: Uint8Array, at: number, value: number): void {
  buf[at] = value & 0xff;
  buf[at + 1] = (value >>> 8) & 0xff;
  buf[at + 2] = (value >>> 16) & 0xff;
  buf[at + 3] = (value >>> 24) & 0xff;
}

/** Little-endian two's-complement i64 of a safe integer (negative ones too: -1 is eight 0xff). */
function writeInt64(buf: Uint8Array, at: number, value: number): void {
  const high = Math.floor(value / 0x1_0000_0000);
  writeUint32(buf, at, value - high * 0x1_0000_0000);
  writeUint32(buf, at + 4, high >>> 0);
}

export function computeChecksum(batch: Uint8Array): bigint {
  return xxh64(batch.subarray(batchUncoveredBytes, view(batch).getUint32(BatchOffset.batchLength, true)));
}

/** Sets the two broker-assigned fields in place (outside the checksum: no re-encoding). */
export function patchBatch(batch: Uint8Array, baseOffset: number, brokerTimestamp: number): void {
  writeInt64(batch, BatchOffset.baseOffset, baseOffset);
  writeInt64(batch, BatchOffset.brokerTimestamp, brokerTimestamp);
}

/** Outcome of looking at the bytes at a position where a batch should start. */
export type HeaderProbe =
  | { kind: 'ok'; header: BatchHeader }
  /** Fewer bytes remain than the header or the declared length needs: a torn tail if at the end. */
  | { kind: 'short'; needBytes: number }
  /** The header itself is inconsistent: corruption, not a torn write. */
  | { kind: 'corrupt'; reason: string };

/**
 * Reads and sanity-checks a batch header at `pos` without verifying the checksum. Never
 * throws on bad bytes: the caller decides whether they are a torn tail or corruption.
 */
export function probeHeader(buf: Uint8Array, pos: number, end: number = buf.length): HeaderProbe {
  if (end - pos < batchHeaderBytes) return { kind: 'short', needBytes: batchHeaderBytes };
  // Byte loads, not a DataView and five BigInts: every produce, push and lookup probes headers.
  const magic = buf[pos + BatchOffset.magic]!;
  if (magic !== batchMagic) return { kind: 'corrupt', reason: `bad magic 0x${magic.toString(16)}` };
  const version = buf[pos + BatchOffset.version]!;
  if (version !== batchVersion) return { kind: 'corrupt', reason: `unknown batch version ${version}` };
  const flags = buf[pos + BatchOffset.flags]! | (buf[pos + BatchOffset.flags + 1]! << 8);
  if ((flags & ~BatchFlag.knownMask) !== 0) return { kind: 'corrupt', reason: `unknown flag bits 0x${flags.toString(16)}` };
  const compression = flags & BatchFlag.compressionMask;
  if (compression !== Compression.none && compression !== Compression.lz4) return { kind: 'corrupt', reason: `unknown compression ${compression}` };
  const batchLength = readUint32(buf, pos + BatchOffset.batchLength);
  const recordsLength = readUint32(buf, pos + BatchOffset.recordsLength);
  if (batchLength !== batchHeaderBytes + recordsLength) {
    return { kind: 'corrupt', reason: `batchLength ${batchLength} does not match recordsLength ${recordsLength} + ${batchHeaderBytes}` };
  }
  if (batchLength > formatLimits.batchBytesMax) return { kind: 'corrupt', reason: `batchLength ${batchLength} over the limit` };
  const recordsLengthRaw = readUint32(buf, pos + BatchOffset.recordsLengthRaw);
  if (compression === Compression.none && recordsLengthRaw !== recordsLength) {
    return { kind: 'corrupt', reason: 'uncompressed batch with recordsLengthRaw != recordsLength' };
  }
  if (recordsLengthRaw > formatLimits.batchBytesMax) return { kind: 'corrupt', reason: `recordsLengthRaw ${recordsLengthRaw} over the limit` };
  const recordCount = readUint32(buf, pos + BatchOffset.recordCount);
  if (recordCount === 0 || recordCount > formatLimits.batchRecordCountMax) return { kind: 'corrupt', reason: `recordCount ${recordCount} out of range` };
  if (end - pos < batchLength) return { kind: 'short', needBytes: batchLength };
  return {
    kind: 'ok',
    header: {
      baseOffset: readInt64(buf, pos + BatchOffset.baseOffset),
      brokerTimestamp: readInt64(buf, pos + BatchOffset.brokerTimestamp),
      checksum: readUint64Big(buf, pos + BatchOffset.checksum),
      flags,
      batchLength,
      producerId: readInt64(buf, pos + BatchOffset.producerId),
      producerSequence: readUint32(buf, pos + BatchOffset.producerSequence) | 0,
      recordCount,
      firstTimestamp: readInt64(buf, pos + BatchOffset.firstTimestamp),
      recordsLength,
      recordsLengthRaw,
    },
  };
}

/** Little-endian u32 at `at`. */
export function readUint32(buf: Uint8Array, at: number): number {
  return (buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16) | (buf[at + 3]! << 24)) >>> 0;
}

/** Little-endian two's-complement i64 at `at` as a number (exact within ±2^53, as writeInt64 writes them). */
export function readInt64(buf: Uint8Array, at: number): number {
  return (readUint32(buf, at + 4) | 0) * 0x1_0000_0000 + readUint32(buf, at);
}

/** Little-endian u64 at `at` as a bigint (the checksum: all 64 bits count). */
function readUint64Big(buf: Uint8Array, at: number): bigint {
  return new DataView(buf.buffer, buf.byteOffset + at, 8).getBigUint64(0, true);
}

/** True when the stored checksum matches the bytes of the batch at `pos`. */
export function checksumHolds(buf: Uint8Array, pos: number, header: BatchHeader): boolean {
  const covered = buf.subarray(pos + batchUncoveredBytes, pos + header.batchLength);
  return xxh64(covered) === header.checksum;
}

/** Parses and fully validates one untrusted batch (header, checksum). Throws CORRUPT_BATCH. */
export function validateBatch(batch: Uint8Array): BatchHeader {
  const probe = probeHeader(batch, 0);
  if (probe.kind === 'corrupt') throw new WaymarkError('CORRUPT_BATCH', `corrupt batch header: ${probe.reason}`);
  if (probe.kind === 'short') throw new WaymarkError('CORRUPT_BATCH', `batch is ${batch.length} bytes, it needs ${probe.needBytes}`);
  if (probe.header.batchLength !== batch.length) {
    throw new WaymarkError('CORRUPT_BATCH', `batch is ${batch.length} bytes but declares ${probe.header.batchLength}`);
  }
  if (!checksumHolds(batch, 0, probe.header)) throw new WaymarkError('CORRUPT_BATCH', 'batch checksum mismatch');
  return probe.header;
}

/** The records section, decompressed when needed. */
export function recordsSection(batch: Uint8Array, pos: number, header: BatchHeader, codec: Codec | null): Uint8Array {
  const stored = batch.subarray(pos + batchHeaderBytes, pos + header.batchLength);
  const compression = header.flags & BatchFlag.compressionMask;
  if (compression === Compression.none) return stored;
  if (!codec || codec.id !== compression) {
    throw new WaymarkError('UNSUPPORTED_VERSION', `batch compressed with codec ${compression}, which this reader does not have`);
  }
  let raw: Uint8Array;
  try {
    raw = codec.decompress(stored, header.recordsLengthRaw);
  } catch (err) {
    throw new WaymarkError('CORRUPT_BATCH', `records section does not decompress: ${(err as Error).message}`);
  }
  if (raw.length !== header.recordsLengthRaw) {
    throw new WaymarkError('CORRUPT_BATCH', `records section decompressed to ${raw.length} bytes, header says ${header.recordsLengthRaw}`);
  }
  return raw;
}

/**
 * Decodes every record of the batch at `pos` (already probed; the caller decides whether to
 * verify the checksum first). Records are views into `buf` (or into the decompressed copy).
 */
export function decodeRecords(buf: Uint8Array, pos: number, header: BatchHeader, codec: Codec | null): StoredRecord[] {
  const section = recordsSection(buf, pos, header, codec);
  const reader = new Reader(section, 0, section.length);
  const records: StoredRecord[] = new Array(header.recordCount);
  for (let i = 0; i < header.recordCount; i++) {
    records[i] = readRecord(reader, i, header);
  }
  if (reader.pos !== section.length) {
    throw new WaymarkError('CORRUPT_BATCH', `${section.length - reader.pos} bytes left after ${header.recordCount} records`);
  }
  return records;
}

/** Decodes only record `index` of the batch at `pos`: the records before it are skipped by their length prefix. */
export function decodeRecordAt(buf: Uint8Array, pos: number, header: BatchHeader, codec: Codec | null, index: number): StoredRecord {
  if (index < 0 || index >= header.recordCount) throw new WaymarkError('INVALID_ARGUMENT', `record ${index} of ${header.recordCount}`);
  const section = recordsSection(buf, pos, header, codec);
  const reader = new Reader(section, 0, section.length);
  for (let i = 0; i < index; i++) {
    const size = reader.varint();
    if (reader.pos + size > section.length) throw new WaymarkError('CORRUPT_BATCH', `record ${i} runs past the records section`);
    reader.pos += size;
  }
  return readRecord(reader, index, header);
}

function readRecord(reader: Reader, index: number, header: BatchHeader): StoredRecord {
  const size = reader.varint();
  const end = reader.pos + size;
  if (end > reader.end) throw new WaymarkError('CORRUPT_BATCH', `record ${index} runs past the records section`);
  const r = new Reader(reader.buf, reader.pos, end);
  const attributes = r.u8();
  if ((attributes & ~RecordAttr.knownMask) !== 0) throw new WaymarkError('CORRUPT_BATCH', `record ${index}: unknown attribute bits`);
  const offsetDelta = r.varint();
  if (offsetDelta !== index) throw new WaymarkError('CORRUPT_BATCH', `record ${index} has offsetDelta ${offsetDelta}`);
  const timestamp = header.firstTimestamp + r.signedVarint();
  const msgId = r.bytes(msgIdBytes);
  const key = attributes & RecordAttr.hasKey ? r.bytes(r.varint()) : null;
  const headerCount = r.varint();
  if (headerCount > formatLimits.headerCountMax) throw new WaymarkError('CORRUPT_BATCH', `record ${index}: ${headerCount} headers`);
  const headers: Header[] = new Array(headerCount);
  for (let h = 0; h < headerCount; h++) {
    const name = textDecoder.decode(r.bytes(r.varint()));
    headers[h] = { name, value: r.bytes(r.varint()) };
  }
  const deliverAt = attributes & RecordAttr.hasDeliverAt ? header.firstTimestamp + r.signedVarint() : null;
  const body = r.bytes(r.varint());
  if (r.pos !== end) throw new WaymarkError('CORRUPT_BATCH', `record ${index}: ${end - r.pos} trailing bytes`);
  reader.pos = end;
  return { offset: header.baseOffset + index, timestamp, msgId, key, headers, deliverAt, body };
}

/** The value of the first header with this name, or undefined. */
export function headerValue(headers: readonly Header[], name: string): Uint8Array | undefined {
  for (const h of headers) if (h.name === name) return h.value;
  return undefined;
}
