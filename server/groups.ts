/**
 * Committed positions of stream consumer groups, kept in the `__groups` system topic — an
 * ordinary segment set (DESIGN §3: no second storage engine). Each commit appends one record
 * per channel with key `<topic>/<group>/<channel>` and body `{"offset":N,"timestamp":T}`;
 * the latest position of a key is found through the key index (newest first), so nothing is
 * scanned before the broker serves and a cache holds what was read or written since. After
 * open, one background pass reads `__groups` from its start so that every group's lag is in
 * /metrics after a restart, not only the groups a consumer has touched since (`isLoaded`).
 *
 * Invariant: a commit is acknowledged only once its record is durable (the store's sync
 * mode), so an acknowledged commit survives a restart.
 */
import { checkTopicName, WaymarkError, type Store } from '../engine/index';
import { protocolLimits } from '../protocol/limits';

export const groupsTopic = '__groups';

export interface GroupPosition {
  channel: number;
  /** The next offset to consume. */
  offset: number;
  /** Broker time of the last consumed message (ms), 0 when unknown. */
  timestamp: number;
}

/** Positions cached at most (a bound on memory; evicted ones are read back from the index). */
const cachedPositionCountMax = 100_000;

export function checkGroupName(group: string): void {
  if (typeof group !== 'string' || group.length === 0 || Buffer.byteLength(group) > protocolLimits.groupNameBytesMax || !/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(group)) {
    throw new WaymarkError('INVALID_NAME', `group name ${JSON.stringify(group)}: use 1-${protocolLimits.groupNameBytesMax} characters of A-Z a-z 0-9 . _ -`);
  }
}

export class GroupPositions {
  private readonly cache = new Map<string, GroupPosition | null>();
  /** True once the background pass over `__groups` is over (done, or stopped by a closing store). */
  isLoaded = false;

  private constructor(private readonly store: Store) {}

  static async open(store: Store): Promise<GroupPositions> {
    if (!store.hasTopic(groupsTopic)) await store.createTopic(groupsTopic, { channels: 1, owner: 'waymark' }, { system: true });
    const groups = new GroupPositions(store);
    void groups
      .loadAll()
      .catch((err: Error) => {
        // A store closed mid-pass is expected at shutdown; anything else is said, and lag shows what is cached.
        if (!(err instanceof WaymarkError && err.code === 'STORE_CLOSED')) process.emitWarning(`waymark: reading __groups at start failed: ${err.message}`);
      })
      .finally(() => (groups.isLoaded = true));
    return groups;
  }

  /**
   * Reads `__groups` from its start and caches each key's last position, except keys that
   * were committed or read meanwhile (those are newer) and keys whose last commit is older
   * than their topic (a deleted topic of the same name). Memory: one entry per group and
   * channel, within the cache's bound.
   */
  private async loadAll(): Promise<void> {
    const { logStartOffset, highWatermark } = this.store.channelState(groupsTopic, 0);
    const latest = new Map<string, { position: GroupPosition; committedAt: number }>();
    for (let offset = logStartOffset; offset < highWatermark; ) {
      const messages = await this.store.read(groupsTopic, 0, { offset, maxMessages: 1000 });
      if (messages.length === 0) break;
      for (const m of messages) {
        const position = m.key ? parsePosition(m.key, m.body) : null;
        if (position) latest.set(m.key!, { position, committedAt: m.brokerTimestamp });
      }
      offset = messages[messages.length - 1]!.offset + 1;
    }
    for (const [key, { position, committedAt }] of latest) {
      const topic = key.slice(0, key.indexOf('/'));
      if (this.cache.has(key) || !this.store.hasTopic(topic) || committedAt < this.store.topicInfo(topic).createdAt) continue;
      this.remember(key, position);
    }
  }

  private static key(topic: string, group: string, channel: number): string {
    return `${topic}/${group}/${channel}`;
  }

  async get(topic: string, group: string, channel: number): Promise<GroupPosition | null> {
    const key = GroupPositions.key(topic, group, channel);
    if (this.cache.has(key)) return this.cache.get(key)!;
    // Only commits made since the topic was created count: older ones belong to a deleted topic of that name.
    const [latest] = await this.store.lookupKey(groupsTopic, key, { limit: 1, timeFrom: this.store.topicInfo(topic).createdAt });
    const position = latest ? parsePosition(key, latest.body) : null;
    this.remember(key, position);
    return position;
  }

  async commit(topic: string, group: string, positions: readonly GroupPosition[]): Promise<void> {
    checkTopicName(topic, true);
    checkGroupName(group);
    if (positions.length === 0) return;
    const channels = this.store.topicInfo(topic).channels;
    for (const p of positions) {
      if (!Number.isInteger(p.channel) || p.channel < 0 || p.channel >= channels) throw new WaymarkError('CHANNEL_NOT_FOUND', `topic ${topic} has no channel ${p.channel}`);
      if (!Number.isSafeInteger(p.offset) || p.offset < 0) throw new WaymarkError('INVALID_ARGUMENT', `offset ${p.offset} is not a valid position`);
    }
    await this.store.append(
      groupsTopic,
      0,
      positions.map((p) => ({ key: GroupPositions.key(topic, group, p.channel), body: JSON.stringify({ offset: p.offset, timestamp: p.timestamp }) })),
    );
    for (const p of positions) this.remember(GroupPositions.key(topic, group, p.channel), { ...p });
  }

  /** Drops the cached positions of a deleted topic (a new topic of that name starts with none). */
  forgetTopic(topic: string): void {
    for (const key of [...this.cache.keys()]) if (key.startsWith(`${topic}/`)) this.cache.delete(key);
  }

  /** Every cached position (for /metrics lag), as [topic, group, position]. */
  *cached(): Generator<[string, string, GroupPosition]> {
    for (const [key, position] of this.cache) {
      if (!position) continue;
      const [topic, group] = key.split('/');
      yield [topic!, group!, position];
    }
  }

  private remember(key: string, position: GroupPosition | null): void {
    this.cache.delete(key);
    this.cache.set(key, position);
    if (this.cache.size > cachedPositionCountMax) this.cache.delete(this.cache.keys().next().value!);
  }
}

/** A `__groups` record's position, or null when its key or body is not one (skipped, never fatal). */
function parsePosition(key: string, body: Buffer): GroupPosition | null {
  const channel = Number(key.slice(key.lastIndexOf('/') + 1));
  try {
    const parsed = JSON.parse(body.toString('utf8')) as { offset?: unknown; timestamp?: unknown };
    if (!Number.isInteger(channel) || typeof parsed.offset !== 'number') return null;
    return { channel, offset: parsed.offset, timestamp: typeof parsed.timestamp === 'number' ? parsed.timestamp : 0 };
  } catch {
    return null;
  }
}
