/**
 * One subscription of one connection: pushes whole batches of its channels within the
 * credit the client granted, or time-tick packs.
 *
 * Flow control invariants:
 * - the broker never sends past the grant: a push carries only whole batches whose record
 *   count and bytes fit the remaining credit (a batch is never split: it is sent as stored);
 * - when the next batch alone is larger than the credit left, one push with empty batches
 *   and need_messages/need_bytes tells the client what to grant; nothing else is sent;
 * - nothing is pushed while the socket holds more than socketBufferedBytesMax unsent
 *   bytes; the session's drain handler kicks the pump again. A slow consumer slows only
 *   its own subscriptions.
 *
 * Pack invariants: a pack (begin_ts, end_ts] holds every message of the subscribed channels
 * whose broker time is in that range — end_ts never passes any channel's stable time (see
 * ChannelLog.stableTimestamp), batches share one broker time so a pack never splits one, and
 * the next pack begins where the last one ended.
 */
import { BatchOffset, batchHeaderBytes, readInt64, readUint32, WaymarkError, type BatchRead, type Store } from '../engine/index';
import { protocolLimits } from '../protocol/limits';
import { type FrameInit, type PushFields } from '../protocol/frames';
import { clientError } from './broker';
import { clampPosition } from './broker';

export interface SubscriptionSink {
  send(frame: FrameInit): void;
  /** A push of batches; `batches` may be reused by the caller once this returns. */
  sendPush(fields: PushFields, batches: Uint8Array): void;
  /** False while the socket's unsent bytes are over the limit. */
  writable(): boolean;
  /** The subscription ended itself (an Error push went out, e.g. its topic was deleted): it no longer counts as one of the connection's. */
  ended(id: number): void;
  /** A subscription started (+1) or a started one closed (−1): the broker's count of live ones. */
  counted(delta: 1 | -1): void;
}

export interface SubscriptionSpec {
  id: number;
  topic: string;
  group: string;
  positions: Map<number, number>;
  creditMessages: number;
  creditBytes: number;
  packs: boolean;
  tickIntervalMs: number;
  /** Packs: the begin time of the first pack. */
  packBeginTs: number;
  /** The channels placed by a start time, and that time (see Subscription.notBefore). */
  byTime?: { channels: readonly number[]; timestamp: number };
  /** The topic the positions were found in (Store.topicIncarnation; else the one there now). */
  incarnation?: number;
}

interface BatchSpan {
  start: number; // byte position in the read buffer
  length: number;
  baseOffset: number;
  recordCount: number;
  brokerTimestamp: number;
}

export class Subscription {
  readonly id: number;
  readonly topic: string;
  readonly group: string;
  private readonly positions: Map<number, number>;
  private readonly channels: number[];
  private creditMessages: number;
  private creditBytes: number;
  private readonly packs: boolean;
  private readonly tickIntervalMs: number;
  private packBeginTs = 0;
  private pumping = false;
  private again = false;
  private stalled = false;
  private closed = false;
  private started = false;
  /** Bumped by seek: a read that started before a seek is dropped, not pushed. */
  private generation = 0;
  /** The client's epoch of the last seek, echoed in every push. */
  private epoch = 0;
  private nextChannel = 0;
  private readonly unwatch: Array<() => void> = [];
  private tickTimer: NodeJS.Timeout | null = null;
  /**
   * Channels placed by a time (a start time, a seek to a time) whose first message at or
   * after it has not been reached yet, and that time. offsetForTime puts a channel at its end
   * when the time is still ahead of the broker's clock (a client's clock runs ahead); what is
   * appended there before the clock gets to it is stamped earlier, and is skipped — as such
   * messages already in the log are — instead of handed out by a seek that asked for later
   * ones, or put in a pack whose range does not hold its time.
   */
  private readonly notBefore = new Map<number, number>();
  /** The topic subscribed to (Store.topicIncarnation): one of the same name made later is another topic. */
  private readonly incarnation: number;
  /** The last seek queued (inSeekTurn); never rejects. */
  private seeking: Promise<void> = Promise.resolve();

  constructor(
    spec: SubscriptionSpec,
    private readonly store: Store,
    private readonly sink: SubscriptionSink,
  ) {
    this.id = spec.id;
    this.topic = spec.topic;
    this.group = spec.group;
    this.positions = spec.positions;
    this.channels = [...spec.positions.keys()];
    this.creditMessages = spec.creditMessages;
    this.creditBytes = spec.creditBytes;
    this.packs = spec.packs;
    this.packBeginTs = spec.packBeginTs;
    for (const channel of spec.byTime?.channels ?? []) this.notBefore.set(channel, spec.byTime!.timestamp);
    this.tickIntervalMs = Math.min(Math.max(protocolLimits.tickIntervalMsMin, spec.tickIntervalMs), protocolLimits.tickIntervalMsMax);
    this.incarnation = spec.incarnation ?? store.topicIncarnation(spec.topic);
    this.checkTopic();
  }

  /**
   * Throws TOPIC_NOT_FOUND when the topic of this name is no longer the one subscribed to.
   * Asked before every read and after it: the channels are looked up by name, so a topic
   * deleted and made again while one channel's read was under way had the next channel read
   * (and pushed) from the new topic at the old one's positions (helper-58).
   */
  private checkTopic(): void {
    let now: number;
    try {
      now = this.store.topicIncarnation(this.topic); // STORE_CLOSED once the store is (not "deleted")
    } catch (err) {
      if (!(err instanceof WaymarkError && err.code === 'TOPIC_NOT_FOUND')) throw err;
      now = -1;
    }
    if (now !== this.incarnation) throw new WaymarkError('TOPIC_NOT_FOUND', `topic ${this.topic} was deleted`);
  }

  /** Starts pushing (called once the SubscribeOk reply is on the wire). */
  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    this.sink.counted(1);
    if (this.packs) {
      this.tickTimer = setInterval(() => this.kick(), this.tickIntervalMs);
    } else {
      for (const channel of this.channels) this.unwatch.push(this.store.watch(this.topic, channel, () => this.kick()));
    }
    this.kick();
  }

  /** Packs: the beginTs of the next pack it sends (0 for a stream subscription). */
  get nextPackBeginTs(): number {
    return this.packs ? this.packBeginTs : 0;
  }

  /** Closed: unsubscribed, its connection gone, or ended by the broker (its topic deleted). */
  get ended(): boolean {
    return this.closed;
  }

  currentPositions(): Array<{ channel: number; offset: number }> {
    return this.channels.map((channel) => ({ channel, offset: this.positions.get(channel)! }));
  }

  grant(messages: number, bytes: number): void {
    this.creditMessages = Math.min(this.creditMessages + messages, Number.MAX_SAFE_INTEGER);
    this.creditBytes = Math.min(this.creditBytes + bytes, Number.MAX_SAFE_INTEGER);
    this.stalled = false;
    this.kick();
  }

  /** Runs `seek` once every seek sent before it is done (see Session.seek). */
  inSeekTurn<T>(seek: () => Promise<T>): Promise<T> {
    const turn = this.seeking.then(seek);
    this.seeking = turn.then(
      () => undefined,
      () => undefined,
    );
    return turn;
  }

  /**
   * Moves channels to new offsets (checked against each channel's range); `byTime`: the
   * channels placed by a time (all of `offsets` when not said), and that time (see notBefore).
   */
  seek(offsets: Map<number, number>, epoch: number, packBeginTs?: number, byTime?: { timestamp: number; channels?: readonly number[] }): void {
    this.checkTopic();
    // Every channel is checked before any moves: a refused seek is not applied at all (a
    // position past its channel's end moved the channels listed before it, in the old epoch).
    const moved = new Map<number, number>();
    for (const [channel, offset] of offsets) {
      if (!this.positions.has(channel)) throw new WaymarkError('CHANNEL_NOT_FOUND', `subscription ${this.id} does not cover channel ${channel}`);
      moved.set(channel, clampPosition(offset, this.store.channelState(this.topic, channel), channel));
    }
    for (const [channel, offset] of moved) this.positions.set(channel, offset);
    if (packBeginTs !== undefined) this.packBeginTs = packBeginTs;
    this.notBefore.clear();
    if (byTime !== undefined) for (const channel of byTime.channels ?? offsets.keys()) this.notBefore.set(channel, byTime.timestamp);
    this.epoch = epoch;
    this.generation++;
    this.stalled = false;
    this.kick();
  }

  kick(): void {
    if (this.closed || !this.started) return;
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    void this.pump();
  }

  close(): void {
    if (this.started && !this.closed) this.sink.counted(-1);
    this.closed = true;
    for (const stop of this.unwatch) stop();
    if (this.tickTimer) clearInterval(this.tickTimer);
  }

  private async pump(): Promise<void> {
    try {
      do {
        this.again = false;
        // Checked before the credit: a subscription without credit left (a deleted topic's
        // watchers kick it) went on, after a re-create, into the new topic at its old positions.
        this.checkTopic();
        if (this.packs) await this.pumpPack();
        else await this.pumpStream();
      } while (this.again && !this.closed);
    } catch (err) {
      if (!this.closed) {
        const typed = clientError(err, this.store.dir);
        this.close();
        this.sink.send({ id: 0, error: { code: typed.wire, name: typed.code, message: typed.message, subscription: this.id } });
        this.sink.ended(this.id);
      }
    } finally {
      this.pumping = false;
    }
  }

  private canSend(): boolean {
    return !this.closed && !this.stalled && this.creditMessages > 0 && this.creditBytes > 0 && this.sink.writable();
  }

  private async pumpStream(): Promise<void> {
    let progress = true;
    while (progress && this.canSend()) {
      progress = false;
      for (let i = 0; i < this.channels.length && this.canSend(); i++) {
        const channel = this.channels[(this.nextChannel + i) % this.channels.length]!;
        if (await this.pushChannel(channel)) progress = true;
      }
      this.nextChannel = (this.nextChannel + 1) % this.channels.length;
    }
  }

  /**
   * store.readBatches, or null when retention deleted the segment under the read (the offset
   * is now before the log start): the pump goes round again and starts at the log start.
   */
  private async readBatches(channel: number, offset: number, maxBytes: number, maxMessages?: number, buffer?: Buffer): Promise<BatchRead | null> {
    // Checked before (by pushChannel and refill, which look the channel up first) and after.
    try {
      const read = await this.store.readBatches(this.topic, channel, { offset, maxBytes, maxMessages, buffer });
      this.checkTopic();
      return read;
    } catch (err) {
      this.checkTopic(); // a read the delete cut short: the topic's end, not a position to move
      if (!(err instanceof WaymarkError && err.code === 'OFFSET_OUT_OF_RANGE') || offset >= this.store.channelState(this.topic, channel).logStartOffset) throw err;
      this.again = true;
      return null;
    }
  }

  /** Pushes what fits of one channel; true when something was sent. */
  private async pushChannel(channel: number): Promise<boolean> {
    this.checkTopic();
    const state = this.store.channelState(this.topic, channel);
    let position = Math.max(this.positions.get(channel)!, state.logStartOffset);
    if (position >= state.highWatermark) return false;
    const generation = this.generation;
    // Read no more than the credit can take: with credit coming back a quarter window at a
    // time, a read of pushBytesMax would mostly be thrown away.
    const buffer = readBuffers.take();
    try {
      const read = await this.readBatches(channel, position, Math.min(protocolLimits.pushBytesMax, this.creditBytes), this.creditMessages, buffer);
      if (read === null) return false;
      if (this.closed || generation !== this.generation || read.batchCount === 0) return false;
      // Checked again after the read: every subscription of the connection may have passed the
      // check before it at once, and their pushes together went past µWS's limit (dropped
      // frames: a consumer skipped messages). Nothing has moved yet; the drain kicks the pump.
      if (!this.sink.writable()) return false;
      let spans = batchSpans(read.bytes);
      const notBefore = this.notBefore.get(channel);
      if (notBefore !== undefined) {
        let first = 0;
        while (first < spans.length && spans[first]!.brokerTimestamp < notBefore) first++;
        if (first < spans.length) this.notBefore.delete(channel);
        if (first > 0) {
          const skipped = spans[first - 1]!;
          position = skipped.baseOffset + skipped.recordCount;
          this.positions.set(channel, position);
          if (first === spans.length) {
            // Said to the client (a push with no batches, next_offset past them): it commits
            // its position past what was passed over, or a group resumed from its commit got
            // those messages after all.
            const highWatermark = this.store.channelState(this.topic, channel).highWatermark;
            this.sink.sendPush({ subscription: this.id, channel, startOffset: position, nextOffset: position, highWatermark, epoch: this.epoch }, new Uint8Array(0));
            return true; // read on from there
          }
          spans = spans.slice(first);
        }
      }
      const fit = this.fitting(spans);
      if (fit.count === 0) {
        this.askForCredit(spans[0]!, channel);
        return false;
      }
      const last = spans[fit.count - 1]!;
      const startOffset = position;
      position = last.baseOffset + last.recordCount;
      this.positions.set(channel, position);
      this.creditMessages -= fit.messages;
      this.creditBytes -= fit.bytes;
      const highWatermark = this.store.channelState(this.topic, channel).highWatermark;
      const from = spans[0]!.start;
      this.sink.sendPush({ subscription: this.id, channel, startOffset, nextOffset: position, highWatermark, epoch: this.epoch }, read.bytes.subarray(from, from + fit.bytes));
      return true;
    } finally {
      readBuffers.give(buffer);
    }
  }

  /** The longest prefix of spans within the remaining credit. */
  private fitting(spans: readonly BatchSpan[], messagesUsed = 0, bytesUsed = 0): { count: number; messages: number; bytes: number } {
    let messages = 0;
    let bytes = 0;
    let count = 0;
    for (const span of spans) {
      if (messagesUsed + messages + span.recordCount > this.creditMessages || bytesUsed + bytes + span.length > this.creditBytes) break;
      messages += span.recordCount;
      bytes += span.length;
      count++;
    }
    return { count, messages, bytes };
  }

  private askForCredit(span: BatchSpan, channel: number): void {
    this.stalled = true;
    const needMessages = Math.max(0, span.recordCount - this.creditMessages);
    const needBytes = Math.max(0, span.length - this.creditBytes);
    this.sink.send({ id: 0, push: { subscription: this.id, channel, startOffset: this.positions.get(channel)!, nextOffset: this.positions.get(channel)!, needMessages, needBytes, epoch: this.epoch } });
  }

  /**
   * A pack: every batch of the subscribed channels with broker time in (packBeginTs, endTs],
   * taken in broker-time order across the channels (a merge over per-channel reads), a whole
   * millisecond at a time (a pack cannot split one), while they fit the credit. endTs is the
   * channels' stable time when everything up to it was taken, else the last millisecond
   * taken: every channel is cut at the same time, whatever its rate. (Read channel by channel
   * against one budget, as before, the first channel could use the whole budget and the
   * others' first batches set endTs back to before the pack's start: over a backlog spread
   * across channels the broker asked for one message of credit at a time, for ever.)
   *
   * Memory: each channel reads budget/channels bytes at a time (at least one batch); the
   * merge stops once the pack holds the budget. When even the first millisecond does not fit
   * the credit, one empty pack asks for what it needs and nothing else is sent.
   */
  private async pumpPack(): Promise<void> {
    if (!this.canSend()) return;
    let endTs = Infinity;
    for (const channel of this.channels) endTs = Math.min(endTs, this.store.stableTimestamp(this.topic, channel));
    if (endTs <= this.packBeginTs) return;
    const generation = this.generation;
    const budgetBytes = Math.min(this.creditBytes, protocolLimits.pushBytesMax * 4);
    const readBytes = Math.max(batchHeaderBytes, Math.floor(budgetBytes / this.channels.length));
    const cursors: PackCursor[] = this.channels.map((channel) => ({
      channel,
      position: Math.max(this.positions.get(channel)!, this.store.channelState(this.topic, channel).logStartOffset),
      spans: [],
      next: 0,
      done: false,
      taken: [],
      endOffset: this.positions.get(channel)!,
    }));
    // A batch stamped at or before the pack's start (not expected: positions and packBeginTs
    // move together) counts as the pack's first millisecond, so it still lands inside it.
    const timeOf = (span: PackSpan): number => Math.max(span.brokerTimestamp, this.packBeginTs + 1);
    /** Channels whose first batch at or after their notBefore time was read (it stops applying once this pack is sent). */
    const reached = new Set<number>();
    /** Reads a channel's next batches into its cursor; false when the pump must stop (a seek, a close, retention). */
    const refill = async (cursor: PackCursor): Promise<boolean> => {
      this.checkTopic();
      if (cursor.position >= this.store.channelState(this.topic, cursor.channel).highWatermark) {
        cursor.done = true;
        return true;
      }
      const read = await this.readBatches(cursor.channel, cursor.position, readBytes);
      if (read === null || this.closed || generation !== this.generation) return false;
      const spans = batchSpans(read.bytes);
      if (spans.length === 0) {
        cursor.done = true;
        return true;
      }
      for (const span of spans) {
        const notBefore = reached.has(cursor.channel) ? undefined : this.notBefore.get(cursor.channel);
        if (notBefore !== undefined) {
          // Stamped before the time the channel was placed at: passed over (see notBefore).
          if (span.brokerTimestamp < notBefore) {
            cursor.endOffset = span.baseOffset + span.recordCount; // nothing of the channel is taken before it
            continue;
          }
          reached.add(cursor.channel);
        }
        cursor.spans.push({ ...span, bytes: read.bytes.subarray(span.start, span.start + span.length) });
      }
      const last = spans[spans.length - 1]!;
      cursor.position = last.baseOffset + last.recordCount;
      return true;
    };
    let messages = 0;
    let bytes = 0;
    for (;;) {
      let t = Infinity;
      for (const cursor of cursors) {
        // Until it has a batch or is at its end: a read whose batches were all passed over
        // (stamped before the channel's notBefore) left it without a head, and the merge took a
        // later millisecond of another channel first — a pack then held a message past its endTs,
        // and the next pack a message before its beginTs (helper-32).
        while (cursor.next >= cursor.spans.length && !cursor.done) if (!(await refill(cursor))) return;
        const head = cursor.spans[cursor.next];
        if (head) t = Math.min(t, timeOf(head));
      }
      if (t > endTs) break; // everything up to the stable time is in
      // The whole millisecond t, in every channel (a channel's run of it may go on past its read).
      let msMessages = 0;
      let msBytes = 0;
      const ends: number[] = [];
      for (const cursor of cursors) {
        let k = cursor.next;
        for (;;) {
          while (k < cursor.spans.length && timeOf(cursor.spans[k]!) === t) {
            msMessages += cursor.spans[k]!.recordCount;
            msBytes += cursor.spans[k]!.length;
            k++;
          }
          if (k < cursor.spans.length || cursor.done) break;
          if (messages + msMessages > this.creditMessages || bytes + msBytes > this.creditBytes) break; // does not fit anyway
          if (!(await refill(cursor))) return;
        }
        ends.push(k);
      }
      if (messages + msMessages > this.creditMessages || bytes + msBytes > this.creditBytes) {
        if (messages === 0) {
          this.askForPackCredit(msMessages, msBytes);
          return;
        }
        endTs = t - 1;
        break;
      }
      cursors.forEach((cursor, i) => {
        for (; cursor.next < ends[i]!; cursor.next++) {
          const span = cursor.spans[cursor.next]!;
          cursor.taken.push(span.bytes);
          cursor.endOffset = span.baseOffset + span.recordCount;
        }
      });
      messages += msMessages;
      bytes += msBytes;
      if (bytes >= budgetBytes) {
        endTs = t;
        break;
      }
    }
    if (!this.sink.writable()) return; // as in pushChannel: nothing has moved yet; the drain kicks the pump
    const beginTs = this.packBeginTs;
    this.packBeginTs = endTs;
    for (const channel of reached) this.notBefore.delete(channel);
    const channels = cursors.map((cursor) => {
      const startOffset = this.positions.get(cursor.channel)!;
      this.positions.set(cursor.channel, cursor.endOffset);
      return { channel: cursor.channel, batches: Buffer.concat(cursor.taken), startOffset, endOffset: cursor.endOffset };
    });
    this.creditMessages -= messages;
    this.creditBytes -= bytes;
    this.sink.send({ id: 0, pack: { subscription: this.id, beginTs, endTs, channels, epoch: this.epoch } });
  }

  /**
   * Not even the pack's first millisecond fits the credit (it holds `messages` and `bytes`,
   * or more: reading stopped once they passed it). Asks for what that needs beyond the
   * credit (at least one unit, so the client always answers), then waits for the grant.
   */
  private askForPackCredit(messages: number, bytes: number): void {
    this.stalled = true;
    let needMessages = Math.max(0, messages - this.creditMessages);
    const needBytes = Math.max(0, bytes - this.creditBytes);
    if (needMessages === 0 && needBytes === 0) needMessages = 1;
    this.sink.send({ id: 0, pack: { subscription: this.id, beginTs: this.packBeginTs, endTs: this.packBeginTs, channels: [], needMessages, needBytes, epoch: this.epoch } });
  }
}

interface PackSpan extends BatchSpan {
  bytes: Uint8Array;
}

/**
 * Read buffers of pushBytesMax lent to stream pushes: taken before the read, given back
 * once the push is on the socket (which copies it). At most `pooled` are ever made; when all
 * are lent (more subscriptions reading at once, as every tailing subscription of a channel
 * does when an append lands), a read gets none and the engine allocates just what it reads —
 * a megabyte made for a 100-byte push to each of 64 subscribers cost 18 GiB of allocations for
 * 300 messages.
 */
const readBuffers = {
  free: [] as Buffer[],
  made: 0,
  pooled: 4,
  take(): Buffer | undefined {
    const free = this.free.pop();
    if (free !== undefined || this.made >= this.pooled) return free;
    this.made++;
    return Buffer.allocUnsafe(protocolLimits.pushBytesMax);
  },
  give(buffer: Buffer | undefined): void {
    if (buffer !== undefined) this.free.push(buffer);
  },
};

/** A channel's read position in pumpPack's merge: batches read (`spans`), the next one to take, those taken. */
interface PackCursor {
  channel: number;
  /** Where the next read starts. */
  position: number;
  spans: PackSpan[];
  next: number;
  /** Nothing more to read (the high watermark). */
  done: boolean;
  taken: Uint8Array[];
  /** One past the last record taken (the channel's start position while none is). */
  endOffset: number;
}

/** The batches in a buffer of whole batches (validated when written; read without checks). */
export function batchSpans(bytes: Uint8Array): BatchSpan[] {
  const spans: BatchSpan[] = [];
  for (let pos = 0; pos + batchHeaderBytes <= bytes.length; ) {
    const length = readUint32(bytes, pos + BatchOffset.batchLength);
    if (length < batchHeaderBytes || pos + length > bytes.length) break;
    spans.push({
      start: pos,
      length,
      baseOffset: readInt64(bytes, pos + BatchOffset.baseOffset),
      recordCount: readUint32(bytes, pos + BatchOffset.recordCount),
      brokerTimestamp: readInt64(bytes, pos + BatchOffset.brokerTimestamp),
    });
    pos += length;
  }
  return spans;
}
