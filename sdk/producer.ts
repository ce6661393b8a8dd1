/**
 * Producer: gathers messages per channel into record batches (size and linger bounds),
 * pipelines up to `inflightBatchesMax` batches per channel, and resolves each message's
 * promise once the broker reports its batch durable.
 *
 * Idempotence: the producer has a random 53-bit id; each channel's batches carry increasing
 * sequences. After a reconnect every unacknowledged batch is resent as the same bytes, so
 * the broker answers a batch it already stored with its original offsets (no duplicates).
 *
 * Invariants: per channel, batches are sent and acknowledged in sequence order; a message's
 * promise settles exactly once; memory is bounded by bufferedBytesMax (send() waits).
 */
import { WaymarkError } from '../engine/format/errors';
import { formatLimits } from '../engine/format/limits';
import { MsgIdGenerator, msgIdToHex, msgIdFromHex } from '../engine/format/msg-id';
import { encodeBatch, type MessageInput } from '../engine/format/record-batch';
import { channelForKey } from '../engine/format/repack';
import type { Connection } from './client';
import { nodeCodec } from './codec';

export interface ProducerOptions {
  topic: string;
  /** Send every message to this channel (default: by key hash, keyless round robin). */
  channel?: number;
  /** A batch is sent when it holds this many messages (default 1000)… */
  batchMessagesMax?: number;
  /** …or this many bytes (default 1 MiB)… */
  batchBytesMax?: number;
  /** …or when its first message has waited this long (default 0: at the end of the current turn). */
  lingerMs?: number;
  /** Batches awaiting acknowledgement per channel (default 16; the broker remembers 16 for retries). */
  inflightBatchesMax?: number;
  /** Bytes waiting to be sent before send() starts to wait (default 64 MiB). */
  bufferedBytesMax?: number;
  /** Compress batches with lz4 in Node when it pays (default true). */
  compression?: boolean;
}

export interface OutgoingMessage {
  body: string | Uint8Array;
  key?: string | null;
  headers?: Record<string, string | Uint8Array>;
  /** 32 hex digits; made here when absent. */
  msgId?: string;
  /** Overrides the producer's routing for this message. */
  channel?: number;
}

export interface SendResult {
  msgId: string;
  channel: number;
  offset: number;
  brokerTimestamp: number;
  /** True when the broker had already stored this message (a retried batch). */
  duplicate: boolean;
}

interface Waiter {
  msgId: string;
  resolve: (result: SendResult) => void;
  reject: (err: Error) => void;
}

interface OpenBatch {
  messages: MessageInput[];
  waiters: Waiter[];
  bytes: number;
  timer: ReturnType<typeof setTimeout> | null;
}

interface SealedBatch {
  channel: number;
  bytes: Uint8Array;
  waiters: Waiter[];
  sent: boolean;
}

interface ChannelState {
  open: OpenBatch | null;
  sequence: number;
  ready: SealedBatch[]; // sealed, waiting for an in-flight slot
  inflight: SealedBatch[]; // sent, awaiting the reply, in sequence order
}

export class Producer {
  readonly topic: string;
  private readonly channels: ChannelState[];
  private readonly producerId: number;
  private readonly ids = new MsgIdGenerator();
  private readonly options: Required<Omit<ProducerOptions, 'channel' | 'topic'>> & { channel: number | undefined };
  private roundRobin = 0;
  private bufferedBytes = 0;
  private roomWaiters: Array<() => void> = [];
  private idleWaiters: Array<() => void> = [];
  private closed = false;
  private readonly stopListening: () => void;

  constructor(
    private readonly connection: Connection,
    options: ProducerOptions,
    channelCount: number,
  ) {
    this.topic = options.topic;
    this.options = {
      channel: options.channel,
      batchMessagesMax: Math.min(options.batchMessagesMax ?? 1000, formatLimits.batchRecordCountMax),
      batchBytesMax: Math.min(options.batchBytesMax ?? 1024 * 1024, formatLimits.batchBytesMax - 64 * 1024),
      lingerMs: options.lingerMs ?? 0,
      inflightBatchesMax: options.inflightBatchesMax ?? 16,
      bufferedBytesMax: options.bufferedBytesMax ?? 64 * 1024 * 1024,
      compression: options.compression ?? true,
    };
    if (options.channel !== undefined && (!Number.isInteger(options.channel) || options.channel < 0 || options.channel >= channelCount)) {
      throw new WaymarkError('CHANNEL_NOT_FOUND', `topic ${options.topic} has channels 0..${channelCount - 1}, not ${options.channel}`);
    }
    this.channels = Array.from({ length: channelCount }, () => ({ open: null, sequence: 0, ready: [], inflight: [] }));
    const random = new Uint32Array(2);
    globalThis.crypto.getRandomValues(random);
    this.producerId = (random[0]! & 0x1fffff) * 0x100000000 + random[1]!; // 53 bits
    this.stopListening = connection.on('reconnect', () => this.resendAll());
  }

  get channelCount(): number {
    return this.channels.length;
  }

  /** Routes a message: explicit channel, producer channel, key hash, or round robin. */
  channelFor(message: OutgoingMessage): number {
    if (message.channel !== undefined) return message.channel;
    if (this.options.channel !== undefined) return this.options.channel;
    if (message.key != null) return channelForKey(message.key, this.channels.length);
    this.roundRobin = (this.roundRobin + 1) % this.channels.length;
    return this.roundRobin;
  }

  /** Queues one message; resolves once it is durable on the broker. */
  async send(message: OutgoingMessage): Promise<SendResult> {
    if (this.closed) throw new WaymarkError('CLIENT_CLOSED', 'the producer is closed');
    const channel = this.channelFor(message);
    const state = this.channels[channel];
    if (!state) throw new WaymarkError('CHANNEL_NOT_FOUND', `topic ${this.topic} has channels 0..${this.channels.length - 1}, not ${channel}`);
    const size = sizeOf(message);
    if (size > formatLimits.messageBytesMax + 64 * 1024) throw new WaymarkError('MESSAGE_TOO_LARGE', `message is about ${size} bytes, the limit is ${formatLimits.messageBytesMax}`);
    while (this.bufferedBytes + size > this.options.bufferedBytesMax && this.bufferedBytes > 0) {
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
    let msgId: Uint8Array;
    if (message.msgId) {
      const parsed = msgIdFromHex(message.msgId);
      if (!parsed) throw new WaymarkError('INVALID_ARGUMENT', 'msgId must be 32 hex digits');
      msgId = parsed;
    } else msgId = this.ids.next();
    return new Promise<SendResult>((resolve, reject) => {
      const open = (state.open ??= { messages: [], waiters: [], bytes: 0, timer: null });
      if (open.messages.length > 0 && open.bytes + size > this.options.batchBytesMax) this.seal(channel);
      const batch = (state.open ??= { messages: [], waiters: [], bytes: 0, timer: null });
      batch.messages.push({ msgId, key: message.key ?? null, headers: message.headers, body: message.body });
      batch.waiters.push({ msgId: msgIdToHex(msgId), resolve, reject });
      batch.bytes += size;
      this.bufferedBytes += size;
      if (batch.messages.length >= this.options.batchMessagesMax || batch.bytes >= this.options.batchBytesMax) this.seal(channel);
      else if (batch.messages.length === 1) {
        batch.timer = this.options.lingerMs > 0 ? setTimeout(() => this.seal(channel), this.options.lingerMs) : nextTurn(() => this.seal(channel));
      }
    });
  }

  /** Sends one message to every channel of the topic. */
  async broadcast(message: Omit<OutgoingMessage, 'channel'>): Promise<SendResult[]> {
    if (this.closed) throw new WaymarkError('CLIENT_CLOSED', 'the producer is closed');
    const msgId = message.msgId ? msgIdFromHex(message.msgId) : this.ids.next();
    if (!msgId) throw new WaymarkError('INVALID_ARGUMENT', 'msgId must be 32 hex digits');
    const { batch } = encodeBatch([{ msgId, key: message.key ?? null, headers: message.headers, body: message.body }], { codec: this.codec() });
    const reply = await this.connection.request({ produce: { topic: this.topic, channel: 0, batch, broadcast: true } });
    return (reply.produceOk?.appends ?? []).map((a) => ({ msgId: msgIdToHex(msgId), channel: a.channel ?? 0, offset: a.baseOffset ?? 0, brokerTimestamp: a.brokerTimestamp ?? 0, duplicate: !!a.duplicate }));
  }

  private codec(): ReturnType<typeof nodeCodec> {
    return this.options.compression ? nodeCodec() : null;
  }

  /** Turns the channel's open batch into bytes and queues it for sending. */
  private seal(channel: number): void {
    const state = this.channels[channel]!;
    const open = state.open;
    if (!open || open.messages.length === 0) return;
    state.open = null;
    if (open.timer && this.options.lingerMs > 0) clearTimeout(open.timer);
    let bytes: Uint8Array;
    try {
      bytes = encodeBatch(open.messages, { producerId: this.producerId, producerSequence: state.sequence, codec: this.codec() }).batch;
    } catch (err) {
      this.release(open.bytes);
      for (const w of open.waiters) w.reject(err as Error);
      return;
    }
    state.sequence += open.messages.length;
    state.ready.push({ channel, bytes, waiters: open.waiters, sent: false });
    this.pump(channel);
  }

  private pump(channel: number): void {
    const state = this.channels[channel]!;
    while (state.ready.length > 0 && state.inflight.length < this.options.inflightBatchesMax) {
      const batch = state.ready.shift()!;
      state.inflight.push(batch);
      this.transmit(batch);
    }
  }

  private transmit(batch: SealedBatch): void {
    batch.sent = true;
    this.connection.request({ produce: { topic: this.topic, channel: batch.channel, batch: batch.bytes } }).then(
      (reply) => this.acknowledged(batch, reply.produceOk?.appends?.[0]),
      (err: WaymarkError) => {
        // A lost connection keeps the batch: it is resent, as the same bytes, on reconnect.
        if (err.code === 'CONNECTION_LOST' && !this.connection.isClosed) {
          batch.sent = false;
          return;
        }
        this.finish(batch);
        for (const w of batch.waiters) w.reject(err);
      },
    );
  }

  private acknowledged(batch: SealedBatch, append: { baseOffset?: number | null; brokerTimestamp?: number | null; duplicate?: boolean | null } | undefined): void {
    this.finish(batch);
    const base = append?.baseOffset ?? 0;
    batch.waiters.forEach((w, i) =>
      w.resolve({ msgId: w.msgId, channel: batch.channel, offset: base + i, brokerTimestamp: append?.brokerTimestamp ?? 0, duplicate: !!append?.duplicate }),
    );
  }

  private finish(batch: SealedBatch): void {
    const state = this.channels[batch.channel]!;
    const index = state.inflight.indexOf(batch);
    if (index >= 0) state.inflight.splice(index, 1);
    this.release(batch.bytes.length);
    this.pump(batch.channel);
    if (this.isIdle()) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  private release(bytes: number): void {
    this.bufferedBytes = Math.max(0, this.bufferedBytes - bytes);
    for (const resolve of this.roomWaiters.splice(0)) resolve();
  }

  private resendAll(): void {
    for (const state of this.channels) for (const batch of state.inflight) if (!batch.sent) this.transmit(batch);
  }

  private isIdle(): boolean {
    return this.channels.every((s) => !s.open && s.ready.length === 0 && s.inflight.length === 0);
  }

  /** Sends what is gathered now and resolves when everything sent so far is acknowledged. */
  async flush(): Promise<void> {
    for (let c = 0; c < this.channels.length; c++) this.seal(c);
    if (this.isIdle()) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    this.stopListening();
  }
}

/** Runs `fn` after the current turn (setImmediate in Node; browsers have only timers). */
const nextTurn: (fn: () => void) => ReturnType<typeof setTimeout> =
  typeof setImmediate === 'function' ? (fn) => setImmediate(fn) as unknown as ReturnType<typeof setTimeout> : (fn) => setTimeout(fn, 0);

function sizeOf(message: OutgoingMessage): number {
  const body = typeof message.body === 'string' ? message.body.length * 3 : message.body.length;
  const key = message.key ? message.key.length * 3 : 0;
  let headers = 0;
  for (const [name, value] of Object.entries(message.headers ?? {})) headers += name.length + (typeof value === 'string' ? value.length * 3 : value.length);
  return body + key + headers + 32;
}
