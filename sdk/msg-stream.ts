/**
 * msgStream: Milvus' MsgStream shape over a Waymark topic, whose channels are the stream's
 * channels. AsProducer / SetRepackFunc / Produce / Broadcast on the producing side;
 * AsConsumer / Chan (async iterator of MsgPacks) / Seek on the consuming side, where each
 * MsgPack holds every message of the consumed channels with broker time in (beginTs, endTs]
 * — time-tick packs, so several channels are consumed in lockstep.
 *
 * Invariants (consuming side):
 * - `resume` is where the stream stands for the application: per channel one past the last
 *   message of the packs handed out, and the end time of the last of them (the next pack's
 *   beginTs);
 * - a reconnect subscribes again from `resume` with the same packs options, and drops the
 *   packs received but not handed out, so packs keep chaining and no message is lost or
 *   handed out twice (a subscription dies with its socket: without this the stream waited
 *   for ever, with no error).
 */
import { WaymarkError } from '../engine/format/errors';
import { errorFromFrame, type Frame } from '../protocol/frames';
import type { Connection } from './client';
import { channelsPastTheirEnd } from './admin';
import { checkChannels, checkPosition, checkSeekTarget, checkSeekTime, lostOrClosed } from './consumer';
import { checkCount, checkKnown, checkMs } from './options';
import { Pull } from './pull';
import { decodeBatches, type Message } from './messages';
import { packBeginOf } from '../protocol/positions';
import { Producer, type OutgoingMessage, type SendResult } from './producer';

export interface MsgPosition {
  channel: number;
  offset: number;
  /**
   * The broker time the position stands at: a pack's beginTs in its startPositions, its endTs
   * in its endPositions (as Milvus' MsgPosition carries its time tick). A seek or start at
   * positions that all carry the same time goes on with a pack beginning there; committed,
   * it is kept with the group's position. Optional (0: none).
   */
  timestamp?: number;
}

export interface MsgPack {
  beginTs: number;
  endTs: number;
  msgs: Message[];
  startPositions: MsgPosition[];
  endPositions: MsgPosition[];
}

/** Splits a pack's messages over channels (Milvus RepackFunc); default: by key hash, keyless round robin. */
export type RepackFunc = (msgs: readonly OutgoingMessage[], channelCount: number, route: (m: OutgoingMessage) => number) => Map<number, OutgoingMessage[]>;

/** Every option of AsConsumerOptions (checkKnown). */
const asConsumerOptionNames = ['start', 'channels', 'tickIntervalMs', 'prefetchMessages', 'prefetchBytes'] as const satisfies ReadonlyArray<keyof AsConsumerOptions>;

export interface AsConsumerOptions {
  start?: 'committed' | 'earliest' | 'latest' | { timestamp: number } | { positions: MsgPosition[] };
  channels?: number[];
  tickIntervalMs?: number;
  prefetchMessages?: number;
  prefetchBytes?: number;
}

export class MsgStream implements AsyncIterable<MsgPack> {
  private producer: Producer | null = null;
  private repack: RepackFunc | null = null;
  /** `topicCreatedAt`: which topic of the name it reads (SubscribeOk), sent with commits and resubscribes (see Consumer). */
  private consuming: { topic: string; group: string; subscription: number; channels: number[]; tickIntervalMs: number; topicCreatedAt: number } | null = null;
  /**
   * Where a resubscribe starts: after the last pack handed out (its end positions and time),
   * or, while no pack has been handed out since a start or seek by time (`byTime`), by that
   * time again for the channels it placed (null: every channel) — at positions, what the
   * broker passes over because it was stamped before a time still ahead would come after all
   * (helper-32). A later seek of some channels by positions leaves the others waiting.
   */
  private resume: { positions: Map<number, number>; beginTs: number; byTime: { timestamp: number; channels: Set<number> | null } | null } = { positions: new Map(), beginTs: 0, byTime: null };
  /** Whether a channel is still placed by a time sought (resume.byTime). */
  private waitingForTime(channel: number): boolean {
    const byTime = this.resume.byTime;
    return byTime !== null && (byTime.channels === null || byTime.channels.has(channel));
  }

  /** The epoch of the last pack handed out (resume moved in it). */
  private resumeEpoch = 0;
  private stopPush: (() => void) | null = null;
  private stopReconnect: (() => void) | null = null;
  private readonly packs: Array<{ pack: MsgPack; credit: [number, number] }> = [];
  private readonly pull = new Pull<MsgPack>();
  private failed = false;
  private closed = false;
  /** Its consumer side was closed (a loop over its packs left): asConsumer is refused from then on. */
  private consumerClosed = false;
  private prefetch: [number, number] = [10_000, 8 * 1024 * 1024];
  /** Credit granted past the window on the broker's asking, not yet taken back (messages, bytes). */
  private extra: [number, number] = [0, 0];
  private epoch = 0;

  constructor(private readonly connection: Connection) {}

  async asProducer(topic: string): Promise<void> {
    const info = await this.connection.request({ describeTopic: { topic } });
    this.producer = new Producer(this.connection, { topic }, info.topicInfo?.channels ?? 1, Number(info.topicInfo?.createdAt ?? 0));
  }

  setRepackFunc(repack: RepackFunc): void {
    this.repack = repack;
  }

  private needProducer(): Producer {
    if (!this.producer) throw new WaymarkError('INVALID_ARGUMENT', 'call asProducer(topic) first');
    return this.producer;
  }

  /**
   * Sends every message of the pack to the channel the repack function picks, as one
   * sendBatch: every message is checked before any is queued (a bad one refuses the whole
   * pack, nothing stored). Results come in the pack's order; when the repack function hands
   * back messages other than the pack's own objects, in the order of its groups.
   */
  async produce(pack: { msgs: OutgoingMessage[] }): Promise<SendResult[]> {
    const producer = this.needProducer();
    if (!this.repack) return producer.sendBatch(pack.msgs);
    const route = (m: OutgoingMessage): number => producer.channelFor(m);
    const groups = this.repack(pack.msgs, producer.channelCount, route);
    const routed: OutgoingMessage[] = [];
    const sources: OutgoingMessage[] = [];
    for (const [channel, msgs] of groups) {
      for (const m of msgs) {
        routed.push({ ...m, channel });
        sources.push(m);
      }
    }
    const results = await producer.sendBatch(routed);
    return inPackOrder(pack.msgs, sources, results);
  }

  /**
   * Sends every message of the pack to every channel: per message, one result per channel. The
   * pack is checked first (a bad message, with its index, sends none of them); it goes after
   * everything produced on this stream before the call and before anything produced after it,
   * and a broadcast cut short by a broker crash is completed on reconnect, never doubled
   * (Producer.broadcastBatch).
   */
  async broadcast(pack: { msgs: OutgoingMessage[] }): Promise<SendResult[][]> {
    const producer = this.needProducer();
    return producer.broadcastBatch(pack.msgs);
  }

  /** Subscribes `subName` to the topic's channels as time-tick packs. */
  async asConsumer(topic: string, subName: string, options: AsConsumerOptions = {}): Promise<void> {
    if (this.closed || this.consumerClosed) throw new WaymarkError('CLIENT_CLOSED', 'this msgStream\'s consumer is closed: consume with a new msgStream');
    if (this.consuming) {
      // A second subscription would have left the first one open on the broker for good.
      throw new WaymarkError('INVALID_ARGUMENT', `this msgStream consumes ${this.consuming.topic} as ${this.consuming.group} already: close it, or use another msgStream`);
    }
    checkKnown('asConsumer', options, asConsumerOptionNames);
    checkCount('prefetchMessages', options.prefetchMessages);
    checkCount('prefetchBytes', options.prefetchBytes);
    checkMs('tickIntervalMs', options.tickIntervalMs);
    checkChannels(options.channels);
    this.prefetch = [options.prefetchMessages ?? 10_000, options.prefetchBytes ?? 8 * 1024 * 1024];
    const start = options.start ?? 'committed';
    const request: Record<string, unknown> = {};
    if (start === 'committed' || start === 'earliest' || start === 'latest') request.start = start;
    else if (typeof start === 'object' && start !== null && 'timestamp' in start) request.startTimestamp = checkSeekTime(start.timestamp);
    else if (typeof start === 'object' && start !== null && 'positions' in start) request.positions = checkPositions(start.positions);
    else throw new WaymarkError('INVALID_ARGUMENT', `start must be "committed", "earliest", "latest", {positions} or {timestamp}, not ${JSON.stringify(start)}`);
    // The broker begins the first pack just before a start time, at the time positions all
    // carry (packBeginOf), else at 0 (session.open; a committed start: from the reply's pack).
    const startTime = typeof start === 'object' && 'timestamp' in start && start.timestamp > 0 ? start.timestamp : 0;
    const positionsTime = Array.isArray(request.positions) ? packBeginOf(request.positions as MsgPosition[]) : 0;
    this.resume = { positions: new Map(), beginTs: startTime > 0 ? startTime - 1 : positionsTime, byTime: startTime > 0 ? { timestamp: startTime, channels: null } : null };
    this.consuming = { topic, group: subName, subscription: 0, channels: options.channels ?? [], tickIntervalMs: options.tickIntervalMs ?? 0, topicCreatedAt: 0 };
    try {
      await this.subscribe(request);
    } catch (err) {
      // Not subscribed (an unknown topic, say): the stream may try again.
      this.consuming = null;
      this.stopPush?.();
      this.stopPush = null;
      throw err;
    }
    // Only once subscribed: a stream whose asConsumer failed has nowhere to resume from.
    if (!this.stopReconnect) {
      const stopReconnect = this.connection.on('reconnect', () => void this.resubscribe());
      // Without reconnect nothing more will come: the packs received go out, then CONNECTION_LOST.
      const stopDisconnect = this.connection.on('disconnect', () => {
        const lost = this.connection.lostForGood;
        if (lost && !this.closed) this.pull.failAfterQueued(lost);
      });
      // client.close(): a loop over the packs ends (done).
      const stopClose = this.connection.on('close', () => {
        this.closed = true;
        this.stopReconnect?.();
        this.stopPush?.();
        this.packs.length = 0;
        this.pull.end();
      });
      this.stopReconnect = () => {
        stopReconnect();
        stopDisconnect();
        stopClose();
      };
    }
  }

  private async subscribe(start: Record<string, unknown>): Promise<void> {
    const consuming = this.consuming!;
    // The handler is in place before the request leaves: packs may follow the reply at once.
    this.stopPush?.();
    consuming.subscription = this.connection.takeSubscriptionId();
    this.epoch = 0; // a new subscription's pushes carry epoch 0 until its first seek
    this.resumeEpoch = 0;
    this.stopPush = this.connection.onPush(consuming.subscription, (frame) => this.onPack(frame));
    const reply = await this.connection.request({
      subscribe: {
        ...start,
        topic: consuming.topic,
        group: consuming.group,
        channels: consuming.channels,
        packs: true,
        tickIntervalMs: consuming.tickIntervalMs,
        creditMessages: this.prefetch[0],
        creditBytes: this.prefetch[1],
        subscription: consuming.subscription,
        topicCreatedAt: consuming.topicCreatedAt, // a resubscribe: the topic it read, not a new one of that name
      },
    });
    consuming.topicCreatedAt = Number(reply.subscribeOk?.topicCreatedAt ?? 0);
    // Where the subscription starts, for the channels no pack handed out has moved yet.
    for (const p of reply.subscribeOk?.positions ?? []) if (!this.resume.positions.has(p.channel ?? 0)) this.resume.positions.set(p.channel ?? 0, p.offset ?? 0);
    // And when, while no pack or time says otherwise: a start at the group's committed
    // positions begins at the time they carry, which only the broker knows. A resubscribe
    // before the first pack was taken began at 0 instead (helper-62).
    const packBeginTs = Number(reply.subscribeOk?.packBeginTs ?? 0);
    if (this.resume.beginTs === 0 && this.resume.byTime === null && packBeginTs > 0) this.resume.beginTs = packBeginTs;
  }

  /**
   * After a reconnect: subscribes again from after the last pack handed out — explicit
   * positions for every channel, and start_timestamp = the last end time + 1, which with a
   * position for every channel moves no offset and only makes the broker begin the next pack
   * at that end time (packBeginTs = start_timestamp - 1).
   */
  private async resubscribe(): Promise<void> {
    if (this.closed || this.failed || !this.consuming) return;
    this.packs.length = 0; // from the dead subscription, not handed out: they come again
    this.extra = [0, 0];
    const { positions, beginTs, byTime } = this.resume;
    const topic = this.consuming.topic;
    const gone = (): boolean => this.closed || this.consumerClosed;
    try {
      // In the reconnect's own turn (a seek made right after goes to the new subscription).
      try {
        // The channels waiting for a time sought go by it (no position: see resume).
        await this.subscribe({
          positions: [...positions].filter(([channel]) => !this.waitingForTime(channel)).map(([channel, offset]) => ({ channel, offset })),
          startTimestamp: byTime !== null ? byTime.timestamp : beginTs > 0 ? beginTs + 1 : 0,
        });
      } catch (err) {
        if ((err as WaymarkError).code !== 'OFFSET_OUT_OF_RANGE' || gone()) throw err;
        // The broker came back with less than it had handed out: its lost offsets go to new
        // messages (some may be in already), so those channels go on by broker time, from the
        // last pack's end (start_timestamp), as a pack stream does anyway; the others from
        // their positions. (Resuming at the channel's end skipped what came in meanwhile.)
        const lost = await channelsPastTheirEnd(this.connection, topic, positions);
        if (gone()) return; // closed meanwhile: no subscription left behind on the broker
        for (const channel of lost) positions.delete(channel); // set from the reply
        await this.subscribe({ positions: [...positions].map(([channel, offset]) => ({ channel, offset })), startTimestamp: beginTs > 0 ? beginTs + 1 : 0 });
      }
    } catch (err) {
      // Lost again before the reply: the next reconnect subscribes again from the same place.
      // Closed meanwhile (client.close(): CLIENT_CLOSED): the stream has ended, not failed.
      if ((err as WaymarkError).code !== 'CONNECTION_LOST' && !gone()) this.fail(err as Error);
    }
  }

  private onPack(frame: Frame): void {
    if (frame.error) {
      this.fail(errorFromFrame(frame.error)); // the subscription ended (e.g. its topic was deleted)
      return;
    }
    const p = frame.pack;
    if (!p || !this.consuming) return;
    if ((p.needMessages ?? 0) > 0 || (p.needBytes ?? 0) > 0) {
      // A pack bigger than the window (one broker millisecond can be): grant the difference
      // once, and keep it back from what the next packs return, so the window stays prefetch.
      this.extra[0] += p.needMessages ?? 0;
      this.extra[1] += p.needBytes ?? 0;
      this.grant(p.needMessages ?? 0, p.needBytes ?? 0);
      return;
    }
    let records = 0;
    let bytes = 0;
    const msgs: Message[] = [];
    try {
      for (const c of p.channels ?? []) {
        for (const batch of decodeBatches(this.consuming.topic, c.channel ?? 0, c.batches ?? new Uint8Array(0), c.startOffset ?? 0)) {
          records += batch.header.recordCount;
          bytes += batch.bytes;
          msgs.push(...batch.messages);
        }
      }
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    if ((p.epoch ?? 0) !== this.epoch) {
      this.grant(records, bytes); // from before our latest seek: stale
      return;
    }
    const pack: MsgPack = {
      beginTs: p.beginTs ?? 0,
      endTs: p.endTs ?? 0,
      msgs,
      startPositions: (p.channels ?? []).map((c) => ({ channel: c.channel ?? 0, offset: c.startOffset ?? 0, timestamp: p.beginTs ?? 0 })),
      endPositions: (p.channels ?? []).map((c) => ({ channel: c.channel ?? 0, offset: c.endOffset ?? 0, timestamp: p.endTs ?? 0 })),
    };
    this.packs.push({ pack, credit: [records, bytes] });
    this.pull.wake(() => this.takePack());
  }

  private takePack(): MsgPack | null {
    const item = this.packs.shift();
    if (!item) return null;
    for (const p of item.pack.endPositions) this.resume.positions.set(p.channel, p.offset);
    this.resume.beginTs = item.pack.endTs;
    this.resume.byTime = null; // every channel is past the time now (the pack holds everything up to its end)
    this.resumeEpoch = this.epoch;
    const [messages, bytes] = item.credit;
    const keepMessages = Math.min(this.extra[0], messages);
    const keepBytes = Math.min(this.extra[1], bytes);
    this.extra[0] -= keepMessages;
    this.extra[1] -= keepBytes;
    this.grant(messages - keepMessages, bytes - keepBytes);
    return item.pack;
  }

  private grant(messages: number, bytes: number): void {
    if (!this.consuming || (messages === 0 && bytes === 0)) return;
    this.connection.request({ credit: { subscription: this.consuming.subscription, messages, bytes } }).catch(() => undefined);
  }

  private fail(err: Error): void {
    this.failed = true;
    this.pull.fail(err);
  }

  /** The next pack (Milvus Chan()). */
  next(): Promise<IteratorResult<MsgPack>> {
    if (this.consumerClosed) return Promise.resolve({ value: undefined, done: true });
    if (!this.failed && !this.closed && !this.consuming) return Promise.reject(new WaymarkError('INVALID_ARGUMENT', 'call asConsumer(topic, subName) first'));
    return this.pull.next(() => this.takePack(), this.closed);
  }

  /** A loop over the packs (for await) that is left — break, return, a throw — closes the consumer side: it unsubscribes. */
  [Symbol.asyncIterator](): AsyncIterator<MsgPack> {
    return {
      next: () => this.next(),
      return: async () => {
        await this.closeConsumer();
        return { value: undefined, done: true };
      },
    };
  }

  /** Unsubscribes and ends the packs (a waiting next() is done); the producer side stays. */
  private async closeConsumer(): Promise<void> {
    if (this.consumerClosed) return;
    this.consumerClosed = true;
    const consuming = this.consuming;
    this.stopReconnect?.();
    this.stopReconnect = null;
    this.stopPush?.();
    this.stopPush = null;
    this.packs.length = 0;
    // Only over a connection that is up: while the client reconnects there is no subscription
    // to end (the broker ended it with the connection), and waiting for the connection held
    // close() (and a loop's break) up to requestTimeoutMs.
    if (consuming && this.connection.isConnected) await this.connection.request({ unsubscribe: { subscription: consuming.subscription } }).catch(() => undefined);
    this.pull.end();
  }

  chan(): AsyncIterable<MsgPack> {
    return this;
  }

  /** Moves the consumer to positions (per channel) or to a broker timestamp. */
  async seek(to: { positions: MsgPosition[] } | { timestamp: number } | 'earliest' | 'latest'): Promise<void> {
    if (!this.consuming) throw new WaymarkError('INVALID_ARGUMENT', 'call asConsumer(topic, subName) first');
    checkSeekTarget(to, 'positions');
    // While the client reconnects: after the subscription is made again (a seek naming the
    // dead one's id was refused, SUBSCRIPTION_NOT_FOUND, and the move lost).
    if (!this.connection.isConnected && !this.closed && !this.consumerClosed) await this.connection.whenConnected();
    // Left loop: the subscription is gone (the broker said SUBSCRIPTION_NOT_FOUND, naming its id).
    if (this.closed || this.consumerClosed) throw new WaymarkError('CLIENT_CLOSED', 'this msgStream\'s consumer is closed: consume with a new msgStream');
    // Time 0 is before every message: the earliest (on the wire 0 means "no timestamp").
    // Positions for some channels move those; the others go on from after the last pack
    // handed out (the seek drops the buffered packs, which hold every channel's messages) —
    // or, those still waiting for a time sought, by that time (the seek's timestamp; at
    // positions the broker gave out what that seek had passed over: helper-33).
    let waiting: number[] = [];
    let where: { to: string } | { timestamp: number } | { positions: MsgPosition[]; timestamp?: number };
    if (typeof to === 'string') where = { to };
    else if ('positions' in to) {
      const named = checkPositions(to.positions);
      const namedChannels = new Set(named.map((p) => p.channel));
      waiting = [...this.resume.positions.keys()].filter((channel) => !namedChannels.has(channel) && this.waitingForTime(channel));
      const others = new Map([...this.resume.positions].filter(([channel]) => !waiting.includes(channel)));
      where = { positions: withOthers(named, others, this.resume.beginTs), ...(waiting.length > 0 ? { timestamp: this.resume.byTime!.timestamp } : {}) };
    } else where = checkSeekTime(to.timestamp) > 0 ? { timestamp: to.timestamp } : { to: 'earliest' };
    const epoch = ++this.epoch;
    for (const item of this.packs.splice(0)) this.grant(item.credit[0], item.credit[1]);
    const subscription = this.consuming.subscription;
    let reply: Frame;
    try {
      reply = await this.connection.request({ seek: { subscription, epoch, ...where } });
    } catch (err) {
      // Refused (a position past a channel's end, say): the broker goes on pushing packs in the
      // old epoch, stale here, so none would ever come again. The stream goes back to where it
      // was, after the last pack handed out, on a new subscription (a seek cannot give both
      // positions and the next pack's begin time); the old one is ended.
      if (this.epoch === epoch && !this.closed && !this.consumerClosed && !lostOrClosed(err)) {
        this.connection.request({ unsubscribe: { subscription } }).catch(() => undefined);
        await this.resubscribe();
      }
      throw err;
    }
    // The stream now stands where the seek put it (the broker's packBeginTs after a seek, in
    // session.seek), unless a pack of this seek was handed out already, or a newer seek was sent.
    if (this.epoch === epoch && this.resumeEpoch !== epoch) {
      // The pack the broker begins next (session.seek), and the channels left placed by a time.
      const timestamp = 'timestamp' in where && where.timestamp ? where.timestamp : 0;
      const positionsTime = 'positions' in where ? packBeginOf(where.positions) : 0;
      // The broker says where it begins the next pack (a seek to 'latest' keeps its own; an older
      // broker says nothing, and the same rule is worked out here).
      const told = Number(reply.seekOk?.packBeginTs ?? 0);
      const beginTs = told > 0 ? told : 'positions' in where ? (timestamp > 0 ? Math.min(positionsTime, timestamp - 1) : positionsTime) : Math.max(0, timestamp - 1);
      const byTime = timestamp === 0 ? null : 'positions' in where ? { timestamp, channels: new Set(waiting) } : { timestamp, channels: null };
      this.resume = { positions: new Map((reply.seekOk?.positions ?? []).map((p) => [p.channel ?? 0, p.offset ?? 0])), beginTs, byTime };
    }
  }

  /** Commits the group's positions (typically a consumed pack's endPositions). */
  async commit(positions: MsgPosition[]): Promise<void> {
    if (!this.consuming) throw new WaymarkError('INVALID_ARGUMENT', 'call asConsumer(topic, subName) first');
    // Checked as seek and start check them: -3 went out as a wrapped 64-bit number, and the
    // broker's error quoted 18446744073709552000 (helper-50).
    await this.connection.request({ commit: { topic: this.consuming.topic, group: this.consuming.group, positions: checkPositions(positions), topicCreatedAt: this.consuming.topicCreatedAt } });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.producer?.close();
    await this.closeConsumer();
  }
}

/** Positions as the protocol takes them; a negative or fractional offset is INVALID_ARGUMENT (it went out as a wrapped 64-bit number). */
function checkPositions(positions: MsgPosition[]): MsgPosition[] {
  if (!Array.isArray(positions)) throw new WaymarkError('INVALID_ARGUMENT', 'positions: an array of {channel, offset}');
  return (positions as unknown[]).map((p) => {
    if (typeof p !== 'object' || p === null) throw new WaymarkError('INVALID_ARGUMENT', `positions: ${JSON.stringify(p)} is not a {channel, offset}`);
    const { channel, offset } = checkPosition((p as MsgPosition).channel, (p as MsgPosition).offset, 'positions');
    const timestamp = (p as MsgPosition).timestamp ?? 0;
    if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new WaymarkError('INVALID_ARGUMENT', `positions: timestamp ${JSON.stringify(timestamp)} of channel ${channel} is not a broker time in ms (0 or more)`);
    return { channel, offset, timestamp };
  });
}

/**
 * `results` (of `sources`, the repack's messages in group order) in the order of `msgs`, when
 * `sources` is `msgs` itself regrouped (each object once); else as they are.
 */
function inPackOrder(msgs: readonly OutgoingMessage[], sources: readonly OutgoingMessage[], results: SendResult[]): SendResult[] {
  if (sources.length !== msgs.length) return results;
  const at = new Map<OutgoingMessage, number>();
  for (let i = 0; i < msgs.length; i++) at.set(msgs[i]!, i);
  if (at.size !== msgs.length) return results; // one object twice in the pack
  const ordered: SendResult[] = new Array(msgs.length);
  for (let i = 0; i < sources.length; i++) {
    const index = at.get(sources[i]!);
    if (index === undefined || ordered[index] !== undefined) return results;
    ordered[index] = results[i]!;
  }
  return ordered;
}

/** `positions`, plus every other channel of `current` at its current position (which stands at time `currentTs`). */
function withOthers(positions: MsgPosition[], current: ReadonlyMap<number, number>, currentTs: number): MsgPosition[] {
  const all = new Map<number, MsgPosition>();
  for (const [channel, offset] of current) all.set(channel, { channel, offset, timestamp: currentTs });
  for (const p of positions) all.set(p.channel, p);
  return [...all.values()];
}
