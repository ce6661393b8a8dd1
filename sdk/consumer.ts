/**
 * Stream-group consumer: subscribes with a credit window (prefetch), decodes and verifies
 * pushed batches, hands messages out in order per channel (async iterator or callback), and
 * commits the group's positions — automatically every `autoCommitIntervalMs`, or when asked.
 *
 * Invariants:
 * - credit flows back to the broker only for batches the application has taken (so at most
 *   prefetchMessages / prefetchBytes are buffered here);
 * - `delivered` per channel is one past the last offset handed out; a reconnect subscribes
 *   again from exactly there and drops what was buffered but not handed out, so a
 *   reconnect never duplicates or skips a message;
 * - the message handed out last (or the messages of the last nextBatch()) is "in hand" until
 *   the application asks for more (next(), nextBatch(), or run()'s handler returning) or
 *   commits (commit() with no message counts everything handed out as done; commit(message)
 *   everything of its channel up to it): what the timer and close() commit stops before it. An
 *   application whose processing failed (a throw out of a for-await loop, a failed run()
 *   handler) gets that message again after a restart; the consumer never commits on its own
 *   a message the application was not done with;
 * - a commit stores those positions (or what the caller passes): after a restart the group
 *   resumes there, so only the uncommitted tail can be seen twice;
 * - the consumer's own commits (the timer's, close()'s) and close()'s unsubscribe never wait
 *   for a connection that is down: close() during an outage settles at once, and rejects with
 *   CONNECTION_LOST when it had positions left to commit (those messages come again).
 */
import { BatchOffset, batchHeaderBytes, readUint32 } from '../engine/format/record-batch';
import { shown, WaymarkError } from '../engine/format/errors';
import { errorFromFrame, type Frame } from '../protocol/frames';
import type { Connection } from './client';
import { channelsPastTheirEnd } from './admin';
import { checkCount, checkKnown, isChannelNumber } from './options';
import { Pull } from './pull';
import { decodeBatchAt, plainBytes, type DecodedBatch, type Message } from './messages';

export type StartAt = 'committed' | 'earliest' | 'latest' | { offsets: Record<number, number> } | { timestamp: number };

/** Every option of ConsumerOptions (checkKnown). */
const consumerOptionNames = ['topic', 'group', 'channels', 'start', 'fallback', 'autoCommitIntervalMs', 'prefetchMessages', 'prefetchBytes'] as const satisfies ReadonlyArray<keyof ConsumerOptions>;

export interface ConsumerOptions {
  topic: string;
  /** The consumer group (Milvus subName). */
  group: string;
  /** Channels to consume (default all). */
  channels?: number[];
  /** Where to start (default "committed", falling back to `fallback`). */
  start?: StartAt;
  fallback?: 'earliest' | 'latest';
  /** Commit delivered positions every this many ms (default 1000); 0 = only explicit commit(). */
  autoCommitIntervalMs?: number;
  prefetchMessages?: number;
  prefetchBytes?: number;
}


export class Consumer implements AsyncIterable<Message> {
  readonly topic: string;
  readonly group: string;
  private subscription = 0;
  private stopPush: (() => void) | null = null;
  /** Messages not yet handed out, each with the credit returned when it is taken. */
  private readonly queue = new MessageQueue();
  /** Received batches not decoded yet, in order: a push's bytes and where its next batch starts (see decodeNext). */
  private readonly undecoded: Array<{ channel: number; bytes: Uint8Array; pos: number; fromOffset: number }> = [];
  private readonly deliveredMap = new Map<number, number>();
  /** The epoch in which each channel's `delivered` last moved by a taken message. */
  private readonly deliveredEpochMap = new Map<number, number>();
  private readonly lastTimestampMap = new Map<number, number>();
  /**
   * The message taken last, and the epoch it was taken in, not yet in the three maps above:
   * take() moves the previous one there only when the channel or epoch changes, and every
   * read of the maps goes through the getters below, which move it first. (Three Map.set per
   * message were a tenth of a consumer's time at two million messages a second.)
   */
  private lastTaken: Message | null = null;
  private lastTakenEpoch = 0;
  private readonly committed = new Map<number, number>();
  /** The message handed out last, until the application moves on from it (see the invariants). */
  private inHand: Message | null = null;
  /** The messages of the last nextBatch(), until the application asks for more (see the invariants). */
  private inHandBatch: Message[] | null = null;
  /** Per channel, where the in-hand batch's messages stop being in hand (commit(message) of one of them). */
  private readonly inHandDone = new Map<number, number>();
  private returnMessages = 0;
  private returnBytes = 0;
  /**
   * Credit granted beyond the window when the broker asked for it (a batch larger than the
   * window): kept back from what later goes back, so the window returns to prefetch instead
   * of growing by every such batch for good.
   */
  private extra: [number, number] = [0, 0];
  private readonly pull = new Pull<Message>();
  private closed = false;
  /** Epoch of the last seek sent; pushes from an older epoch are stale and dropped. */
  private epoch = 0;
  /**
   * Which topic of the name this consumer reads (its creation time, from SubscribeOk): sent
   * with every commit and resubscribe, so that positions read from a topic since deleted and
   * made again are refused (TOPIC_NOT_FOUND) rather than stored for the new one.
   */
  private topicCreatedAt = 0;
  private commitTimer: ReturnType<typeof setInterval> | null = null;
  private readonly options: Required<Omit<ConsumerOptions, 'channels' | 'start'>> & Pick<ConsumerOptions, 'channels' | 'start'>;
  private readonly stopListening: Array<() => void> = [];
  /**
   * A start or seek by a broker time, and the channels that have handed out nothing since.
   * The broker passes over what such a channel gets stamped before that time (a time still
   * ahead when it was placed); a resubscribe (after a reconnect) places those channels by the
   * time again, not at their offsets, or what it passes over came after all (helper-32).
   */
  private timeSought: { timestamp: number; pending: Set<number> } | null = null;
  /** close() was called: run() hands its handler nothing more, though the closing commit still waits. */
  private closing = false;
  /** Per channel, the epoch in which the broker last passed its position over messages (passedOver). */
  private readonly passedEpoch = new Map<number, number>();

  constructor(
    private readonly connection: Connection,
    options: ConsumerOptions,
  ) {
    checkConsumerOptions(options);
    this.topic = options.topic;
    this.group = options.group;
    this.options = {
      ...options,
      fallback: options.fallback ?? 'earliest',
      autoCommitIntervalMs: options.autoCommitIntervalMs ?? 1000,
      prefetchMessages: options.prefetchMessages ?? 10_000,
      prefetchBytes: options.prefetchBytes ?? 8 * 1024 * 1024,
    };
  }

  /** Subscribes (called by client.consumer()). */
  async start(): Promise<void> {
    const start = this.options.start ?? 'committed';
    await this.subscribe(start);
    if (typeof start === 'object' && 'timestamp' in start && start.timestamp > 0) this.timeSought = { timestamp: start.timestamp, pending: new Set(this.delivered.keys()) };
    this.stopListening.push(this.connection.on('reconnect', () => void this.resubscribe()));
    // Without reconnect nothing more will come: what was received goes out, then CONNECTION_LOST.
    this.stopListening.push(this.connection.on('disconnect', () => this.connectionGone()));
    // client.close(): the loop ends (done) — nothing can be committed any more; what was
    // handed out but not committed comes again to the group's next consumer.
    this.stopListening.push(this.connection.on('close', () => this.endLocally()));
    if (this.options.autoCommitIntervalMs > 0) {
      // onlyIfConnected: while the broker is away a tick commits nothing (the first tick after
      // the reconnect does), rather than leaving a commit per tick waiting for the connection.
      this.commitTimer = setInterval(() => void this.commitDone(true).catch(() => undefined), this.options.autoCommitIntervalMs);
      (this.commitTimer as { unref?: () => void }).unref?.();
    }
  }

  /**
   * Subscribes from `start`. `resume` (a resubscribe of channels that came back shorter):
   * the channels without an offset in `start` go by broker time from `resume.timestamp`,
   * and take their positions from the reply.
   */
  private async subscribe(start: StartAt, resume: { timestamp: number; channels: readonly number[] } | null = null): Promise<void> {
    const request: Record<string, unknown> = {
      topic: this.topic,
      group: this.group,
      channels: this.options.channels ?? [],
      fallback: this.options.fallback,
      creditMessages: this.options.prefetchMessages,
      creditBytes: this.options.prefetchBytes,
    };
    if (typeof start === 'string') request.start = start;
    else if ('offsets' in start) request.positions = offsetPositions(start.offsets);
    else request.startTimestamp = start.timestamp;
    if (resume && resume.timestamp > 0) request.startTimestamp = resume.timestamp;
    // The handler is in place before the request leaves: pushes may follow the reply at once.
    this.stopPush?.();
    this.subscription = this.connection.takeSubscriptionId();
    this.epoch = 0;
    // Epochs count the seeks of one subscription: those of the one before would match this
    // one's (a seek after a reconnect was taken as already overtaken by a taken message, and
    // never applied to positions() where nothing was taken since).
    this.deliveredEpoch.clear();
    this.passedEpoch.clear();
    request.subscription = this.subscription;
    // A resubscribe reads the topic this consumer read: one deleted and made again meanwhile
    // is TOPIC_NOT_FOUND (its positions are not the new topic's), as when that happens while connected.
    request.topicCreatedAt = this.topicCreatedAt;
    this.stopPush = this.connection.onPush(this.subscription, (frame) => this.onPush(frame));
    const reply = await this.connection.request({ subscribe: request });
    this.topicCreatedAt = Number(reply.subscribeOk?.topicCreatedAt ?? 0);
    for (const p of reply.subscribeOk?.positions ?? []) {
      if (!this.delivered.has(p.channel ?? 0) || resume?.channels.includes(p.channel ?? 0)) this.delivered.set(p.channel ?? 0, p.offset ?? 0);
      if (!this.committed.has(p.channel ?? 0)) this.committed.set(p.channel ?? 0, p.offset ?? 0);
    }
  }

  private async resubscribe(): Promise<void> {
    if (this.closed) return;
    this.dropQueued();
    this.extra = [0, 0]; // a new subscription starts with the window alone
    // Channels still waiting for a time sought go by that time again (see timeSought).
    const byTime = this.waitingFor();
    const soughtAt = byTime.length > 0 ? this.timeSought!.timestamp : 0;
    try {
      // In the reconnect's own turn (a seek made right after goes to the new subscription).
      try {
        await this.subscribe({ offsets: this.offsetsBut(byTime) }, byTime.length > 0 ? { timestamp: soughtAt, channels: byTime } : null);
      } catch (err) {
        if ((err as WaymarkError).code !== 'OFFSET_OUT_OF_RANGE' || this.closed) throw err;
        // The broker came back with less than it had handed out (sync none/interval and a
        // power loss, a damaged tail cut). Its lost offsets go to new messages — some may be
        // in already — so those channels go on by broker time: from just after the last
        // message handed out (at the earliest such time of them all: at worst a message comes
        // twice, none is skipped). (Resuming at the channel's end skipped what had been
        // appended since the restart.) The others go on from their positions.
        const lost = await channelsPastTheirEnd(this.connection, this.topic, this.delivered);
        if (this.closed) return; // closed meanwhile: no subscription left behind on the broker
        let after = Infinity;
        for (const channel of lost) after = Math.min(after, this.lastTimestamp.get(channel) ?? 0);
        // One start time for both kinds (Subscribe has one): the earlier. None is skipped, but a
        // channel waiting for a time sought may then get what is stamped between the two.
        let timestamp = after > 0 && after < Infinity ? after + 1 : 0;
        if (soughtAt > 0) timestamp = timestamp > 0 ? Math.min(timestamp, soughtAt) : soughtAt;
        const channels = [...new Set([...lost, ...byTime])];
        await this.subscribe({ offsets: this.offsetsBut(channels) }, { timestamp, channels });
      }
    } catch (err) {
      // Lost again before the reply: the next reconnect subscribes again from the same place.
      // Closed meanwhile (client.close(): CLIENT_CLOSED): the consumer has ended, not failed.
      if ((err as WaymarkError).code !== 'CONNECTION_LOST' && !this.closed) this.fail(err as Error);
    }
  }

  private connectionGone(): void {
    const lost = this.connection.lostForGood;
    if (lost && !this.closed) this.pull.failAfterQueued(lost);
  }

  private dropQueued(): void {
    this.queue.clear();
    this.undecoded.length = 0;
    this.returnMessages = 0;
    this.returnBytes = 0;
  }

  private onPush(frame: Frame): void {
    if (frame.error) {
      // The subscription ended (its topic was deleted, a damaged batch): what was pushed before goes out first.
      this.pull.failAfterQueued(errorFromFrame(frame.error));
      return;
    }
    const push = frame.push;
    if (!push) return;
    // Failing (a damaged batch, a lost connection): nothing after it is handed out, so the
    // delivered — and committed — positions never pass what the application did not see.
    if (this.pull.failed) return;
    if ((push.epoch ?? 0) !== this.epoch) {
      // Sent before the broker applied our latest seek: stale; its credit goes back.
      this.giveBack(countRecords(push.batches), push.batches?.length ?? 0);
      return;
    }
    if ((push.needMessages ?? 0) > 0 || (push.needBytes ?? 0) > 0) {
      this.extra[0] += push.needMessages ?? 0;
      this.extra[1] += push.needBytes ?? 0;
      this.grant(push.needMessages ?? 0, push.needBytes ?? 0);
      return;
    }
    const bytes = push.batches;
    if (bytes && bytes.length > 0) this.undecoded.push({ channel: push.channel ?? 0, bytes: plainBytes(bytes), pos: 0, fromOffset: push.startOffset ?? 0 });
    else this.passedOver(push.channel ?? 0, Number(push.nextOffset ?? 0));
    this.wake();
  }

  /**
   * A push with no batches: the broker passed over a channel's messages stamped before a time
   * sought (see Subscription.notBefore) up to `nextOffset`. Nothing of the channel can be in
   * hand or queued (the passing over comes before its first message of the seek), so its
   * position moves there: a commit covers them, or a group resumed from it got them after all.
   */
  private passedOver(channel: number, nextOffset: number): void {
    const delivered = this.delivered;
    if (!delivered.has(channel) || nextOffset <= delivered.get(channel)!) return;
    delivered.set(channel, nextOffset);
    this.passedEpoch.set(channel, this.epoch);
  }

  /**
   * Moves the next received batch into the queue, decoded; false when there is none (or it is
   * damaged: then the pull fails, after what was handed out before it). A push's batches are
   * decoded one at a time as the application reaches them, not all when the push arrives: a
   * push of 1 MiB is ~7,700 messages of 100 B, and decoded at once they all lived through the
   * next scavenges while the application worked through them — a quarter of a consuming
   * process's time went to collecting them.
   */
  private decodeNext(): boolean {
    while (this.queue.size === 0) {
      const next = this.undecoded[0];
      if (!next) return false;
      let batch: DecodedBatch;
      try {
        batch = decodeBatchAt(this.topic, next.channel, next.bytes, next.pos, next.fromOffset);
      } catch (err) {
        // Nothing after a damaged batch is handed out (see onPush).
        this.undecoded.length = 0;
        this.pull.failAfterQueued(err as Error);
        return false;
      }
      next.pos += batch.bytes;
      if (next.pos >= next.bytes.length) this.undecoded.shift();
      const messages = batch.messages;
      if (messages.length === 0) {
        this.giveBack(batch.header.recordCount, batch.bytes); // all before the asked offset
        continue;
      }
      const last = messages.length - 1;
      for (let i = 0; i < last; i++) this.queue.push(messages[i]!, 0, 0);
      this.queue.push(messages[last]!, batch.header.recordCount, batch.bytes);
    }
    return true;
  }

  /** The credit of everything received and not handed out: decoded (queued) or not yet. */
  private bufferedCredit(): { messages: number; bytes: number } {
    const credit = this.queue.credit();
    for (const u of this.undecoded) {
      const rest = u.bytes.subarray(u.pos);
      credit.messages += countRecords(rest);
      credit.bytes += rest.length;
    }
    return credit;
  }

  private wake(): void {
    this.pull.wake(() => this.take());
  }

  private take(): Message | null {
    const queue = this.queue;
    if (queue.size === 0 && !this.decodeNext()) return null;
    const creditMessages = queue.headCreditMessages;
    const creditBytes = queue.headCreditBytes;
    const m = queue.shift();
    this.inHand = m;
    const last = this.lastTaken;
    if (last !== null && (last.channel !== m.channel || this.lastTakenEpoch !== this.epoch)) this.settleTaken();
    this.lastTaken = m;
    this.lastTakenEpoch = this.epoch;
    if (creditMessages > 0) this.giveBack(creditMessages, creditBytes);
    return m;
  }

  /** Moves the message taken last into the per-channel maps (see lastTaken). */
  private settleTaken(): void {
    const m = this.lastTaken;
    if (m === null) return;
    this.lastTaken = null;
    this.deliveredMap.set(m.channel, m.offset + 1);
    this.deliveredEpochMap.set(m.channel, this.lastTakenEpoch);
    this.timeSought?.pending.delete(m.channel);
    this.lastTimestampMap.set(m.channel, m.brokerTimestamp);
  }

  /** Per channel, one past the last offset handed out. */
  private get delivered(): Map<number, number> {
    this.settleTaken();
    return this.deliveredMap;
  }

  private get deliveredEpoch(): Map<number, number> {
    this.settleTaken();
    return this.deliveredEpochMap;
  }

  /** Per channel, the broker time of the last message handed out. */
  private get lastTimestamp(): Map<number, number> {
    this.settleTaken();
    return this.lastTimestampMap;
  }

  /**
   * Returns credit in chunks of a quarter window, so credit frames stay rare. Holding back
   * less than a quarter never starves the broker: what it may still send + what is queued
   * here + what is held back = the window, so with nothing queued the broker holds more than
   * three quarters of it. (Credit used to go back also whenever the queue ran empty: at
   * 10,000 messages a second that was a Credit request for nearly every push.)
   */
  private giveBack(messages: number, bytes: number): void {
    const keepMessages = Math.min(this.extra[0], messages);
    const keepBytes = Math.min(this.extra[1], bytes);
    this.extra[0] -= keepMessages;
    this.extra[1] -= keepBytes;
    this.returnMessages += messages - keepMessages;
    this.returnBytes += bytes - keepBytes;
    if (this.returnMessages >= this.options.prefetchMessages / 4 || this.returnBytes >= this.options.prefetchBytes / 4) {
      const m = this.returnMessages;
      const b = this.returnBytes;
      this.returnMessages = 0;
      this.returnBytes = 0;
      this.grant(m, b);
    }
  }

  private grant(messages: number, bytes: number): void {
    if (this.closed || (messages === 0 && bytes === 0)) return;
    this.connection.request({ credit: { subscription: this.subscription, messages, bytes } }).catch(() => undefined); // lost with the connection; resubscribe restores the window
  }

  private fail(err: Error): void {
    this.pull.fail(err);
  }

  /** The next message (waits for one); the one handed out before counts as done from now on. */
  next(): Promise<IteratorResult<Message>> {
    this.doneWithInHand();
    return this.pull.next(() => this.take(), this.closed);
  }

  /**
   * The messages received and not yet handed out, in order, up to `maxMessages` (1000): waits
   * for at least one; empty once the consumer has ended (closed). What was handed out before
   * counts as done from now on. For high rates: one promise per batch instead of per message
   * (as producer.sendBatch() is for sending).
   */
  async nextBatch(maxMessages = 1000): Promise<Message[]> {
    if (!Number.isSafeInteger(maxMessages) || maxMessages < 1) throw new WaymarkError('INVALID_ARGUMENT', `maxMessages ${maxMessages}: at least 1`);
    this.doneWithInHand();
    const first = await this.pull.next(() => this.take(), this.closed);
    if (first.done) return [];
    const batch = [first.value];
    while (batch.length < maxMessages && !this.closed && !this.pull.failed) {
      const m = this.take();
      if (m === null) break;
      batch.push(m);
    }
    this.inHand = null;
    this.inHandBatch = batch;
    return batch;
  }

  /** nextBatch() as an async iterator: `for await (const messages of consumer.batches())`. */
  batches(maxMessages = 1000): AsyncIterableIterator<Message[]> {
    const iterator: AsyncIterableIterator<Message[]> = {
      next: async () => {
        const batch = await this.nextBatch(maxMessages);
        return batch.length === 0 ? { value: undefined, done: true } : { value: batch, done: false };
      },
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  private doneWithInHand(): void {
    this.inHand = null;
    if (this.inHandBatch !== null) {
      this.inHandBatch = null;
      this.inHandDone.clear();
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<Message> {
    return { next: () => this.next(), return: async () => { await this.close(); return { value: undefined, done: true }; } };
  }

  /**
   * Callback style: runs `handler` for each message in order until close(); a throw or a
   * rejected promise from it stops the run and rejects run(). Messages already received are
   * handed over one after another without a promise each (unless the handler returns one):
   * at 10,000 messages a second, a promise and an iterator result per message were most of
   * a consuming application's garbage, and its collections were the latency tail.
   */
  async run(handler: (message: Message) => Promise<void> | void): Promise<void> {
    for (;;) {
      const r = await this.next();
      if (r.done || this.closing) return; // a message taken while closing stays in hand: not committed, it comes again
      let message: Message | null = r.value;
      let inTurn = 0;
      while (message !== null) {
        const handled = handler(message);
        if (handled) await handled;
        if (this.inHand === message) this.inHand = null; // done: a throw above leaves it in hand, uncommitted
        if (!handled && ++inTurn === runTurnMessagesMax) {
          // A synchronous handler over a full window would hold the thread for all of it:
          // timers (auto-commit, the application's own) ran seconds late.
          inTurn = 0;
          await yieldTurn();
        }
        message = this.closed || this.closing || this.pull.failed ? null : this.take();
      }
    }
  }

  /** What the timer and close() commit, per channel: after the last message done (handed out and not in hand). */
  positions(): Array<{ channel: number; offset: number }> {
    const inHand = this.firstInHand();
    // min: a seek back, or a resume clamped to a channel that came back shorter, can put the
    // channel's position before the message in hand.
    return [...this.delivered].map(([channel, offset]) => ({ channel, offset: Math.min(inHand.get(channel) ?? offset, offset) }));
  }

  /** Per channel, the offset of the first message in hand. */
  private firstInHand(): Map<number, number> {
    const first = new Map<number, number>();
    if (this.inHand !== null) first.set(this.inHand.channel, this.inHand.offset);
    for (const m of this.inHandBatch ?? []) if (!first.has(m.channel) && m.offset >= (this.inHandDone.get(m.channel) ?? 0)) first.set(m.channel, m.offset);
    return first;
  }

  /**
   * Stores the group's positions: after `message` for its channel, or after every message
   * handed out (as Kafka's commitSync()). Either way the application is done with what it
   * commits: the message in hand counts as done.
   */
  async commit(message?: Message): Promise<void> {
    if (!message) {
      this.doneWithInHand();
      return this.commitDone();
    }
    if (message === this.inHand) this.inHand = null;
    // Of an in-hand batch, the message and those of its channel before it are done (the timer
    // would otherwise commit the channel back to the batch's first message).
    // (Only one of the batch, by identity as for the single message in hand: an old message of
    // the channel committed again, with a higher offset after a seek back, is not one of them.)
    if (this.inHandBatch !== null && this.inHandBatch.includes(message)) this.inHandDone.set(message.channel, Math.max(this.inHandDone.get(message.channel) ?? 0, message.offset + 1));
    const positions = [{ channel: message.channel, offset: message.offset + 1, timestamp: message.brokerTimestamp }];
    await this.connection.request({ commit: { topic: this.topic, group: this.group, positions, topicCreatedAt: this.topicCreatedAt } });
    for (const p of positions) this.committed.set(p.channel, p.offset);
  }

  /**
   * Commits positions() where they moved (the timer, close(), commit()). `onlyIfConnected`:
   * while the client is reconnecting, fails at once with CONNECTION_LOST (nothing is sent)
   * instead of waiting for the connection, up to requestTimeoutMs, as requests do.
   */
  private async commitDone(onlyIfConnected = false): Promise<void> {
    const positions = this.positions().filter((p) => this.committed.get(p.channel) !== p.offset).map((p) => ({ ...p, timestamp: this.lastTimestamp.get(p.channel) ?? 0 }));
    if (positions.length === 0) return;
    if (onlyIfConnected && !this.connection.isConnected && !this.connection.isClosed) {
      // Says what was not committed, not where the group stands: `committed` starts from where
      // this consumer started (earliest, a timestamp), which need not be the group's commit.
      const wanted = positions.map((p) => `channel ${p.channel} offset ${p.offset}`).join(', ');
      throw new WaymarkError(
        'CONNECTION_LOST',
        `not connected to ${this.connection.url}: group ${this.group} of ${this.topic} could not commit (${wanted}) and stays at its last commit; the messages handed out since come again to the group`,
      );
    }
    await this.connection.request({ commit: { topic: this.topic, group: this.group, positions, topicCreatedAt: this.topicCreatedAt } });
    for (const p of positions) this.committed.set(p.channel, p.offset);
  }

  /** Moves the consumer: explicit offsets per channel, a broker timestamp, or earliest/latest. */
  async seek(to: { offsets: Record<number, number> } | { timestamp: number } | 'earliest' | 'latest'): Promise<void> {
    checkSeekTarget(to, 'offsets');
    // While the client reconnects: after the subscription is made again (a seek naming the
    // dead one's id was refused, SUBSCRIPTION_NOT_FOUND, and the move lost).
    if (!this.connection.isConnected && !this.closed) await this.connection.whenConnected();
    const request: Record<string, unknown> = { subscription: this.subscription };
    /** Channels that stay placed by the time sought before (timeSought), by this seek's own `timestamp` with positions. */
    let waiting: number[] = [];
    if (typeof to === 'string') request.to = to;
    else if ('offsets' in to) {
      // Every channel moves: those not named to just after the last message handed out. (Only
      // the named ones moved before, but the queue of every channel was dropped and their
      // pushes in flight taken as stale: the other channels' buffered messages were lost.)
      // Those not named that still wait for a time sought stay placed by it (helper-33: at
      // their offsets, the broker gave out what that seek had passed over).
      const named = new Set(offsetPositions(to.offsets).map((p) => p.channel));
      waiting = this.waitingFor(named);
      request.positions = offsetPositions({ ...this.offsetsBut(waiting), ...to.offsets });
      if (waiting.length > 0) request.timestamp = this.timeSought!.timestamp;
    }
    // Time 0 is before every message: the earliest (on the wire 0 means "no timestamp").
    else if (checkSeekTime(to.timestamp) > 0) request.timestamp = to.timestamp;
    else request.to = 'earliest';
    const epoch = ++this.epoch;
    request.epoch = epoch;
    this.dropBufferedForSeek();
    let reply: Frame;
    try {
      reply = await this.connection.request({ seek: request });
    } catch (err) {
      // Refused (OFFSET_OUT_OF_RANGE past a channel's end, say): the broker goes on pushing in
      // the old epoch, which is now stale here, so nothing would ever come again. The consumer
      // goes back to where it was: every channel just after the last message handed out, or
      // by the time sought for those still waiting for it (seekBack).
      if (this.epoch === epoch && !this.closed && !lostOrClosed(err)) await this.seekBack();
      throw err;
    }
    this.applySeek(reply, epoch);
    if (this.epoch === epoch) {
      const timestamp = typeof request.timestamp === 'number' ? request.timestamp : 0;
      // Waiting: the channels this seek placed by a time, but not one that already handed out
      // a message of this seek (its reply and first pushes can come in one read).
      const placed = request.positions ? waiting : (reply.seekOk?.positions ?? []).map((p) => p.channel ?? 0);
      const pending = placed.filter((channel) => this.deliveredEpoch.get(channel) !== epoch);
      this.timeSought = timestamp > 0 && pending.length > 0 ? { timestamp, pending: new Set(pending) } : null;
    }
  }

  /** The channels still waiting for a time sought (timeSought), less `except`. */
  private waitingFor(except: ReadonlySet<number> = new Set()): number[] {
    return this.timeSought ? [...this.timeSought.pending].filter((channel) => !except.has(channel) && this.delivered.has(channel)) : [];
  }

  /** Every channel's offset after the last message handed out, less `except`. */
  private offsetsBut(except: readonly number[]): Record<number, number> {
    return Object.fromEntries([...this.delivered].filter(([channel]) => !except.includes(channel)));
  }

  /**
   * After a refused seek (see seek): every channel back to just after the last message handed
   * out, and those still waiting for a time sought by that time; its own failure fails the consumer.
   */
  private async seekBack(): Promise<void> {
    const waiting = this.waitingFor();
    const epoch = ++this.epoch;
    this.dropBufferedForSeek();
    const request: Record<string, unknown> = { subscription: this.subscription, positions: offsetPositions(this.offsetsBut(waiting)), epoch };
    if (waiting.length > 0) request.timestamp = this.timeSought!.timestamp;
    try {
      this.applySeek(await this.connection.request({ seek: request }), epoch);
    } catch (err) {
      if (!lostOrClosed(err) && !this.closed) this.fail(err as Error);
    }
  }

  /**
   * Buffered messages are from before a seek: dropped, and their credit returned — with the
   * credit of messages already taken and not yet given back (giveBack holds up to a quarter
   * window): the subscription goes on after a seek, and each seek lost that much of its
   * window until the consumer stalled (helper-51). A reconnect's new subscription starts
   * with a whole window instead (resubscribe).
   */
  private dropBufferedForSeek(): void {
    const { messages, bytes } = this.bufferedCredit();
    const owed = [this.returnMessages, this.returnBytes] as const;
    this.dropQueued();
    this.grant(messages + owed[0], bytes + owed[1]);
  }

  /** Pushes of this epoch may have arrived already; positions move only where nothing newer was taken. */
  private applySeek(reply: Frame, epoch: number): void {
    for (const p of reply.seekOk?.positions ?? []) {
      const channel = p.channel ?? 0;
      // Not back over a message taken, or a passing over announced, in this seek's epoch (both can come in the read before its reply).
      if (this.epoch === epoch && this.deliveredEpoch.get(channel) !== epoch && this.passedEpoch.get(channel) !== epoch) this.delivered.set(channel, p.offset ?? 0);
    }
  }

  private endLocally(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.commitTimer) clearInterval(this.commitTimer);
    for (const stop of this.stopListening) stop();
    this.stopPush?.();
    this.dropQueued();
    this.pull.end();
  }

  /**
   * Commits what is done (with auto-commit on), unsubscribes, and ends the consumer's loop.
   * While the client is reconnecting (the broker is down) neither waits for the connection —
   * each waited up to requestTimeoutMs, 30 s by default — so close() settles at once: the
   * unsubscribe is moot (the broker ended the subscription with the connection), and a commit
   * that was due is not made, so close() rejects with CONNECTION_LOST. The group then stays at
   * its last commit and what was handed out since comes again to it, as after a crash.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closing = true; // run() hands out nothing more (its loop went on while the commit below waited)
    if (this.commitTimer) clearInterval(this.commitTimer);
    // The last commit's failure is the caller's to know (`waymark consume` exited 0 when it
    // failed): close() still unsubscribes and ends, then rejects with it.
    let commitFailure: unknown = null;
    if (this.options.autoCommitIntervalMs > 0 && !this.connection.isClosed) await this.commitDone(true).catch((err: unknown) => (commitFailure = err));
    this.closed = true;
    for (const stop of this.stopListening) stop();
    this.stopPush?.();
    if (this.connection.isConnected) await this.connection.request({ unsubscribe: { subscription: this.subscription } }).catch(() => undefined);
    this.pull.end();
    if (commitFailure) throw commitFailure;
  }
}

/**
 * A FIFO ring of messages with, beside each, the credit (records, bytes) returned when it is
 * taken: the last message of a pushed batch carries its batch's, the others 0. A slot is
 * cleared when its message is taken, so the queue holds nothing the application already has
 * (an array with a moving head kept up to a thousand taken messages reachable, and a
 * tail consumer's messages then outlived a scavenge for nothing). Grows by doubling; never
 * shrinks (its size is bounded by the prefetch window).
 */
class MessageQueue {
  private items: Array<Message | undefined> = new Array(64);
  private creditMessages = new Float64Array(64);
  private creditBytes = new Float64Array(64);
  private head = 0;
  size = 0;

  push(message: Message, creditMessages: number, creditBytes: number): void {
    if (this.size === this.items.length) this.grow();
    const at = (this.head + this.size) & (this.items.length - 1);
    this.items[at] = message;
    this.creditMessages[at] = creditMessages;
    this.creditBytes[at] = creditBytes;
    this.size++;
  }

  get headCreditMessages(): number {
    return this.creditMessages[this.head]!;
  }

  get headCreditBytes(): number {
    return this.creditBytes[this.head]!;
  }

  /** Takes the oldest message (size > 0). */
  shift(): Message {
    const m = this.items[this.head]!;
    this.items[this.head] = undefined;
    this.head = (this.head + 1) & (this.items.length - 1);
    this.size--;
    return m;
  }

  /** The credit of every queued message. */
  credit(): { messages: number; bytes: number } {
    let messages = 0;
    let bytes = 0;
    for (let i = 0, at = this.head; i < this.size; i++, at = (at + 1) & (this.items.length - 1)) {
      messages += this.creditMessages[at]!;
      bytes += this.creditBytes[at]!;
    }
    return { messages, bytes };
  }

  clear(): void {
    this.items.fill(undefined);
    this.head = 0;
    this.size = 0;
  }

  private grow(): void {
    const capacity = this.items.length * 2;
    const items: Array<Message | undefined> = new Array(capacity);
    const creditMessages = new Float64Array(capacity);
    const creditBytes = new Float64Array(capacity);
    for (let i = 0, at = this.head; i < this.size; i++, at = (at + 1) & (this.items.length - 1)) {
      items[i] = this.items[at];
      creditMessages[i] = this.creditMessages[at]!;
      creditBytes[i] = this.creditBytes[at]!;
    }
    this.items = items;
    this.creditMessages = creditMessages;
    this.creditBytes = creditBytes;
    this.head = 0;
  }
}

/** Records in a buffer of whole batches (their headers' recordCount). */
export function countRecords(bytes: Uint8Array | null | undefined): number {
  if (!bytes) return 0;
  let count = 0;
  for (let pos = 0; pos + batchHeaderBytes <= bytes.length; ) {
    const length = readUint32(bytes, pos + BatchOffset.batchLength);
    count += readUint32(bytes, pos + BatchOffset.recordCount);
    if (length < batchHeaderBytes) break;
    pos += length;
  }
  return count;
}

/** run() lets timers and I/O in after this many messages handed to a synchronous handler in one turn. */
const runTurnMessagesMax = 1000;

function yieldTurn(): Promise<void> {
  return new Promise((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));
}

/** Start or seek offsets per channel as protocol positions; a negative or fractional offset is INVALID_ARGUMENT (it went out as a wrapped 64-bit number). */
export function offsetPositions(offsets: Record<number, number>): Array<{ channel: number; offset: number }> {
  if (typeof offsets !== 'object' || offsets === null) throw new WaymarkError('INVALID_ARGUMENT', 'offsets: an object of channel → offset');
  return Object.entries(offsets).map(([channel, offset]) => checkPosition(/^\d+$/.test(channel) ? Number(channel) : channel, offset, 'offsets'));
}

/** One {channel, offset} the client sends (a start, a seek), checked: INVALID_ARGUMENT naming `what` otherwise. */
export function checkPosition(channel: unknown, offset: unknown, what: string): { channel: number; offset: number } {
  if (!isChannelNumber(channel)) throw new WaymarkError('INVALID_ARGUMENT', `${what}: channel ${JSON.stringify(channel)} is not a channel number`);
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) throw new WaymarkError('INVALID_ARGUMENT', `${what}: channel ${channel}: offset ${shown(offset)} is not an offset (a number: an integer, 0 or more)`);
  return { channel, offset };
}

/** A `channels` option: absent (all), or an array of channel numbers, at least one ([] read every channel). */
export function checkChannels(channels: unknown): void {
  if (channels !== undefined && (!Array.isArray(channels) || !channels.every(isChannelNumber))) {
    throw new WaymarkError('INVALID_ARGUMENT', 'channels must be an array of channel numbers');
  }
  if (Array.isArray(channels) && channels.length === 0) throw new WaymarkError('INVALID_ARGUMENT', 'channels is empty: name at least one channel, or leave it out for every channel');
}

/**
 * The options a consumer is made with, checked before anything is sent (a window of 0
 * received nothing, for ever; a misspelt `chanels: [1]` read every channel).
 */
function checkConsumerOptions(options: ConsumerOptions): void {
  checkKnown('consumer', options, consumerOptionNames);
  checkCount('prefetchMessages', options.prefetchMessages);
  checkCount('prefetchBytes', options.prefetchBytes);
  checkCount('autoCommitIntervalMs', options.autoCommitIntervalMs, true);
  if (options.fallback !== undefined && options.fallback !== 'earliest' && options.fallback !== 'latest') {
    throw new WaymarkError('INVALID_ARGUMENT', `fallback must be "earliest" or "latest", not ${JSON.stringify(options.fallback)}`);
  }
  checkChannels(options.channels);
  const start = options.start;
  if (start === undefined || start === 'committed' || start === 'earliest' || start === 'latest') return;
  if (typeof start === 'object' && start !== null && 'offsets' in start) offsetPositions(start.offsets);
  else if (typeof start === 'object' && start !== null && 'timestamp' in start) checkSeekTime(start.timestamp);
  else throw new WaymarkError('INVALID_ARGUMENT', `start must be "committed", "earliest", "latest", {offsets} or {timestamp}, not ${JSON.stringify(start)}`);
}

/** A seek's broker time: a whole number of ms, 0 or more (0: from the earliest). */
/**
 * A seek's target, checked before anything moves: 'earliest', 'latest', or an object with
 * `positionsKey` (the consumer's offsets, the msgStream's positions) or a timestamp. Anything
 * else (null, a misspelt string) was a TypeError from deep inside, or a request the broker refused.
 */
export function checkSeekTarget(to: unknown, positionsKey: 'offsets' | 'positions'): void {
  if (to === 'earliest' || to === 'latest') return;
  if (typeof to === 'object' && to !== null && (positionsKey in to || 'timestamp' in to)) return;
  throw new WaymarkError('INVALID_ARGUMENT', `seek takes {${positionsKey}}, {timestamp}, 'earliest' or 'latest', not ${typeof to === 'string' ? JSON.stringify(to) : to === null ? 'null' : typeof to === 'object' ? 'an object without either' : typeof to}`);
}

export function checkSeekTime(timestamp: number): number {
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new WaymarkError('INVALID_ARGUMENT', `seek timestamp ${timestamp}: a broker time in ms, 0 or more`);
  return timestamp;
}

/** The connection is gone or the client closed: a reconnect resubscribes from where the consumer is. */
export function lostOrClosed(err: unknown): boolean {
  const code = (err as WaymarkError).code;
  return code === 'CONNECTION_LOST' || code === 'CLIENT_CLOSED';
}
