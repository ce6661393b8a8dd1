/**
 * The broker core that both front doors (WebSocket and HTTP) call: produce with metrics,
 * start positions for subscriptions. No business logic the engine should own lives here —
 * only the wiring of store, group positions and metrics.
 */
import * as path from 'node:path';
import { checkTopicName, WaymarkError, type AppendOutcome, type Store } from '../engine/index';
import { toWaymarkError } from '../protocol/frames';
import { GroupPositions, checkGroupName, type GroupPosition } from './groups';
import { BrokerMetrics, type CounterCell } from './metrics';
import { packBeginOf } from '../protocol/positions';

export interface ChannelAppend {
  channel: number;
  baseOffset: number;
  recordCount: number;
  brokerTimestamp: number;
  duplicate: boolean;
}

export type StartKind = 'committed' | 'earliest' | 'latest';

export interface StartRequest {
  topic: string;
  group: string;
  channels: readonly number[];
  start: StartKind;
  fallback: 'earliest' | 'latest';
  positions: readonly GroupPosition[];
  startTimestamp: number;
}

export class Broker {
  private readonly appendCounters = new Map<string, Array<{ messages: CounterCell; bytes: CounterCell }>>();
  /** HTTP's round robin: the channel each topic's last keyless POST went to (forgotten with the topic). */
  private readonly lastRoundRobin = new Map<string, number>();

  constructor(
    readonly store: Store,
    readonly groups: GroupPositions,
    readonly metrics: BrokerMetrics,
  ) {}

  static async open(store: Store): Promise<Broker> {
    return new Broker(store, await GroupPositions.open(store), new BrokerMetrics());
  }

  /**
   * Appends a client-built batch (validated by the store) to one channel, or a copy of it to
   * every channel (broadcast). `batch` is owned by the broker from here on.
   */
  async produce(topic: string, channel: number, batch: Uint8Array, broadcast: boolean): Promise<ChannelAppend[]> {
    if (topic.startsWith('__')) throw new WaymarkError('INVALID_NAME', `system topic ${topic} is written by the broker only`);
    const started = performance.now();
    if (!broadcast) {
      // One channel (every produce but a broadcast): no arrays of promises per request.
      const o = await this.store.appendBatch(topic, channel, batch);
      this.metrics.commitLatency.observe((performance.now() - started) / 1000);
      return [this.appended(topic, channel, batch.length, o)];
    }
    const channels = [...Array(this.store.topicInfo(topic).channels).keys()];
    const outcomes = await Promise.all(channels.map((c, i) => this.store.appendBatch(topic, c, i === 0 ? batch : batch.slice())));
    this.metrics.commitLatency.observe((performance.now() - started) / 1000);
    return outcomes.map((o, i) => this.appended(topic, channels[i]!, batch.length, o));
  }

  private appended(topic: string, channel: number, bytes: number, o: AppendOutcome): ChannelAppend {
    if (!o.duplicate) {
      const cells = this.appendCells(topic, channel);
      cells.messages.value += o.recordCount;
      cells.bytes.value += bytes;
    }
    return { channel, baseOffset: o.baseOffset, recordCount: o.recordCount, brokerTimestamp: o.brokerTimestamp, duplicate: o.duplicate };
  }

  /** A topic was deleted: its group positions and its metrics series go (a new topic of the name starts from nothing). */
  forgetTopic(topic: string): void {
    this.groups.forgetTopic(topic);
    this.appendCounters.delete(topic);
    this.lastRoundRobin.delete(topic); // kept for every deleted topic, it grew ~265 B a topic for good (helper-61)
    this.metrics.appendedMessages.forget(topic);
    this.metrics.appendedBytes.forget(topic);
  }

  /** The channel for a keyless HTTP POST to `topic`: the one after the last, from 0. */
  roundRobin(topic: string, channels: number): number {
    const next = (this.lastRoundRobin.get(topic) ?? -1) + 1;
    const channel = next < channels ? next : 0;
    this.lastRoundRobin.set(topic, channel);
    return channel;
  }

  /** How many topics the round robin remembers (a test's view of its bound). */
  get roundRobinTopics(): number {
    return this.lastRoundRobin.size;
  }

  /** The appended-messages and -bytes counters of one channel, looked up once per topic and channel. */
  private appendCells(topic: string, channel: number): { messages: CounterCell; bytes: CounterCell } {
    let perChannel = this.appendCounters.get(topic);
    if (!perChannel) this.appendCounters.set(topic, (perChannel = []));
    return (perChannel[channel] ??= { messages: this.metrics.appendedMessages.cell([topic, channel]), bytes: this.metrics.appendedBytes.cell([topic, channel]) });
  }

  /**
   * An error as a client is told it: file names without the data folder's path (a client
   * saw `/srv/waymark/data/topics/orders/1` in CORRUPT_FILE: helper-59). The broker's own
   * log (stderr, onFault) keeps them whole.
   */
  clientError(err: unknown): WaymarkError {
    return clientError(err, this.store.dir);
  }

  /**
   * Throws TOPIC_NOT_FOUND when the topic a client read from (its creation time, from
   * SubscribeOk or TopicInfo) is not the one that has the name now: it was deleted and made
   * again, and positions read from the old one (or a producer's messages for it) would be
   * taken for the new one's. 0 = any.
   */
  sameTopic(topic: string, createdAt: number): void {
    if (!createdAt) return;
    const now = this.store.topicInfo(topic).createdAt; // TOPIC_NOT_FOUND when there is none
    if (now !== createdAt) {
      throw new WaymarkError('TOPIC_NOT_FOUND', `topic ${topic} was deleted and made again (at ${new Date(now).toISOString()}) since this client read it`);
    }
  }

  /** The channels a subscription covers: the asked ones (checked) or all. */
  channelsOf(topic: string, asked: readonly number[]): number[] {
    const count = this.store.topicInfo(topic).channels;
    if (asked.length === 0) return [...Array(count).keys()];
    for (const c of asked) if (!Number.isInteger(c) || c < 0 || c >= count) throw new WaymarkError('CHANNEL_NOT_FOUND', `topic ${topic} has channels 0..${count - 1}, not ${c}`);
    return [...new Set(asked)];
  }

  /**
   * Where each channel of a new subscription starts (Milvus: committed position, or
   * earliest/latest), the channels placed by a start time, and the time a pack
   * stream begins at when every channel starts at a position carrying the same time
   * (packBeginOf: explicit positions, or the group's committed ones; else 0).
   */
  async startPositions(request: StartRequest): Promise<{ positions: Map<number, number>; byTime: number[]; packBeginTs: number }> {
    checkGroupName(request.group);
    const positions = new Map<number, number>();
    const byTime: number[] = [];
    /** Per channel, the time of the position it starts at (0: placed by time, earliest, latest, a fallback). */
    const times: Array<{ timestamp: number }> = [];
    const explicit = new Map(request.positions.map((p) => [p.channel, p]));
    if (explicit.size < request.positions.length) throw new WaymarkError('INVALID_ARGUMENT', 'a start position is given twice for one channel');
    for (const channel of explicit.keys()) {
      if (!request.channels.includes(channel)) throw new WaymarkError('CHANNEL_NOT_FOUND', `a start position for channel ${channel}, which the subscription does not cover (channels ${request.channels.join(', ')})`);
    }
    for (const channel of request.channels) {
      const state = this.store.channelState(request.topic, channel);
      let offset: number;
      let timestamp = 0;
      if (explicit.has(channel)) ({ offset, timestamp } = explicit.get(channel)!);
      else if (request.startTimestamp > 0) {
        offset = await this.store.offsetForTime(request.topic, channel, request.startTimestamp);
        byTime.push(channel);
      } else if (request.start === 'earliest') offset = state.logStartOffset;
      else if (request.start === 'latest') offset = state.highWatermark;
      else {
        const committed = await this.groups.get(request.topic, request.group, channel);
        // A committed position outside the channel is not the client's mistake: retention
        // deleted the segments under it, or recovery cut a torn tail back below it. As Kafka's
        // auto.offset.reset does, the channel starts at the fallback instead of failing the
        // subscribe (which would fail every later one of the group too).
        const inRange = committed !== null && committed.offset >= state.logStartOffset && committed.offset <= state.highWatermark;
        offset = inRange ? committed.offset : request.fallback === 'latest' ? state.highWatermark : state.logStartOffset;
        if (inRange) timestamp = committed.timestamp;
      }
      const clamped = clampPosition(offset, state, channel);
      positions.set(channel, clamped);
      times.push({ timestamp: clamped === offset ? timestamp : 0 });
    }
    return { positions, byTime, packBeginTs: packBeginOf(times) };
  }

  /**
   * Stores a group's positions (Commit). A position past a channel's high watermark is
   * refused (OFFSET_OUT_OF_RANGE) and nothing of the request is stored: the group would
   * otherwise point at offsets that do not exist yet. A position below the log start is
   * stored (a consumer may commit what retention has just deleted); subscribe moves it to
   * the fallback. Names and the shape of each position are checked by GroupPositions.commit.
   */
  /** `topicCreatedAt` > 0: the positions were read from the topic made then (see sameTopic). */
  async commit(topic: string, group: string, positions: readonly GroupPosition[], topicCreatedAt = 0): Promise<void> {
    checkTopicName(topic, true);
    checkGroupName(group);
    this.sameTopic(topic, topicCreatedAt);
    if (positions.length === 0) return;
    this.channelsOf(topic, positions.map((p) => p.channel));
    for (const p of positions) {
      const { logStartOffset, highWatermark } = this.store.channelState(topic, p.channel);
      if (Number.isSafeInteger(p.offset) && p.offset > highWatermark) {
        throw new WaymarkError('OFFSET_OUT_OF_RANGE', `channel ${p.channel}: cannot commit offset ${p.offset}, past the channel's end [${logStartOffset}, ${highWatermark}]`);
      }
    }
    await this.groups.commit(topic, group, positions);
  }
}

/** An explicit position (or a seek) must lie in [logStartOffset, highWatermark]; one below the start (retention) moves up. */
export function clampPosition(offset: number, state: { logStartOffset: number; highWatermark: number }, channel: number): number {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset > state.highWatermark) {
    throw new WaymarkError('OFFSET_OUT_OF_RANGE', `channel ${channel}: offset ${offset} is outside [${state.logStartOffset}, ${state.highWatermark}]`);
  }
  return Math.max(offset, state.logStartOffset);
}

/** Broker.clientError, for a store in `dataDir`. */
export function clientError(err: unknown, dataDir: string): WaymarkError {
  const typed = toWaymarkError(err);
  const prefix = dataDir.endsWith(path.sep) ? dataDir : `${dataDir}${path.sep}`;
  return typed.message.includes(prefix) ? new WaymarkError(typed.code, typed.message.split(prefix).join('')) : typed;
}
