/**
 * Frame helpers over the generated code: encode, decode (untrusted bytes → typed error),
 * and the error frame. Pure: no I/O.
 */
import './numbers'; // before the generated code: 64-bit fields as numbers
import { waymark } from './generated/waymark';
import { ErrorTable, WaymarkError, errorCodeFromWire, type ErrorCode } from './errors';

export const Frame = waymark.v1.Frame;
export type Frame = waymark.v1.Frame;
export type FrameInit = waymark.v1.IFrame;
export type FrameKind = NonNullable<Frame['body']>;
export type Position = waymark.v1.IPosition;
export type TopicInfoWire = waymark.v1.ITopicInfo;
export { waymark };

/** Request kinds a client may send; a reply or push kind from a client is out of order. */
export const clientRequestKinds: ReadonlySet<FrameKind> = new Set<FrameKind>([
  'hello',
  'produce',
  'fetch',
  'subscribe',
  'credit',
  'commit',
  'seek',
  'unsubscribe',
  'getPositions',
  'createTopic',
  'deleteTopic',
  'listTopics',
  'describeTopic',
]);

export function encodeFrame(frame: FrameInit): Uint8Array {
  return Frame.encode(frame).finish();
}

/**
 * A Produce frame written straight around the batch: the same bytes `encodeFrame` makes
 * for `{ id, produce: { topic, channel, batch, topicCreatedAt } }` (a test holds them equal), without the
 * encoder's per-field objects — the producer sends one of these per batch, and at small
 * batches that garbage was most of what its collector did. Field order and presence follow
 * the generated code: id (1), then produce (10) holding topic (1), channel (2), batch (3),
 * topic_created_at (5), each scalar left out when it is the proto3 default (0, empty).
 */
export function encodeProduceFrame(id: number, topic: string, channel: number, batch: Uint8Array, topicCreatedAt = 0): Uint8Array {
  const topicBytes = utf8Length(topic);
  const produceBytes =
    field(topicBytes, topicBytes + varintLength(topicBytes)) + field(channel, varintLength(channel)) + field(batch.length, batch.length + varintLength(batch.length)) + field(topicCreatedAt, varintLength(topicCreatedAt));
  const total = field(id, varintLength(id)) + 1 + varintLength(produceBytes) + produceBytes;
  const out = allocBytes(total);
  let at = varintField(out, 0, 0x08, id); // Frame.id
  out[at++] = 0x52; // Frame.produce (10), length-delimited
  at = writeVarint(out, at, produceBytes);
  if (topicBytes !== 0) {
    out[at++] = 0x0a; // Produce.topic
    at = writeVarint(out, at, topicBytes);
    at += writeUtf8(out, at, topic);
  }
  at = varintField(out, at, 0x10, channel); // Produce.channel
  if (batch.length !== 0) {
    out[at++] = 0x1a; // Produce.batch
    at = writeVarint(out, at, batch.length);
    out.set(batch, at);
    at += batch.length;
  }
  varintField(out, at, 0x28, topicCreatedAt); // Produce.topic_created_at (5)
  return out;
}

/** The fields of a Push that carries batches (need_messages and need_bytes are 0). */
export interface PushFields {
  subscription: number;
  channel: number;
  startOffset: number;
  nextOffset: number;
  highWatermark: number;
  epoch: number;
}

/**
 * A Push frame written straight around its batches: the same bytes `encodeFrame` makes for
 * `{ id: 0, push: { ...fields, batches } }` (a test holds them equal). With `into` large
 * enough, the frame is written there and a view of it returned: the broker hands it to the
 * socket, which copies it, and reuses one buffer for every push instead of allocating (and
 * collecting) a megabyte per push. Field order follows the generated code: push (17) holding
 * subscription (1), channel (2), batches (3), next_offset (4), high_watermark (5),
 * start_offset (8), epoch (9), each left out when it is the proto3 default.
 */
export function encodePushFrame(fields: PushFields, batches: Uint8Array, into?: Uint8Array): Uint8Array {
  const { subscription, channel, startOffset, nextOffset, highWatermark, epoch } = fields;
  const pushBytes =
    field(subscription, varintLength(subscription)) +
    field(channel, varintLength(channel)) +
    field(batches.length, batches.length + varintLength(batches.length)) +
    field(nextOffset, varintLength(nextOffset)) +
    field(highWatermark, varintLength(highWatermark)) +
    field(startOffset, varintLength(startOffset)) +
    field(epoch, varintLength(epoch));
  const total = 2 + varintLength(pushBytes) + pushBytes;
  const out = into && into.length >= total ? into.subarray(0, total) : allocBytes(total);
  out[0] = 0x8a; // Frame.push (17), length-delimited: a two-byte tag
  out[1] = 0x01;
  let at = writeVarint(out, 2, pushBytes);
  at = varintField(out, at, 0x08, subscription);
  at = varintField(out, at, 0x10, channel);
  if (batches.length !== 0) {
    out[at++] = 0x1a;
    at = writeVarint(out, at, batches.length);
    out.set(batches, at);
    at += batches.length;
  }
  at = varintField(out, at, 0x20, nextOffset);
  at = varintField(out, at, 0x28, highWatermark);
  at = varintField(out, at, 0x40, startOffset);
  varintField(out, at, 0x48, epoch);
  return out;
}

/** A varint field (its one-byte tag, then the value) at `at`, left out when the value is 0 (the proto3 default); returns the end. */
function varintField(out: Uint8Array, at: number, tag: number, value: number): number {
  if (value === 0) return at;
  out[at] = tag;
  return writeVarint(out, at + 1, value);
}

/** Bytes of a field with its one-byte tag, or none when its value is the default. */
function field(value: number, bytes: number): number {
  return value === 0 ? 0 : 1 + bytes;
}

/** Bytes of the varint of a non-negative safe integer. */
function varintLength(value: number): number {
  let n = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    n++;
  }
  return n;
}

/** Varint of a non-negative safe integer (offsets pass 32 bits: by division, not shifts). */
function writeVarint(out: Uint8Array, at: number, value: number): number {
  while (value >= 0x80) {
    out[at++] = (value % 0x80) | 0x80;
    value = Math.floor(value / 0x80);
  }
  out[at++] = value;
  return at;
}

const textEncoder = new TextEncoder();

function utf8Length(text: string): number {
  let ascii = true;
  for (let i = 0; i < text.length && ascii; i++) ascii = text.charCodeAt(i) < 0x80;
  return ascii ? text.length : textEncoder.encode(text).length;
}

function writeUtf8(out: Uint8Array, at: number, text: string): number {
  return textEncoder.encodeInto(text, out.subarray(at)).written;
}

/** A Buffer in Node (pooled for small sizes, what ws sends without converting), a Uint8Array elsewhere. */
const allocBytes: (size: number) => Uint8Array = typeof Buffer === 'function' ? (size) => Buffer.allocUnsafe(size) : (size) => new Uint8Array(size);

/** Decodes untrusted bytes; anything unparseable is a BAD_REQUEST, never a crash. */
export function decodeFrame(bytes: Uint8Array): Frame {
  let frame: Frame;
  try {
    frame = Frame.decode(bytes);
  } catch (err) {
    throw new WaymarkError('BAD_REQUEST', `unparseable frame: ${(err as Error).message}`);
  }
  return frame;
}

export function errorFrame(id: number, err: unknown): FrameInit {
  const typed = toWaymarkError(err);
  return { id, error: { code: ErrorTable[typed.code].wire, name: typed.code, message: typed.message } };
}

/** Any thrown value as a WaymarkError (unknown errors become INTERNAL, message kept). */
export function toWaymarkError(err: unknown): WaymarkError {
  if (err instanceof WaymarkError) return err;
  const e = err as { code?: unknown; message?: unknown };
  if (e && typeof e.code === 'string' && Object.prototype.hasOwnProperty.call(ErrorTable, e.code)) {
    return new WaymarkError(e.code as ErrorCode, String(e.message ?? ''));
  }
  return new WaymarkError('INTERNAL', String(e?.message ?? err));
}

/** The WaymarkError an Error frame stands for (the SDK throws it). */
export function errorFromFrame(error: waymark.v1.IError): WaymarkError {
  const code = errorCodeFromWire(error.code ?? 0);
  return new WaymarkError(code, error.message || ErrorTable[code].text);
}
