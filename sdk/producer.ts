/**
 * Producer: gathers messages per channel into record batches (size and linger bounds),
 * pipelines up to `inflightBatchesMax` batches per channel, and resolves each message's
 * promise once the broker reports its batch durable.
 *
 * Idempotence: each channel's batches carry a random 53-bit producer id and increasing
 * sequences. After a reconnect every unacknowledged batch is resent as the same bytes, so
 * the broker answers a batch it already stored with its original offsets (no duplicates).
 * A sequence is an i32 on the wire: before a channel's would pass 2^31 − 1 (after two
 * billion messages) the channel takes a new random id and starts again at 0.
 *
 * Broadcasts (one batch to every channel) have a producer id and sequences of their own,
 * held and resent on reconnect like any batch: the broker's per-channel dedup then stores a
 * broadcast cut short by a crash on the channels it missed and answers the others as
 * duplicates, so it ends on every channel exactly once. A broadcast is ordered with the
 * producer's sends: every message sent before it (send order, across channels) is
 * acknowledged before it goes, and no message sent after it goes before it is acknowledged
 * — Milvus' "data, then the time tick" needs no awaits in between. Each message carries an
 * epoch (the broadcasts issued before its send); a channel batch holds one epoch and goes only
 * once that many broadcasts are done.
 *
 * Invariants: per channel, batches are sent and acknowledged in sequence order; a message's
 * promise settles exactly once; the bytes in batches (being filled, sent, or waiting for an
 * acknowledgement) stay within bufferedBytesMax: a send past it is parked, in order, until
 * there is room, and its promise settles later. What a caller sends without awaiting is held
 * (parked) until then: awaiting the sends, or a window of them, is what bounds that.
 */
import { shown, WaymarkError } from '../engine/format/errors';
import { formatLimits } from '../engine/format/limits';
import { MsgIdGenerator, msgIdFromHex, packedMsgIdsToHex } from '../engine/format/msg-id';
import { checkMessage, encodeBatch, messagePrefix, type MessageInput } from '../engine/format/record-batch';
import { channelForKey } from '../engine/format/repack';
import type { Connection } from './client';
import { nodeCodec } from './codec';
import { checkChannelNumber, checkCount, checkKnown, checkMs } from './options';

/** Every option of ProducerOptions (checkKnown: a misspelt one was ignored). */
const producerOptionNames = ['topic', 'channel', 'batchMessagesMax', 'batchBytesMax', 'lingerMs', 'inflightBatchesMax', 'bufferedBytesMax', 'compression', 'deliveryTimeoutMs'] as const satisfies ReadonlyArray<keyof ProducerOptions>;

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
  /** Batches awaiting acknowledgement per channel, 1–16 (default 16: the broker remembers a producer's last 16 batches per channel to answer resends). */
  inflightBatchesMax?: number;
  /** Bytes in batches (being filled, sent, or unacknowledged) past which a send is parked until there is room (default 64 MiB). */
  bufferedBytesMax?: number;
  /** Compress batches with lz4 in Node when it pays (default true). */
  compression?: boolean;
  /**
   * A message not acknowledged this long after send() while the broker is unreachable fails
   * with TIMEOUT (default 120,000 ms, as Kafka's delivery.timeout.ms; 0 = wait for the broker
   * however long it takes). Such a message may still have been stored (its batch reached the
   * broker and the reply was lost). While connected, requestTimeoutMs bounds each request.
   */
  deliveryTimeoutMs?: number;
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

/**
 * Who waits for the results of a sendBatch() array: one owner for the whole array, no
 * promise or waiter object per message (a send() run keeps its promise's functions instead).
 */
interface Owner {
  settle(slot: number, result: SendResult): void;
  fail(err: Error): void;
}

/**
 * The one executor of send()'s promises: it hands the promise's functions out through
 * `captured` instead of being a new closure (and context) per call. Read right after
 * `new Promise(capture)`, which runs it synchronously. A send() run keeps these two functions
 * (in the batch's runs) and no owner object of its own: every object a message keeps alive
 * while its batch is in flight is one more for each scavenge to copy.
 */
const captured: { resolve: ((result: SendResult) => void) | null; reject: ((err: Error) => void) | null } = { resolve: null, reject: null };
function capture(resolve: (result: SendResult) => void, reject: (err: Error) => void): void {
  captured.resolve = resolve;
  captured.reject = reject;
}

class ArrayOwner implements Owner {
  readonly results: SendResult[];
  private remaining: number;
  private settled = false;

  constructor(
    count: number,
    private readonly resolve: (results: SendResult[]) => void,
    private readonly reject: (err: Error) => void,
  ) {
    this.results = new Array(count);
    this.remaining = count;
  }

  settle(slot: number, result: SendResult): void {
    this.results[slot] = result;
    if (--this.remaining === 0 && !this.settled) {
      this.settled = true;
      this.resolve(this.results);
    }
  }

  fail(err: Error): void {
    if (this.settled) return;
    this.settled = true;
    this.reject(err);
  }
}

/**
 * Who waits for the messages of a batch, as runs of four slots each in one array: the owner
 * (a sendBatch() array's, or a send() promise's resolve function), the reject function of a
 * send() (null for an owner: it fails itself), the first slot, the count. Messages
 * [i, i + count) of the batch belong to run r's owner, slots first… — one run per send(), one
 * or two per sendBatch() array. One array, not four: a batch of one to three messages (what a
 * producer at 10,000 msg/s seals every turn) paid for four arrays' first backing stores.
 */
type RunSlot = Owner | ((result: SendResult) => void) | ((err: Error) => void) | number | null;
const runStride = 4;

interface Runs {
  runs: RunSlot[];
}

/** Fails every run of a batch. */
function failRuns(batch: Runs, err: Error): void {
  const runs = batch.runs;
  for (let r = 0; r < runs.length; r += runStride) {
    const reject = runs[r + 1] as ((err: Error) => void) | null;
    if (reject) reject(err);
    else (runs[r] as Owner).fail(err);
  }
}

interface OpenBatch extends Runs {
  messages: MessageInput[];
  /** The broadcasts issued before its messages were sent (one epoch a batch: see the file comment). */
  epoch: number;
  /** performance.now() of its oldest message's send() (deliveryTimeoutMs runs from there). */
  since: number;
  bytes: number;
  timer: ReturnType<typeof setTimeout> | null;
  /** Its linger is over; it is sealed as soon as it can be sent (see lingerDone). */
  due: boolean;
}

interface SealedBatch extends Runs {
  channel: number;
  bytes: Uint8Array;
  /**
   * What its messages added to bufferedBytes (sizeOf estimates), given back when it is done.
   * (Giving back the encoded length instead, as before, leaked the difference — strings count
   * 3 bytes a character, lz4 shrinks batches — until send() waited for room forever.)
   */
  bufferedBytes: number;
  /** The msgIds of the batch's records, 16 bytes each, back to back (hex is made at the ack). */
  msgIds: Uint8Array;
  sent: boolean;
  /** Its oldest message's send() time (OpenBatch.since). */
  since: number;
  /** OpenBatch.epoch: it goes once this many broadcasts are done. */
  epoch: number;
}

/** One broadcast batch: the same bytes to every channel (Produce with broadcast set). */
interface BroadcastBatch {
  bytes: Uint8Array;
  /** The msgIds of its records, 16 bytes each (as SealedBatch.msgIds). */
  msgIds: Uint8Array;
  count: number;
  /** Its place among the producer's broadcasts: it goes once everything of epoch ≤ this is acknowledged. */
  epoch: number;
  /** waiting: for what was sent before it; sent: on the wire; held: lost with a connection, resent on reconnect. */
  state: 'waiting' | 'sent' | 'held';
  since: number;
  resolve: (results: SendResult[][]) => void;
  reject: (err: Error) => void;
}

interface ChannelState {
  open: OpenBatch | null;
  /** The id and next sequence of the channel's batches (see "Idempotence" above). */
  producerId: number;
  sequence: number;
  ready: SealedBatch[]; // sealed, waiting for an in-flight slot
  inflight: SealedBatch[]; // sent, awaiting the reply, in sequence order
}

export class Producer {
  readonly topic: string;
  private readonly channels: ChannelState[];
  private readonly ids = new MsgIdGenerator();
  private readonly options: Required<Omit<ProducerOptions, 'channel' | 'topic'>> & { channel: number | undefined };
  private roundRobin = 0;
  private bufferedBytes = 0;
  /** Messages waiting for room in the buffer, in send order (from parkedHead on). */
  private parked: Array<{ channel: number; input: MessageInput; size: number; owner: Owner | ((result: SendResult) => void); reject: ((err: Error) => void) | null; slot: number; since: number; epoch: number }> = [];
  private parkedHead = 0;
  private unparking = false;
  private idleWaiters: Array<() => void> = [];
  private closed = false;
  /** close() was called: new sends are refused at once (one made in close()'s own turn was accepted and never flushed). */
  private closing = false;
  private readonly stopListening: Array<() => void>;
  /** Fails what waited longer than deliveryTimeoutMs; set only while batches wait for a connection. */
  private expiryTimer: ReturnType<typeof setTimeout> | null = null;
  /** Broadcasts not yet done, in issue order (the first is the next to go). */
  private readonly broadcasts: BroadcastBatch[] = [];
  /** Broadcasts issued, and done (acknowledged or failed), so far: the epochs. */
  private broadcastsIssued = 0;
  private broadcastsDone = 0;
  /** The broadcasts' own producer id and next sequence (every channel sees the same ones). */
  private readonly broadcastLane = { producerId: newProducerId(), sequence: 0 };

  constructor(
    private readonly connection: Connection,
    options: ProducerOptions,
    channelCount: number,
    /** The topic's creation time when the producer was made: sent with every produce, so that a topic deleted and made again meanwhile refuses it (TOPIC_NOT_FOUND) instead of taking it. 0 = any. */
    private readonly topicCreatedAt = 0,
  ) {
    this.topic = options.topic;
    checkProducerOptions(options);
    this.options = {
      channel: options.channel,
      batchMessagesMax: Math.min(options.batchMessagesMax ?? 1000, formatLimits.batchRecordCountMax),
      batchBytesMax: Math.min(options.batchBytesMax ?? 1024 * 1024, formatLimits.batchBytesMax - 64 * 1024),
      lingerMs: options.lingerMs ?? 0,
      inflightBatchesMax: options.inflightBatchesMax ?? 16,
      bufferedBytesMax: options.bufferedBytesMax ?? 64 * 1024 * 1024,
      compression: options.compression ?? true,
      deliveryTimeoutMs: options.deliveryTimeoutMs ?? 120_000,
    };
    checkChannelNumber('channel', options.channel);
    if (options.channel !== undefined && options.channel >= channelCount) {
      throw new WaymarkError('CHANNEL_NOT_FOUND', `topic ${options.topic} has channels 0..${channelCount - 1}, not ${options.channel}`);
    }
    this.channels = Array.from({ length: channelCount }, () => ({ open: null, producerId: newProducerId(), sequence: 0, ready: [], inflight: [] }));
    this.stopListening = [
      connection.on('reconnect', () => {
        this.disarmExpiry();
        this.resendAll();
      }),
      connection.on('close', () => this.failHeld(new WaymarkError('CLIENT_CLOSED', 'the client was closed before the broker acknowledged this message'))),
    ];
  }

  get channelCount(): number {
    return this.channels.length;
  }

  /** Routes a message: explicit channel, producer channel, key hash, or round robin. */
  channelFor(message: OutgoingMessage): number {
    if (message.channel !== undefined) return message.channel;
    if (this.options.channel !== undefined) return this.options.channel;
    if (message.key != null) return channelForKey(message.key, this.channels.length);
    const channel = this.roundRobin; // channel 0 first, as the HTTP route does
    this.roundRobin = (channel + 1) % this.channels.length;
    return channel;
  }

  /** Queues one message; resolves once it is durable on the broker. */
  send(message: OutgoingMessage): Promise<SendResult> {
    // Not an async function: the common case (room in the buffer) makes one promise, not three.
    try {
      const input = this.input(message);
      const channel = this.route(message);
      const size = sizeOf(message);
      const promise = new Promise<SendResult>(capture);
      if (this.mustWait(size)) this.park(channel, input, size, captured.resolve!, captured.reject!, 0);
      else this.enqueue(channel, input, size, captured.resolve!, captured.reject!, 0, -1, this.broadcastsIssued);
      return promise;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Queues many messages at once and resolves with one SendResult per message, in the order
   * given, once all of them are durable. Same routing, batching, limits and retries as
   * send(); the difference is the cost: one promise for the whole array instead of one per
   * message, which is what lets one producer reach hundreds of thousands of messages a second
   * (with send() the per-message promises and waiters are most of a producer's CPU and
   * garbage at that rate).
   *
   * The messages are checked and read during the call: if one fails the checks (a bad msgId
   * or channel, too large, a closed producer) the call rejects and none of them is queued,
   * and the caller may reuse the array and the message objects as soon as it returns. Once
   * queued, a failure (e.g. the broker refusing a batch) rejects the call with the first
   * error; messages in other batches may have been stored all the same, as with Promise.all
   * over send().
   */
  sendBatch(messages: readonly OutgoingMessage[]): Promise<SendResult[]> {
    const count = messages.length;
    if (count === 0) return Promise.resolve([]);
    const channels: number[] = new Array(count);
    const sizes: number[] = new Array(count);
    const inputs: MessageInput[] = new Array(count);
    try {
      for (let i = 0; i < count; i++) {
        const message = messages[i]!;
        inputs[i] = this.input(message, i);
        channels[i] = this.route(message);
        sizes[i] = sizeOf(message);
      }
    } catch (err) {
      return Promise.reject(err);
    }
    let owner!: ArrayOwner;
    const done = new Promise<SendResult[]>((resolve, reject) => (owner = new ArrayOwner(count, resolve, reject)));
    for (let i = 0; i < count; i++) {
      if (this.mustWait(sizes[i]!)) this.park(channels[i]!, inputs[i]!, sizes[i]!, owner, null, i);
      else this.enqueue(channels[i]!, inputs[i]!, sizes[i]!, owner, null, i, -1, this.broadcastsIssued);
    }
    return done;
  }

  /** Checks a message and routes it (throws on a closed producer or a bad channel). */
  private route(message: OutgoingMessage): number {
    if (this.closing) throw new WaymarkError('CLIENT_CLOSED', 'the producer is closed');
    checkChannelNumber('channel', (message as { channel?: unknown }).channel);
    const channel = this.channelFor(message);
    if (!Number.isInteger(channel) || !this.channels[channel]) throw new WaymarkError('CHANNEL_NOT_FOUND', `topic ${this.topic} has channels 0..${this.channels.length - 1}, not ${channel}`);
    return channel;
  }

  /**
   * The message as the batch encoder takes it, checked against the limits now: a bad message
   * fails its own send() (or its sendBatch() call) and never the batch it would have joined.
   * A msgId made here is written by the encoder.
   */
  private input(message: OutgoingMessage, index?: number): MessageInput {
    if (this.closing) throw new WaymarkError('CLIENT_CLOSED', 'the producer is closed');
    if (typeof message !== 'object' || message === null) throw new WaymarkError('INVALID_ARGUMENT', `${messagePrefix(index)}a message is an object with a body, not ${message === null ? 'null' : typeof message}`);
    const scheduled = message as { deliverAt?: unknown; delayMs?: unknown };
    if (scheduled.deliverAt != null || scheduled.delayMs != null) {
      // Not a field of OutgoingMessage yet: from JavaScript it was stored for delivery at once, in silence.
      throw new WaymarkError('UNSUPPORTED', `${messagePrefix(index)}scheduled delivery (deliverAt / delayMs) is not available on this broker yet`);
    }
    let msgId: Uint8Array | undefined;
    if (message.msgId) {
      const parsed = msgIdFromHex(message.msgId);
      if (!parsed) throw new WaymarkError('INVALID_ARGUMENT', `${messagePrefix(index)}msgId must be 32 hex digits`);
      msgId = parsed;
    }
    const input: MessageInput = { msgId, key: message.key ?? null, headers: message.headers, body: message.body };
    checkMessage(input, index);
    return input;
  }

  /** True when a message of `size` bytes must wait: earlier messages wait (send order is kept), or the buffer has no room. */
  private mustWait(size: number): boolean {
    return this.parked.length > this.parkedHead || !this.hasRoom(size);
  }

  /** The buffer takes `size` more bytes (an empty buffer takes any message, however large). */
  private hasRoom(size: number): boolean {
    return this.bufferedBytes + size <= this.options.bufferedBytesMax || this.bufferedBytes === 0;
  }

  /** A message that found the buffer full (or others waiting): queued in send order until there is room. */
  private park(channel: number, input: MessageInput, size: number, owner: Owner | ((result: SendResult) => void), reject: ((err: Error) => void) | null, slot: number): void {
    this.parked.push({ channel, input, size, owner, reject, slot, since: performance.now(), epoch: this.broadcastsIssued });
  }

  /**
   * Moves waiting messages into batches, oldest first, while the buffer has room for the next
   * one. Not re-entered (a batch failing while being sealed releases its bytes and would call
   * back in, queueing later messages before the one in hand); the queue's taken head is
   * dropped as it grows, so a producer that always has sends waiting keeps only those.
   * While a flush() waits, what moves into a batch is sealed at once instead of lingering.
   */
  private unpark(): void {
    if (this.unparking) return;
    this.unparking = true;
    try {
      while (this.parkedHead < this.parked.length) {
        const p = this.parked[this.parkedHead]!;
        if (!this.hasRoom(p.size)) break;
        this.parked[this.parkedHead++] = undefined!;
        this.enqueue(p.channel, p.input, p.size, p.owner, p.reject, p.slot, p.since, p.epoch);
      }
    } finally {
      this.unparking = false;
    }
    if (this.parkedHead === this.parked.length) {
      this.parked = [];
      this.parkedHead = 0;
    } else if (this.parkedHead >= 1024 && this.parkedHead * 2 >= this.parked.length) {
      this.parked = this.parked.slice(this.parkedHead);
      this.parkedHead = 0;
    }
    if (this.idleWaiters.length > 0) for (let c = 0; c < this.channels.length; c++) this.seal(c);
  }

  /** Adds a message to its channel's open batch; `since` is when it was parked, -1 when it is sent now; `epoch` as OpenBatch's. */
  private enqueue(channel: number, input: MessageInput, size: number, owner: Owner | ((result: SendResult) => void), reject: ((err: Error) => void) | null, slot: number, since: number, epoch: number): void {
    const state = this.channels[channel]!;
    const open = (state.open ??= newOpenBatch(epoch));
    if (open.messages.length > 0 && (open.bytes + size > this.options.batchBytesMax || open.epoch !== epoch)) this.seal(channel);
    const batch = (state.open ??= newOpenBatch(epoch));
    if (batch.messages.length === 0) batch.since = since >= 0 ? since : performance.now();
    batch.messages.push(input);
    const runs = batch.runs;
    const last = runs.length - runStride;
    if (last >= 0 && runs[last] === owner && (runs[last + 2] as number) + (runs[last + 3] as number) === slot) (runs[last + 3] as number)++;
    else runs.push(owner, reject, slot, 1);
    batch.bytes += size;
    this.bufferedBytes += size;
    // A broadcast waits for it: no lingering.
    if (batch.messages.length >= this.options.batchMessagesMax || batch.bytes >= this.options.batchBytesMax || epoch < this.broadcastsIssued) this.seal(channel);
    else if (batch.messages.length === 1) {
      batch.timer = this.options.lingerMs > 0 ? setTimeout(() => this.lingerDone(channel, batch), this.options.lingerMs) : nextTurn(() => this.lingerDone(channel, batch));
    }
  }

  /** Sends one message to every channel of the topic; one result per channel. See broadcastBatch. */
  async broadcast(message: Omit<OutgoingMessage, 'channel'>): Promise<SendResult[]> {
    return (await this.broadcastBatch([message]))[0]!;
  }

  /**
   * Sends each message to every channel of the topic: per message, one result per channel (in
   * channel order). The messages are checked during the call: a bad one (with its index) rejects
   * the call and none of them is sent. They go as few batches as the batch limits allow, after
   * every message sent before this call and before any sent after it (see the file comment),
   * and are resent on reconnect like any batch: each ends on every channel exactly once.
   */
  broadcastBatch(messages: readonly Omit<OutgoingMessage, 'channel'>[]): Promise<SendResult[][]> {
    if (!Array.isArray(messages)) return Promise.reject(new WaymarkError('INVALID_ARGUMENT', `broadcastBatch takes an array of messages, not ${messages === null ? 'null' : typeof messages}`));
    const encoded: Array<{ bytes: Uint8Array; msgIds: Uint8Array; count: number }> = [];
    try {
      if (this.closing) throw new WaymarkError('CLIENT_CLOSED', 'the producer is closed');
      const inputs = messages.map((m, i) => this.input(m, i));
      const lane = this.broadcastLane;
      for (let first = 0; first < inputs.length; ) {
        let bytes = 0;
        let end = first;
        while (end < inputs.length && end - first < this.options.batchMessagesMax && (end === first || bytes + sizeOf(messages[end]!) <= this.options.batchBytesMax)) bytes += sizeOf(messages[end++]!);
        const chunk = inputs.slice(first, end);
        if (lane.sequence + chunk.length - 1 > sequenceMax) {
          lane.producerId = newProducerId();
          lane.sequence = 0;
        }
        const batch = encodeBatch(chunk, { producerId: lane.producerId, producerSequence: lane.sequence, codec: this.codec(), msgIds: this.ids, checked: true });
        lane.sequence += chunk.length;
        encoded.push({ bytes: batch.batch, msgIds: batch.packedMsgIds, count: chunk.length });
        first = end;
      }
    } catch (err) {
      return Promise.reject(err);
    }
    if (encoded.length === 0) return Promise.resolve([]);
    // What was sent before goes now (it must be acknowledged before the broadcast can go).
    for (let c = 0; c < this.channels.length; c++) this.seal(c);
    const parts = encoded.map(
      ({ bytes, msgIds, count }) =>
        new Promise<SendResult[][]>((resolve, reject) => {
          this.broadcasts.push({ bytes, msgIds, count, epoch: this.broadcastsIssued++, state: 'waiting', since: performance.now(), resolve, reject });
        }),
    );
    this.pumpBroadcast();
    return Promise.all(parts).then((results) => results.flat());
  }

  /** Sends the next broadcast once everything sent before it is acknowledged (and nothing of later epochs has gone). */
  private pumpBroadcast(): void {
    const head = this.broadcasts[0];
    if (!head || head.state !== 'waiting') return;
    if (this.parkedHead < this.parked.length && this.parked[this.parkedHead]!.epoch <= head.epoch) return;
    for (const state of this.channels) {
      if (state.inflight.length > 0) return;
      if (state.ready.length > 0 && state.ready[0]!.epoch <= head.epoch) return;
      if (state.open && state.open.messages.length > 0 && state.open.epoch <= head.epoch) return;
    }
    this.transmitBroadcast(head);
  }

  private transmitBroadcast(b: BroadcastBatch): void {
    if (!this.connection.isConnected && this.connection.willReconnect) {
      b.state = 'held'; // sent on reconnect (resendAll), or failed by deliveryTimeoutMs
      this.armExpiry();
      return;
    }
    b.state = 'sent';
    this.connection.request({ produce: { topic: this.topic, channel: 0, batch: b.bytes, broadcast: true, topicCreatedAt: this.topicCreatedAt } }).then(
      (reply) => {
        const hex = packedMsgIdsToHex(b.msgIds);
        const appends = reply.produceOk?.appends ?? [];
        const results: SendResult[][] = [];
        for (let i = 0; i < b.count; i++) {
          const msgId = hex.slice(i * 32, i * 32 + 32);
          results.push(appends.map((a) => ({ msgId, channel: a.channel ?? 0, offset: (a.baseOffset ?? 0) + i, brokerTimestamp: a.brokerTimestamp ?? 0, duplicate: !!a.duplicate })));
        }
        this.broadcastDone(b);
        b.resolve(results);
      },
      (err: WaymarkError) => {
        // Lost with the connection (or timed out, which drops it): kept and resent as the same bytes.
        if ((err.code === 'CONNECTION_LOST' || err.code === 'TIMEOUT') && this.connection.willReconnect) {
          b.state = 'held';
          this.armExpiry();
          return;
        }
        this.broadcastDone(b);
        b.reject(err);
      },
    );
  }

  /** The first broadcast is done (acknowledged or failed): what was sent after it may go. */
  private broadcastDone(b: BroadcastBatch): void {
    if (this.broadcasts[0] === b) this.broadcasts.shift();
    this.broadcastsDone++;
    for (let c = 0; c < this.channels.length; c++) this.pump(c);
    this.pumpBroadcast();
    if (this.isIdle()) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  private codec(): ReturnType<typeof nodeCodec> {
    return this.options.compression ? nodeCodec() : null;
  }

  /**
   * The open batch has lingered long enough. It is sealed now if it can go out now; while the
   * channel's in-flight slots are all taken it stays open and keeps gathering messages, and is
   * sealed when a slot frees (pump). So under load batches grow instead of piling up as many
   * tiny sealed ones: with lingerMs 0 and one message per turn, a queue of one-message batches
   * sent 16 at a time could not keep up with 10,000 messages a second once an acknowledgement
   * took more than 1.6 ms, and then fell behind by seconds.
   */
  private lingerDone(channel: number, batch: OpenBatch): void {
    const state = this.channels[channel]!;
    if (state.open !== batch) return; // sealed already (it filled up)
    batch.timer = null;
    batch.due = true;
    if (state.ready.length === 0 && state.inflight.length < this.options.inflightBatchesMax) this.seal(channel);
  }

  /** Turns the channel's open batch into bytes and queues it for sending. */
  private seal(channel: number): void {
    const state = this.channels[channel]!;
    const open = state.open;
    if (!open || open.messages.length === 0) return;
    state.open = null;
    if (open.timer && this.options.lingerMs > 0) clearTimeout(open.timer);
    let bytes: Uint8Array;
    let msgIds: Uint8Array;
    // The batch's last sequence must fit the wire's i32 (at 2^31 the broker took it for "no
    // sequence" and stored resends twice; at 2^32 it wrapped and every send was refused).
    if (state.sequence + open.messages.length - 1 > sequenceMax) {
      state.producerId = newProducerId();
      state.sequence = 0;
    }
    try {
      const encoded = encodeBatch(open.messages, { producerId: state.producerId, producerSequence: state.sequence, codec: this.codec(), msgIds: this.ids, checked: true });
      bytes = encoded.batch;
      msgIds = encoded.packedMsgIds;
    } catch (err) {
      this.release(open.bytes);
      failRuns(open, err as Error);
      if (this.broadcasts.length > 0) this.pumpBroadcast(); // it may have waited for this batch
      return;
    }
    state.sequence += open.messages.length;
    state.ready.push({ channel, bytes, bufferedBytes: open.bytes, msgIds, runs: open.runs, sent: false, since: open.since, epoch: open.epoch });
    this.pump(channel);
  }

  private pump(channel: number): void {
    const state = this.channels[channel]!;
    // A batch of a later epoch waits for the broadcasts before it.
    while (state.ready.length > 0 && state.inflight.length < this.options.inflightBatchesMax && state.ready[0]!.epoch <= this.broadcastsDone) {
      const batch = state.ready.shift()!;
      state.inflight.push(batch);
      this.transmit(batch);
    }
    // A slot is free and nothing sealed waits: an open batch whose linger is over goes now.
    if (state.ready.length === 0 && state.inflight.length < this.options.inflightBatchesMax && state.open?.due) this.seal(channel);
  }

  private transmit(batch: SealedBatch): void {
    if (!this.connection.isConnected && this.connection.willReconnect) {
      // No connection now: held, as a batch lost with the socket is, and sent in sequence
      // order on reconnect (resendAll) — or failed by deliveryTimeoutMs. (Handed to the
      // connection, it waited there for requestTimeoutMs, out of deliveryTimeoutMs' reach.)
      this.armExpiry();
      return;
    }
    batch.sent = true;
    this.connection.produce(this.topic, batch.channel, batch.bytes, this.topicCreatedAt).then(
      (reply) => this.acknowledged(batch, reply.produceOk?.appends?.[0]),
      (err: WaymarkError) => {
        // A lost connection keeps the batch: it is resent, as the same bytes, on reconnect
        // (when there will be one; without, the sends fail with CONNECTION_LOST).
        // A TIMEOUT is such a loss too: the connection drops a socket that let a request time out.
        if ((err.code === 'CONNECTION_LOST' || err.code === 'TIMEOUT') && this.connection.willReconnect) {
          batch.sent = false;
          this.armExpiry();
          return;
        }
        this.finish(batch);
        failRuns(batch, err);
      },
    );
  }

  private acknowledged(batch: SealedBatch, append: { baseOffset?: number | null; brokerTimestamp?: number | null; duplicate?: boolean | null } | undefined): void {
    this.finish(batch);
    const base = append?.baseOffset ?? 0;
    const brokerTimestamp = append?.brokerTimestamp ?? 0;
    const duplicate = !!append?.duplicate;
    const { runs, channel } = batch;
    const hex = packedMsgIdsToHex(batch.msgIds);
    let i = 0;
    for (let r = 0; r < runs.length; r += runStride) {
      const owner = runs[r] as Owner | ((result: SendResult) => void);
      const first = runs[r + 2] as number;
      const count = runs[r + 3] as number;
      for (let j = 0; j < count; j++, i++) {
        // slice() of a long string makes a view, not a copy (V8 sliced strings).
        const result: SendResult = { msgId: hex.slice(i * 32, i * 32 + 32), channel, offset: base + i, brokerTimestamp, duplicate };
        if (typeof owner === 'function') owner(result);
        else owner.settle(first + j, result);
      }
    }
  }

  private finish(batch: SealedBatch): void {
    const state = this.channels[batch.channel]!;
    const index = state.inflight.indexOf(batch);
    if (index >= 0) state.inflight.splice(index, 1);
    this.release(batch.bufferedBytes);
    this.pump(batch.channel);
    if (this.broadcasts.length > 0) this.pumpBroadcast();
    if (this.isIdle()) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  private release(bytes: number): void {
    this.bufferedBytes = Math.max(0, this.bufferedBytes - bytes);
    if (this.parkedHead < this.parked.length) this.unpark();
  }

  /**
   * While batches wait for a connection, a timer fails what has waited deliveryTimeoutMs:
   * without it, a producer whose broker never comes back keeps every send() pending for ever.
   * Armed when a batch is kept after a lost connection, cleared on reconnect.
   */
  private armExpiry(): void {
    const timeout = this.options.deliveryTimeoutMs;
    if (timeout === 0 || this.expiryTimer || this.closed) return;
    let oldest = Infinity;
    if (this.parkedHead < this.parked.length) oldest = this.parked[this.parkedHead]!.since;
    for (const state of this.channels) {
      for (const batch of state.inflight) if (!batch.sent) oldest = Math.min(oldest, batch.since);
      if (state.ready.length > 0) oldest = Math.min(oldest, state.ready[0]!.since);
      if (state.open && state.open.messages.length > 0) oldest = Math.min(oldest, state.open.since);
    }
    for (const b of this.broadcasts) if (b.state !== 'sent') oldest = Math.min(oldest, b.since);
    if (oldest === Infinity) return;
    this.expiryTimer = setTimeout(() => this.expire(), Math.max(0, oldest + timeout - performance.now()));
  }

  private disarmExpiry(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
  }

  /** Fails every message that has waited deliveryTimeoutMs and is not on its way to the broker; re-arms while others wait. */
  private expire(): void {
    this.expiryTimer = null;
    const timeout = this.options.deliveryTimeoutMs;
    const before = performance.now() - timeout;
    const err = (): WaymarkError =>
      new WaymarkError('TIMEOUT', `not acknowledged within deliveryTimeoutMs (${timeout} ms): the broker at ${this.connection.url} could not be reached; the message may or may not have been stored`);
    // Waiting for room first: failing batches below makes room, and what moves into a batch then is not expired.
    while (this.parkedHead < this.parked.length && this.parked[this.parkedHead]!.since <= before) {
      const p = this.parked[this.parkedHead]!;
      this.parked[this.parkedHead++] = undefined!;
      failRuns({ runs: [p.owner, p.reject, p.slot, 1] }, err());
    }
    for (let channel = 0; channel < this.channels.length; channel++) {
      const state = this.channels[channel]!;
      this.failHeldBatches(state, (b) => b.since <= before, err);
      while (state.ready.length > 0 && state.ready[0]!.since <= before) {
        const batch = state.ready.shift()!;
        this.release(batch.bufferedBytes);
        failRuns(batch, err());
      }
      const open = state.open;
      if (open && open.messages.length > 0 && open.since <= before && state.ready.length === 0) {
        state.open = null;
        if (open.timer && this.options.lingerMs > 0) clearTimeout(open.timer);
        this.release(open.bytes);
        failRuns(open, err());
      }
    }
    // Broadcasts not on the wire, oldest first (each done lets the next and later sends go).
    this.pumpBroadcast();
    while (this.broadcasts.length > 0 && this.broadcasts[0]!.state !== 'sent' && this.broadcasts[0]!.since <= before) {
      const b = this.broadcasts[0]!;
      this.broadcastDone(b);
      b.reject(err());
    }
    if (this.isIdle()) for (const resolve of this.idleWaiters.splice(0)) resolve();
    if (!this.connection.isConnected) this.armExpiry();
  }

  /**
   * The client was closed: batches held for a resend on reconnect will never go, so they
   * fail now. (Everything else fails by itself: each request made from now on is refused.)
   */
  private failHeld(err: WaymarkError): void {
    this.disarmExpiry();
    for (const state of this.channels) this.failHeldBatches(state, () => true, () => err);
    while (this.broadcasts.length > 0 && this.broadcasts[0]!.state !== 'sent') {
      const b = this.broadcasts[0]!;
      this.broadcastDone(b);
      b.reject(err);
    }
  }

  /** Fails the channel's batches held for a resend (in flight, not on the wire) that `which` picks. */
  private failHeldBatches(state: ChannelState, which: (batch: SealedBatch) => boolean, err: () => WaymarkError): void {
    for (const batch of state.inflight.filter((b) => !b.sent && which(b))) {
      this.finish(batch);
      failRuns(batch, err());
    }
  }

  private resendAll(): void {
    // Held channel batches and a held broadcast are never out together (a broadcast goes
    // alone: see pumpBroadcast), so resending each in its own order keeps the order they went in.
    for (const state of this.channels) for (const batch of state.inflight) if (!batch.sent) this.transmit(batch);
    const head = this.broadcasts[0];
    if (head?.state === 'held') this.transmitBroadcast(head);
    else this.pumpBroadcast();
  }

  private isIdle(): boolean {
    return this.parkedHead === this.parked.length && this.broadcasts.length === 0 && this.channels.every((s) => !s.open && s.ready.length === 0 && s.inflight.length === 0);
  }

  /**
   * Sends what is gathered now and resolves when everything sent so far has settled:
   * acknowledged, or failed (each send's own promise says which; flush() never rejects).
   */
  async flush(): Promise<void> {
    for (let c = 0; c < this.channels.length; c++) this.seal(c);
    if (this.isIdle()) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    if (this.closing) {
      if (!this.closed) await this.flush();
      return;
    }
    this.closing = true;
    await this.flush();
    this.closed = true;
    for (const stop of this.stopListening) stop();
  }
}

/** Runs `fn` after the current turn (setImmediate in Node; browsers have only timers). */
const nextTurn: (fn: () => void) => ReturnType<typeof setTimeout> =
  typeof setImmediate === 'function' ? (fn) => setImmediate(fn) as unknown as ReturnType<typeof setTimeout> : (fn) => setTimeout(fn, 0);

function newOpenBatch(epoch: number): OpenBatch {
  return { messages: [], runs: [], bytes: 0, timer: null, due: false, since: 0, epoch };
}

/**
 * At least the bytes a message takes in a batch (a string counts 3 bytes a UTF-16 unit, the
 * most UTF-8 needs; varints at their longest): batches are filled by it up to batchBytesMax,
 * under the format's batch limit. (Header names counted 1 byte a unit once: a batch of
 * messages with long non-ASCII header names came out over the limit and failed whole.)
 */
function sizeOf(message: OutgoingMessage): number {
  const body = typeof message.body === 'string' ? message.body.length * 3 : message.body.length;
  const key = message.key ? message.key.length * 3 + 5 : 0;
  let headers = 0;
  if (message.headers) for (const [name, value] of Object.entries(message.headers)) headers += name.length * 3 + (typeof value === 'string' ? value.length * 3 : value.length) + 10;
  return body + key + headers + recordOverheadMax;
}

/** A record's bytes besides its body, key and headers, at most: length, attributes, offset and time deltas, msgId, counts, deliverAt, body length. */
const recordOverheadMax = 5 + 1 + 5 + 10 + 16 + 5 + 10 + 5;

/** The largest producer sequence the wire carries (an i32; −1 means none). */
const sequenceMax = 0x7fffffff;

/** A random 53-bit producer id. */
function newProducerId(): number {
  const random = new Uint32Array(2);
  globalThis.crypto.getRandomValues(random);
  return (random[0]! & 0x1fffff) * 0x100000000 + random[1]!;
}

/**
 * The options as given, before any is used: 0 or NaN in-flight batches left every send
 * pending for ever. More than 16 in flight is refused: the broker answers resends from a
 * producer's last 16 batches per channel, so the 17th resent after a reconnect failed with
 * DUPLICATE_SEQUENCE although it was stored.
 */
export function checkProducerOptions(options: ProducerOptions): void {
  checkKnown('producer', options, producerOptionNames);
  if (typeof options.topic !== 'string') throw new WaymarkError('INVALID_ARGUMENT', `producer needs a topic (a string), not ${shown(options.topic)}`);
  checkCount('batchMessagesMax', options.batchMessagesMax);
  checkCount('batchBytesMax', options.batchBytesMax);
  checkMs('lingerMs', options.lingerMs);
  checkMs('deliveryTimeoutMs', options.deliveryTimeoutMs);
  checkCount('inflightBatchesMax', options.inflightBatchesMax);
  checkCount('bufferedBytesMax', options.bufferedBytesMax);
  if (options.inflightBatchesMax !== undefined && options.inflightBatchesMax > formatLimits.producerBatchCountMax) {
    throw new WaymarkError('INVALID_ARGUMENT', `inflightBatchesMax must be at most ${formatLimits.producerBatchCountMax} (the batches per producer and channel the broker remembers for resends), not ${options.inflightBatchesMax}`);
  }
  if (options.compression !== undefined && typeof options.compression !== 'boolean') throw new WaymarkError('INVALID_ARGUMENT', `compression must be true or false, not ${String(options.compression)}`);
}

