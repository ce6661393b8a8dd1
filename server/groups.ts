/**
 * Committed positions of stream consumer groups, kept in the `__groups` system topic — an
 * ordinary segment set (DESIGN §3: no second storage engine). Each commit appends one record
 * per channel with key `<topic>/<group>/<channel>` and body `{"offset":N,"timestamp":T}`;
 * the latest position of a key is found through the key index (newest first), so nothing is
 * scanned before the broker serves and a cache holds what was read or written since. After
 * open, one background pass reads `__groups` from its start so that every group's lag is in
 * /metrics after a restart, not only the groups a consumer has touched since (`isLoaded`).
 *
 * Compaction keeps `__groups` bounded (Kafka compacts its offsets topic for the same reason):
 * once it spans `compactionSegmentCount` segments and has taken at least as many records since
 * the last compaction as that one rewrote, one background pass reads it up to its high
 * watermark H, appends again each live key's last record (a key of a topic that still exists,
 * committed since that topic was created, and not committed again during the pass), and then
 * deletes the whole segments below H. Every record below H is by then superseded — by the
 * rewrite, by a newer commit, or because its topic is gone — so nothing a lookup could want is
 * lost; a crash in between leaves only duplicates.
 *
 * Invariant: a commit is acknowledged only once its record is durable (the store's sync
 * mode), so an acknowledged commit survives a restart.
 */
import { checkTopicName, shown, WaymarkError, type AppendResult, type MessageInput, type Store } from '../engine/index';
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
export const cachedPositionCountMax = 100_000;

/** Segment size of `__groups` when the broker creates it: compaction frees whole segments. */
export const groupsSegmentBytesDefault = 16 * 1024 * 1024;

/** Segments of `__groups` (the active one included) from which a commit starts a compaction. */
export const compactionSegmentCount = 3;

/** Records a compaction rewrites per append. */
const compactionBatchRecords = 1000;

export interface GroupPositionsOptions {
  /** Segment size of `__groups` if this open creates it (default groupsSegmentBytesDefault). */
  segmentBytes?: number;
}

/** A key's last record in `__groups`. */
interface LastCommit {
  body: Buffer;
  committedAt: number;
}

export function checkGroupName(group: string): void {
  if (typeof group !== 'string' || group.length === 0 || Buffer.byteLength(group) > protocolLimits.groupNameBytesMax || !/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(group)) {
    throw new WaymarkError('INVALID_NAME', `group name ${shown(group)}: use 1-${protocolLimits.groupNameBytesMax} characters of A-Z a-z 0-9 . _ -`);
  }
}

export class GroupPositions {
  /** Positions read or written since open, least recently used first (bounded: cachedPositionCountMax). */
  private readonly cache = new Map<string, GroupPosition>();
  /**
   * Keys known to have no position, apart and bounded the same: lookups of groups that never
   * committed pushed real positions out of one shared cache, and /metrics, which takes lag
   * from the cache, lost their rows.
   */
  private readonly absent = new Set<string>();
  /** True once the background pass over `__groups` is over (done, or stopped by a closing store). */
  isLoaded = false;
  /** Compactions finished since open. */
  compactions = 0;
  /**
   * The compaction in flight: the keys whose commits land past the end it reads to — made
   * since it started, or in flight when it did and written past that end (it must not rewrite
   * those) — and whether such a commit failed (then the segments it would delete may hold a
   * key's only record: they stay).
   */
  private compaction: { done: Promise<void>; touched: Set<string>; commitFailed: boolean } | null = null;
  /** Commits being appended, with their keys: a compaction sorts them by where they land and waits for them before it deletes. */
  private readonly inflight = new Map<Promise<AppendResult>, string[]>();
  /**
   * Bumped when a commit starts and when it is remembered: a get() whose lookup ran while it
   * changed may hold an answer older than that commit, and does not cache it (it overwrote an
   * acknowledged commit's position: a committed subscribe then started at the fallback).
   */
  private commits = 0;
  /** What the last compaction rewrote and where it started: the next waits for as many new records. */
  private lastCompaction = { records: 0, end: 0 };

  private loading: Promise<void> = Promise.resolve();
  /** While the start-up pass reads: the keys committed or read meanwhile (newer than what it reads). */
  private seenDuringLoad: Set<string> | null = null;

  private constructor(private readonly store: Store) {}

  /** Resolves when the start-up pass over `__groups` is over (isLoaded). */
  loaded(): Promise<void> {
    return this.loading;
  }

  /** True while a compaction runs. */
  get compacting(): boolean {
    return this.compaction !== null;
  }

  static async open(store: Store, options: GroupPositionsOptions = {}): Promise<GroupPositions> {
    if (!store.hasTopic(groupsTopic)) {
      await store.createTopic(groupsTopic, { channels: 1, owner: 'waymark', segmentBytes: options.segmentBytes ?? groupsSegmentBytesDefault }, { system: true });
    }
    const groups = new GroupPositions(store);
    groups.loading = groups
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
    this.seenDuringLoad = new Set();
    const latest = await this.lastCommits(logStartOffset, highWatermark);
    const seen = this.seenDuringLoad;
    this.seenDuringLoad = null;
    for (const [key, { body, committedAt }] of latest) {
      // Not `cache.has` alone: a key committed during the pass may have been evicted since (a
      // cache at its bound), and its older record read here put back in its place.
      if (seen.has(key) || this.cache.has(key) || this.absent.has(key) || !this.isLive(key, committedAt)) continue;
      const position = parsePosition(key, body);
      if (position) this.remember(key, position);
    }
  }

  /** Each key's last record among offsets [from, to) of `__groups`. Memory: one entry per key. */
  private async lastCommits(from: number, to: number): Promise<Map<string, LastCommit>> {
    const latest = new Map<string, LastCommit>();
    for (let offset = from; offset < to; ) {
      const messages = await this.store.read(groupsTopic, 0, { offset, maxMessages: 1000 });
      if (messages.length === 0) break;
      for (const m of messages) {
        if (m.offset >= to) break;
        if (m.key) latest.set(m.key, { body: m.body, committedAt: m.brokerTimestamp });
      }
      offset = messages[messages.length - 1]!.offset + 1;
    }
    return latest;
  }

  /** Whether a key's commit still counts: its topic exists and was created before the commit. */
  private isLive(key: string, committedAt: number): boolean {
    const topic = key.slice(0, key.indexOf('/'));
    return this.store.hasTopic(topic) && committedAt >= this.store.topicInfo(topic).createdAt;
  }

  /**
   * Whether a compaction keeps a key's last commit: while it counts, and while its topic is on
   * disk but was left closed at open (an unreadable topic.json: its createdAt is unknown, and
   * `waymark repair` brings the topic back with its positions; dropped, they were lost for good).
   */
  private keepsThrough(key: string, committedAt: number): boolean {
    return this.isLive(key, committedAt) || this.store.isUnopenedTopic(key.slice(0, key.indexOf('/')));
  }

  /** Starts a compaction when `__groups` has grown enough since the last one (see the file comment). */
  private maybeCompact(): void {
    if (this.compaction || !this.isLoaded) return;
    const { segments, highWatermark } = this.store.describeTopic(groupsTopic).channelInfo[0]!;
    if (segments < compactionSegmentCount || highWatermark - this.lastCompaction.end < this.lastCompaction.records) return;
    const compaction = { done: Promise.resolve(), touched: new Set<string>(), commitFailed: false };
    this.compaction = compaction;
    compaction.done = this.compact(compaction, [...this.inflight])
      .catch((err: Error) => {
        if (!(err instanceof WaymarkError && err.code === 'STORE_CLOSED')) process.emitWarning(`waymark: compacting __groups failed: ${err.message}`);
      })
      .finally(() => (this.compaction = null));
  }

  /** Waits for the compaction in flight, if any. */
  async compacted(): Promise<void> {
    await this.compaction?.done;
  }

  /**
   * One pass (see the file comment). `earlier`: the commits in flight when it starts. Each may
   * have landed below the high watermark it reads to (written by the group commit whose
   * acknowledgement started this pass, and not yet acknowledged itself), then the pass reads
   * and rewrites it like any record; or past it, newer than anything the pass reads: its keys
   * count as touched, as do those of every commit made from now on (they land past it too).
   */
  private async compact(compaction: { touched: Set<string>; commitFailed: boolean }, earlier: Array<[Promise<AppendResult>, string[]]>): Promise<void> {
    const { touched } = compaction;
    const { logStartOffset, highWatermark: end } = this.store.channelState(groupsTopic, 0);
    for (const [appended, keys] of earlier) {
      // A failed one sets commitFailed (commit()): nothing is deleted then.
      const landed = await appended.then((r) => r.baseOffset, () => end);
      if (landed >= end) for (const key of keys) touched.add(key);
    }
    const keep = [...(await this.lastCommits(logStartOffset, end))];
    let rewritten = 0;
    for (let i = 0; i < keep.length; i += compactionBatchRecords) {
      // Filtered right before the append call: a commit made before it is in `touched` (and
      // newer than what we hold), one made after it lands after the rewrite; a topic deleted
      // (or deleted and made again) meanwhile has its positions dropped here, not revived.
      const batch: MessageInput[] = [];
      for (const [key, { body, committedAt }] of keep.slice(i, i + compactionBatchRecords)) if (!touched.has(key) && this.keepsThrough(key, committedAt)) batch.push({ key, body });
      if (batch.length === 0) continue;
      await this.store.append(groupsTopic, 0, batch);
      rewritten += batch.length;
    }
    // A touched key whose commit fails has no newer record: its old one must stay. Every commit
    // that touched a key is in flight now or settled (later ones find their key rewritten).
    await Promise.allSettled([...this.inflight.keys()]);
    if (compaction.commitFailed) return;
    await this.store.deleteSegmentsBefore(groupsTopic, 0, end);
    this.lastCompaction = { records: rewritten, end };
    this.compactions++;
  }

  private static key(topic: string, group: string, channel: number): string {
    return `${topic}/${group}/${channel}`;
  }

  async get(topic: string, group: string, channel: number): Promise<GroupPosition | null> {
    const key = GroupPositions.key(topic, group, channel);
    const cached = this.cache.get(key);
    if (cached) return cached;
    if (this.absent.has(key)) return null;
    // Only commits made since the topic was created count: older ones belong to a deleted topic of that name.
    const commits = this.commits;
    const [latest] = await this.store.lookupKey(groupsTopic, key, { limit: 1, timeFrom: this.store.topicInfo(topic).createdAt });
    const position = latest ? parsePosition(key, latest.body) : null;
    if (this.commits !== commits) return this.cache.get(key) ?? position; // a commit's own remember wins
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
    const incarnation = this.store.topicIncarnation(topic);
    const records = positions.map((p) => ({ key: GroupPositions.key(topic, group, p.channel), body: JSON.stringify({ offset: p.offset, timestamp: p.timestamp }) }));
    const keys = records.map((r) => r.key);
    if (this.compaction) for (const key of keys) this.compaction.touched.add(key);
    this.commits++;
    const appended = this.store.append(groupsTopic, 0, records);
    this.inflight.set(appended, keys);
    try {
      await appended;
    } catch (err) {
      // The compaction running now waits for this commit before it deletes anything.
      if (this.compaction) this.compaction.commitFailed = true;
      throw err;
    } finally {
      this.inflight.delete(appended);
    }
    this.maybeCompact();
    // The topic was deleted while the commit was written (and maybe made again): the position
    // was for the old one. forgetTopic has run already, so a cached copy would count for the
    // new topic; on disk the record is older than the new topic and does not.
    if (!this.store.hasTopic(topic) || this.store.topicIncarnation(topic) !== incarnation) {
      throw new WaymarkError('TOPIC_NOT_FOUND', `topic ${topic} was deleted while the commit was written`);
    }
    this.commits++;
    for (const p of positions) this.remember(GroupPositions.key(topic, group, p.channel), { ...p });
  }

  /** Drops the cached positions of a deleted topic (a new topic of that name starts with none). */
  forgetTopic(topic: string): void {
    for (const key of [...this.cache.keys()]) if (key.startsWith(`${topic}/`)) this.cache.delete(key);
    for (const key of [...this.absent]) if (key.startsWith(`${topic}/`)) this.absent.delete(key);
  }

  /** Every cached position (for /metrics lag), as [topic, group, position]. */
  *cached(): Generator<[string, string, GroupPosition]> {
    for (const [key, position] of this.cache) {
      const [topic, group] = key.split('/');
      yield [topic!, group!, position];
    }
  }

  /**
   * The consumer lag of every cached position (for /metrics): the messages the group has
   * still to read, up to the high watermark — from its committed position, or from the log
   * start when retention deleted past it (a resumed group reads from there: the deleted
   * messages are not a lag). Positions of a deleted topic, or of a channel an older topic of
   * that name had, have none.
   */
  *lags(): Generator<{ topic: string; group: string; channel: number; messages: number }> {
    for (const [topic, group, position] of this.cached()) {
      if (!this.store.hasTopic(topic) || position.channel >= this.store.topicInfo(topic).channels) continue;
      const { highWatermark, logStartOffset } = this.store.channelState(topic, position.channel);
      yield { topic, group, channel: position.channel, messages: Math.max(0, highWatermark - Math.max(position.offset, logStartOffset)) };
    }
  }

  private remember(key: string, position: GroupPosition | null): void {
    this.seenDuringLoad?.add(key);
    this.cache.delete(key);
    this.absent.delete(key);
    if (position) {
      this.cache.set(key, position);
      if (this.cache.size > cachedPositionCountMax) this.cache.delete(this.cache.keys().next().value!);
    } else {
      this.absent.add(key);
      if (this.absent.size > cachedPositionCountMax) this.absent.delete(this.absent.values().next().value!);
    }
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
