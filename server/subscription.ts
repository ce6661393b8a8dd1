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
import { toWaymarkError, type FrameInit } from '../protocol/frames';
import { clampPosition } from './broker';

export interface SubscriptionSink {
  send(frame: FrameInit): void;
  /** False while the socket's unsent bytes are over the limit. */
  writable(): boolean;
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
  /**
   * Bytes the smallest pack was last seen to need (askForPackCredit): the next read may go
   * that far past the usual budget, or a millisecond larger than the budget (one 5 MiB
   * message will do) would be cut at the same place after every grant, for good.
   */
  private packNeedBytes = 0;
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
    this.tickIntervalMs = Math.max(protocolLimits.tickIntervalMsMin, spec.tickIntervalMs);
  }

  /** Starts pushing (called once the SubscribeOk reply is on the wire). */
  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    if (this.packs) {
      this.tickTimer = setInterval(() => this.kick(), this.tickIntervalMs);
    } else {
      for (const channel of this.channels) this.unwatch.push(this.store.watch(this.topic, channel, () => this.kick()));
    }
    this.kick();
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

  /** Moves channels to new offsets (checked against each channel's range). */
  seek(offsets: Map<number, number>, epoch: number, packBeginTs?: number): void {
    for (const [channel, offset] of offsets) {
      if (!this.positions.has(channel)) throw new WaymarkError('CHANNEL_NOT_FOUND', `subscription ${this.id} does not cover channel ${channel}`);
      this.positions.set(channel, clampPosition(offset, this.store.channelState(this.topic, channel), channel));
    }
    if (packBeginTs !== undefined) this.packBeginTs = packBeginTs;
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
    this.closed = true;
    for (const stop of this.unwatch) stop();
    if (this.tickTimer) clearInterval(this.tickTimer);
  }

  private async pump(): Promise<void> {
    try {
      do {
        this.again = false;
        if (this.packs) await this.pumpPack();
        else await this.pumpStream();
      } while (this.again && !this.closed);
    } catch (err) {
      if (!this.closed) {
        const typed = toWaymarkError(err);
        this.close();
        this.sink.send({ id: 0, error: { code: typed.wire, name: typed.code, message: typed.message, subscription: this.id } });
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
  private async readBatches(channel: number, offset: number, maxBytes: number): Promise<BatchRead | null> {
    try {
      return await this.store.readBatches(this.topic, channel, { offset, maxBytes });
    } catch (err) {
      if (!(err instanceof WaymarkError && err.code === 'OFFSET_OUT_OF_RANGE') || offset >= this.store.channelState(this.topic, channel).logStartOffset) throw err;
      this.again = true;
      return null;
    }
  }

  /** Pushes what fits of one channel; true when something was sent. */
  private async pushChannel(channel: number): Promise<boolean> {
    const state = this.store.channelState(this.topic, channel);
    let position = Math.max(this.positions.get(channel)!, state.logStartOffset);
    if (position >= state.highWatermark) return false;
    const generation = this.generation;
    const read = await this.readBatches(channel, position, Math.min(protocolLimits.pushBytesMax, this.creditBytes));
    if (read === null) return false;
    if (this.closed || generation !== this.generation || read.batchCount === 0) return false;
    const spans = batchSpans(read.bytes);
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
    this.sink.send({
      id: 0,
      push: { subscription: this.id, channel, batches: read.bytes.subarray(0, fit.bytes), startOffset, nextOffset: position, highWatermark: this.store.channelState(this.topic, channel).highWatermark, epoch: this.epoch },
    });
    return true;
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
   * Not even the smallest pack fits the credit. A pack cannot split a millisecond: the
   * smallest one holds every batch, in every channel, with the earliest broker time waiting
   * (`t`). Asks for what that needs beyond the credit (at least one unit, so the client
   * always answers), then waits for the grant.
   */
  private askForPackCredit(taken: Map<number, { spans: BatchSpan[] }>, firstLeftOut: BatchSpan): void {
    this.stalled = true;
    let t = firstLeftOut.brokerTimestamp;
    for (const mine of taken.values()) if (mine.spans.length > 0) t = Math.min(t, mine.spans[0]!.brokerTimestamp);
    let messages = 0;
    let bytes = 0;
    for (const mine of taken.values()) {
      for (const span of mine.spans) {
        if (span.brokerTimestamp > t) break;
        messages += span.recordCount;
        bytes += span.length;
      }
    }
    if (firstLeftOut.brokerTimestamp <= t && !Array.from(taken.values()).some((m) => m.spans.includes(firstLeftOut))) {
      messages += firstLeftOut.recordCount; // cut by the read budget, not taken
      bytes += firstLeftOut.length;
    }
    this.packNeedBytes = bytes;
    let needMessages = Math.max(0, messages - this.creditMessages);
    const needBytes = Math.max(0, bytes - this.creditBytes);
    if (needMessages === 0 && needBytes === 0) needMessages = 1;
    this.sink.send({ id: 0, pack: { subscription: this.id, beginTs: this.packBeginTs, endTs: this.packBeginTs, channels: [], needMessages, needBytes, epoch: this.epoch } });
  }

  /**
   * The batches of each channel with broker time ≤ endTs, or the first batch that would
   * pass the credit (then the caller lowers endTs below its time and asks again).
   */
  private selectPack(
    taken: Map<number, { bytes: Buffer[]; spans: BatchSpan[] }>,
    endTs: number,
  ): { channels: Array<{ channel: number; batches: Buffer; startOffset: number; endOffset: number }>; messages: number; bytes: number; cut: BatchSpan | null } {
    const channels: Array<{ channel: number; batches: Buffer; startOffset: number; endOffset: number }> = [];
    let messages = 0;
    let bytes = 0;
    for (const [channel, mine] of taken) {
      const startOffset = this.positions.get(channel)!;
      let count = 0;
      for (const span of mine.spans) {
        if (span.brokerTimestamp > endTs) break;
        if (messages + span.recordCount > this.creditMessages || bytes + span.length > this.creditBytes) return { channels, messages, bytes, cut: span };
        messages += span.recordCount;
        bytes += span.length;
        count++;
      }
      const last = mine.spans[count - 1];
      channels.push({ channel, batches: Buffer.concat(mine.bytes.slice(0, count)), startOffset, endOffset: last ? last.baseOffset + last.recordCount : startOffset });
    }
    return { channels, messages, bytes, cut: null };
  }

  private async pumpPack(): Promise<void> {
    if (!this.canSend()) return;
    let endTs = Infinity;
    for (const channel of this.channels) endTs = Math.min(endTs, this.store.stableTimestamp(this.topic, channel));
    if (endTs <= this.packBeginTs) return;
    const generation = this.generation;
    const budgetBytes = Math.min(this.creditBytes, Math.max(protocolLimits.pushBytesMax * 4, this.packNeedBytes));
    const taken = new Map<number, { bytes: Buffer[]; spans: BatchSpan[] }>();
    let usedBytes = 0;
    let firstLeftOut: BatchSpan | null = null;
    for (const channel of this.channels) {
      const mine = { bytes: [] as Buffer[], spans: [] as BatchSpan[] };
      taken.set(channel, mine);
      let position = Math.max(this.positions.get(channel)!, this.store.channelState(this.topic, channel).logStartOffset);
      channelLoop: while (position < this.store.channelState(this.topic, channel).highWatermark) {
        const read = await this.readBatches(channel, position, Math.max(batchHeaderBytes, budgetBytes - usedBytes));
        if (read === null) return;
        if (this.closed || generation !== this.generation) return;
        if (read.batchCount === 0) break;
        for (const span of batchSpans(read.bytes)) {
          if (span.brokerTimestamp > endTs) break channelLoop;
          if (usedBytes + span.length > budgetBytes) {
            // Over budget: the pack must end before this batch's time, in every channel.
            endTs = Math.min(endTs, span.brokerTimestamp - 1);
            if (!firstLeftOut || span.brokerTimestamp < firstLeftOut.brokerTimestamp) firstLeftOut = span;
            break channelLoop;
          }
          mine.spans.push(span);
          mine.bytes.push(read.bytes.subarray(span.start, span.start + span.length));
          usedBytes += span.length;
          position = span.baseOffset + span.recordCount;
        }
      }
    }
    // Choose the final end time: lower it until every channel's batches up to it fit the credit.
    let chosen = this.selectPack(taken, endTs);
    while (chosen.cut) {
      firstLeftOut ??= chosen.cut;
      endTs = chosen.cut.brokerTimestamp - 1;
      chosen = this.selectPack(taken, endTs);
    }
    if (endTs <= this.packBeginTs) {
      if (firstLeftOut) this.askForPackCredit(taken, firstLeftOut);
      return;
    }
    const { channels, messages, bytes } = chosen;
    const beginTs = this.packBeginTs;
    this.packBeginTs = endTs;
    this.packNeedBytes = 0;
    for (const entry of channels) this.positions.set(entry.channel, entry.endOffset);
    this.creditMessages -= messages;
    this.creditBytes -= bytes;
    this.sink.send({ id: 0, pack: { subscription: this.id, beginTs, endTs, channels, epoch: this.epoch } });
  }
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
