/** Topic administration and group positions over the protocol. */
import type { waymark } from '../protocol/frames';
import type { Connection } from './client';
import { WaymarkError } from '../engine/format/errors';
import { checkCount, checkKnown } from './options';

export interface TopicDescription {
  name: string;
  channels: number;
  retentionMs: number;
  retentionBytes: number;
  owner: string;
  createdAt: number;
  channelStates: Array<{ channel: number; logStartOffset: number; highWatermark: number; bytes: number; segments: number }>;
}

export interface CreateTopicOptions {
  channels?: number;
  retentionMs?: number;
  retentionBytes?: number;
  owner?: string;
}

function describe(info: waymark.v1.ITopicInfo | null | undefined): TopicDescription {
  return {
    name: info?.name ?? '',
    channels: info?.channels ?? 0,
    retentionMs: info?.retentionMs ?? 0,
    retentionBytes: info?.retentionBytes ?? 0,
    owner: info?.owner ?? '',
    createdAt: info?.createdAt ?? 0,
    channelStates: (info?.channelStates ?? []).map((c) => ({
      channel: c.channel ?? 0,
      logStartOffset: c.logStartOffset ?? 0,
      highWatermark: c.highWatermark ?? 0,
      bytes: c.bytes ?? 0,
      segments: c.segments ?? 0,
    })),
  };
}

export class Admin {
  constructor(private readonly connection: Connection) {}

  /**
   * Options are checked here, before the request: protobuf would have truncated or coerced
   * them (`retentionMs: '1h'` became 1 ms and retention deleted everything; `channels: 2.5`
   * became 2, 4294967297 became 1; `chanels: 3` was ignored).
   */
  async createTopic(topic: string, options: CreateTopicOptions = {}): Promise<TopicDescription> {
    if (typeof topic !== 'string') throw new WaymarkError('INVALID_ARGUMENT', `the topic must be a string, not ${typeof topic}`);
    checkKnown('createTopic', options, ['channels', 'retentionMs', 'retentionBytes', 'owner']);
    checkCount('channels', options.channels);
    if (options.channels !== undefined && options.channels > 0xffffffff) throw new WaymarkError('TOO_MANY_CHANNELS', `channels ${options.channels} is past what a topic may have`);
    checkCount('retentionMs', options.retentionMs, true);
    checkCount('retentionBytes', options.retentionBytes, true);
    if (options.owner !== undefined && typeof options.owner !== 'string') throw new WaymarkError('INVALID_ARGUMENT', `owner must be a string, not ${typeof options.owner}`);
    const reply = await this.connection.request({ createTopic: { topic, channels: options.channels ?? 1, retentionMs: options.retentionMs ?? 0, retentionBytes: options.retentionBytes ?? 0, owner: options.owner ?? '' } });
    return describe(reply.topicInfo);
  }

  async deleteTopic(topic: string): Promise<void> {
    await this.connection.request({ deleteTopic: { topic } });
  }

  async listTopics(): Promise<TopicDescription[]> {
    const reply = await this.connection.request({ listTopics: {} });
    return (reply.topicList?.topics ?? []).map(describe);
  }

  async describeTopic(topic: string): Promise<TopicDescription> {
    const reply = await this.connection.request({ describeTopic: { topic } });
    return describe(reply.topicInfo);
  }

  /** A group's committed positions (channels it never committed are absent). */
  async positions(topic: string, group: string): Promise<Array<{ channel: number; offset: number; timestamp: number }>> {
    // Not sent as protobuf would take it: a group of 5 went out as "" (INVALID_NAME group name "").
    if (typeof topic !== 'string' || typeof group !== 'string') throw new WaymarkError('INVALID_ARGUMENT', `topic and group must be strings, not ${typeof topic} and ${typeof group}`);
    const reply = await this.connection.request({ getPositions: { topic, group } });
    return (reply.positions?.positions ?? []).map((p) => ({ channel: p.channel ?? 0, offset: p.offset ?? 0, timestamp: p.timestamp ?? 0 }));
  }
}

/**
 * The channels whose position is past their end now: a broker can come back with less than
 * it had handed out (a power loss under sync `none`/`interval`, or a damaged tail cut at
 * open), and a consumer resuming there is refused (OFFSET_OUT_OF_RANGE). Positions below the
 * log start are left to the broker, which moves them up.
 */
export async function channelsPastTheirEnd(connection: Connection, topic: string, positions: ReadonlyMap<number, number>): Promise<number[]> {
  const reply = await connection.request({ describeTopic: { topic } });
  const ends = new Map(describe(reply.topicInfo).channelStates.map((c) => [c.channel, c.highWatermark]));
  return [...positions].filter(([channel, offset]) => offset > (ends.get(channel) ?? offset)).map(([channel]) => channel);
}
