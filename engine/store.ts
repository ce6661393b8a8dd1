/**
 * The store: one locked data folder holding topics, each with N channels.
 *
 *   <data>/LOCK                          flock + holder pid
 *   <data>/store.json                    { "format": "waymark", "version": 3 }
 *   <data>/topics/<topic>/topic.json     the topic's configuration
 *   <data>/topics/<topic>/<channel>/     a segment set (channel-log.ts)
 *
 * Topic creation builds the folder under a temporary name and renames it into place;
 * deletion renames it away first. Either way a crash leaves the topic wholly there or
 * wholly gone (leftovers are swept at open).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadChecksum, xxh32 } from './format/checksum';
import { shown, WaymarkError } from './format/errors';
import { IndexKind, traceIdHeaderName } from './format/index-keys';
import { bytesEqual, msgIdFromHex, msgIdToHex, msgIdTime, packedMsgIdsToHexList } from './format/msg-id';
import { encodeBatch, headerValue, probeHeader, validateBatch, BatchFlag, type Header, type MessageInput, type StoredRecord } from './format/record-batch';
import { lz4Codec } from './codec';
import type { TimeRange } from './index/key-index';
import { limits } from './limits';
import { BatchBuffers } from './batch-buffers';
import { StoreClock } from './clock';
import { lockFolder, type FolderLock } from './lock';
import { IoSlots } from './log/io-slots';
import { ChannelLog, type AppendOutcome, type BatchRead, type ChannelOptions, type SyncMode } from './log/channel-log';
import { syncDir } from './log/checkpoint';
import { markStoreCurrent } from './store-file';
import { readTopicFile, topicFile, writeTopicFile } from './log/topic-file';
import { DamageBeforeSoundBatchesError, tooManyOpenFiles } from './log/errors';
import type { RecoveryFinding } from './log/segment';
import { repairStore } from './inspect/repair';

export { storeFormatVersion } from './store-file';

export interface StoreOptions {
  /** "batch" (default): acknowledge after fdatasync; "interval": after write, fsync every syncIntervalMs; "none": after write. */
  sync?: SyncMode;
  syncIntervalMs?: number;
  /** Default segment size for topics that do not set one. */
  segmentBytes?: number;
  segmentMs?: number;
  /** Compress batches the engine encodes with lz4 when that makes them smaller (default true). */
  compression?: boolean;
  /**
   * Bytes of its newest batches a channel keeps in memory while someone watches it, so tail
   * reads need no file read (default limits.tailCacheBytesDefault; 0 = off).
   */
  tailCacheBytes?: number;
  /** Called for every torn tail or corruption found while opening. */
  onRecovery?: (finding: RecoveryFinding) => void;
  /**
   * Called when work the store does on its own fails (see StoreFault), once per cause, not at
   * every retry. Absent: a process warning (stderr).
   */
  onFault?: (fault: StoreFault) => void;
  /**
   * Called as open and close go through the store (topics opened, channels closed), so a
   * long start or stop of a large store can show how far it is: a call per unit, the last
   * with done = total.
   */
  onProgress?: (progress: StoreProgress) => void;
}

export interface StoreProgress {
  phase: 'open' | 'close';
  /** Topics opened (open) or channels closed (close) so far. */
  done: number;
  total: number;
}

/** A failure of the store's own work, said once per cause (StoreOptions.onFault); the store goes on serving. */
export interface StoreFault {
  /**
   * retention: a retention pass of this channel failed (counted; every pass tries again);
   * checkpoint: the channel opened but could not write its checkpoint (it serves; the next
   * retention pass, roll or close writes it); failed: a write, sync or roll of the channel
   * failed, and it refuses appends until the store is reopened (reads go on); delete: a
   * deleted topic's files could not all be removed (the next open removes them); damaged: a
   * lookup met a damaged batch and passed over it (said once per batch; verify and repair).
   */
  kind: 'retention' | 'checkpoint' | 'failed' | 'delete' | 'damaged';
  topic: string;
  /** null: the topic as a whole. */
  channel: number | null;
  /** The cause's code: an errno code (EIO, ENOSPC…) or a WaymarkError code. */
  code: string;
  /** One line naming topic, channel and cause. */
  message: string;
}

/** What went wrong in a channel since the store opened (Store.channelHealth). */
export interface ChannelHealth {
  topic: string;
  channel: number;
  /** Why the channel refuses appends until the store is reopened (sticky), or null. */
  failed: string | null;
  /** Retention passes that failed. */
  retentionFailures: number;
}

export interface TopicConfig {
  channels: number;
  /** 0 or absent: keep forever. */
  retentionMs?: number;
  /** 0 or absent: no size bound (per channel). */
  retentionBytes?: number;
  segmentBytes?: number;
  segmentMs?: number;
  /** Free text: who owns the topic (Milvus msgstream's channel owner description). */
  owner?: string;
}

export interface TopicInfo {
  name: string;
  channels: number;
  retentionMs: number;
  retentionBytes: number;
  segmentBytes: number;
  segmentMs: number;
  owner: string;
  createdAt: number;
}

export interface ChannelInfo {
  channel: number;
  logStartOffset: number;
  highWatermark: number;
  bytes: number;
  segments: number;
}

export interface AppendOptions {
  producerId?: number;
  producerSequence?: number;
}

export interface AppendResult {
  channel: number;
  baseOffset: number;
  brokerTimestamp: number;
  /** msgIds of the appended messages in order, 32 hex digits each. */
  msgIds: string[];
  duplicate: boolean;
}

export interface StoredMessage {
  topic: string;
  channel: number;
  offset: number;
  msgId: string;
  key: string | null;
  headers: Header[];
  body: Buffer;
  /** Producer time, ms. */
  timestamp: number;
  /** Broker append time, ms. */
  brokerTimestamp: number;
  deliverAt: number | null;
}

export interface ReadOptions {
  /** Where to start; the channel's log start when absent. */
  offset?: number;
  maxMessages?: number;
  maxBytes?: number;
}

export interface LookupOptions extends TimeRange {
  /** Messages at most (default 100, 1 to limits.lookupResultCountMax). */
  limit?: number;
  /** Bytes of bodies at most, past the first message (default: no bound but `limit`). */
  maxBytes?: number;
}

interface Topic {
  info: TopicInfo;
  dir: string;
  channels: ChannelLog[];
  /** Per channel: failed retention passes, and the cause of a fault last said (null once a pass succeeds). */
  upkeep: Array<{ retentionFailures: number; cause: string | null }>;
  /** Which topic of this name: a new number each time one is opened or created (Store.topicIncarnation). */
  incarnation: number;
}

let incarnations = 0;

const topicNamePattern = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
/** The folder a deleted topic is renamed to before its files go: `.deleted-<topic>-<ms>`. */
const deletedPrefix = '.deleted-';

/** Removes `dir` and what is in it, one file at a time, until `stop()` says so. */
async function removeTree(dir: string, stop: () => boolean): Promise<void> {
  let entries: fs.Dirent[];
  try {
    entries = await fs.promises.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (const entry of entries) {
    if (stop()) return;
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) await removeTree(p, stop);
    else await fs.promises.rm(p, { force: true });
  }
  if (!stop()) await fs.promises.rm(dir, { recursive: true, force: true });
}
const textDecoder = new TextDecoder();

export function checkTopicName(name: string, allowSystem = false): void {
  if (typeof name !== 'string' || !topicNamePattern.test(name) || Buffer.byteLength(name) > limits.topicNameBytesMax) {
    throw new WaymarkError('INVALID_NAME', `topic name ${shown(name)}: use 1-${limits.topicNameBytesMax} characters of A-Z a-z 0-9 . _ -, not starting with . or -`);
  }
  if (!allowSystem && name.startsWith('__')) throw new WaymarkError('INVALID_NAME', `topic names starting with __ are reserved for system topics`);
}

/**
 * A failed system call (ENOSPC, EIO, EMFILE…) as STORAGE_FAILED naming what was being done;
 * out of file descriptors says how to fix it (tooManyOpenFiles). Typed errors and programming
 * errors pass as they are.
 */
function storageError(err: unknown, what: string): unknown {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (err instanceof WaymarkError || typeof code !== 'string') return err;
  return new WaymarkError('STORAGE_FAILED', `${what}: ${tooManyOpenFiles(code) ?? (err as Error).message}`, { cause: code });
}

/**
 * mkdir -p that names the real cause: Node's recursive mkdir reports a parent it could not
 * make (EROFS, EACCES, ENOSPC) as ENOENT on the child ("ENOENT … mkdir <data>/topics" on a
 * read-only mount).
 */
function makeFolder(dir: string): void {
  try {
    fs.mkdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' && fs.statSync(dir).isDirectory()) return;
    if (code !== 'ENOENT' || path.dirname(dir) === dir) throw err;
    makeFolder(path.dirname(dir));
    fs.mkdirSync(dir);
  }
}

/** A channel to repair before the store opens (see Store.repairAtOpen). */
interface DamagedChannel {
  topic: Topic;
  channel: number;
  error: DamageBeforeSoundBatchesError;
}

export class Store {
  private readonly topics = new Map<string, Topic>();
  /** Topic folders found at open and left closed (topic.json unreadable): see isUnopenedTopic(). */
  private readonly unopened = new Set<string>();
  /** Broker times and topic creation times (see StoreClock). */
  private readonly clock = new StoreClock();
  /** What store.append encodes batches into (reused: see batch-buffers.ts). */
  private readonly batchBuffers = new BatchBuffers();
  private closed = false;
  /**
   * Topics being deleted, until their channels have closed: an append in flight may still
   * roll or seal, writing under the topic's old path — a topic of the same name made
   * meanwhile had the deleted one's segments mixed into it. createTopic and close wait.
   */
  private readonly deleting = new Map<string, Promise<void>>();
  private retentionTimer: NodeJS.Timeout | null = null;
  /** Folders of topics deleted before this open (`.deleted-…`), for sweepDeleted. */
  private leftovers: string[] = [];
  /** sweepDeleted at work (close waits for it). */
  private sweeping: Promise<void> = Promise.resolve();
  /** Every torn tail and corruption found while opening. */
  readonly recoveryReport: RecoveryFinding[] = [];
  /** Damaged batches lookups have said (damagedRead), so each is said once. */
  private readonly damageSaid = new Set<string>();

  private constructor(
    readonly dir: string,
    private readonly options: Required<Omit<StoreOptions, 'onRecovery' | 'onFault' | 'onProgress'>> & Pick<StoreOptions, 'onRecovery' | 'onFault' | 'onProgress'>,
    private readonly lock: FolderLock,
  ) {}

  static async open(dir: string, options: StoreOptions = {}): Promise<Store> {
    await loadChecksum();
    makeFolder(path.join(dir, 'topics'));
    const lock = lockFolder(dir);
    try {
      const resolved = {
        sync: options.sync ?? 'batch',
        syncIntervalMs: options.syncIntervalMs ?? limits.syncIntervalMsDefault,
        segmentBytes: options.segmentBytes ?? limits.segmentBytesDefault,
        segmentMs: options.segmentMs ?? limits.segmentMsDefault,
        compression: options.compression ?? true,
        tailCacheBytes: nonNegative('tailCacheBytes', options.tailCacheBytes ?? limits.tailCacheBytesDefault),
        onRecovery: options.onRecovery,
        onFault: options.onFault,
        onProgress: options.onProgress,
      };
      if (!['batch', 'interval', 'none'].includes(resolved.sync)) throw new WaymarkError('INVALID_ARGUMENT', `sync must be batch, interval or none, not ${resolved.sync}`);
      checkSegmentBytes(resolved.segmentBytes);
      checkSegmentMs(resolved.segmentMs);
      const store = new Store(dir, resolved, lock);
      try {
        const damaged = await store.openAll();
        for (const d of damaged) await store.repairAtOpen(d);
      } catch (err) {
        // Nothing stays open of a store that did not open (the lock goes just below).
        for (const topic of store.topics.values()) for (const channel of topic.channels) channel?.closeNow();
        throw err;
      }
      store.retentionTimer = setInterval(() => void store.applyRetention(), limits.retentionSweepMs);
      store.retentionTimer.unref();
      store.sweeping = store.sweepDeleted();
      return store;
    } catch (err) {
      lock.release();
      throw err;
    }
  }

  /**
   * A channel whose recovery found damage with sound batches after it (see
   * DamageBeforeSoundBatchesError): repaired as `waymark repair` would — every sound batch
   * kept, the damaged bytes saved aside, the damaged offsets left as a gap, never handed out
   * again — then opened. The repair's drops are reported like any recovery finding.
   */
  private async repairAtOpen({ topic, channel, error }: DamagedChannel): Promise<void> {
    const dir = path.join(topic.dir, String(channel));
    const repaired = await repairStore(dir, { lockHeld: true });
    if (repaired.problems.length > 0) {
      throw new WaymarkError('CORRUPT_FILE', `${error.message}; repair could not mend ${dir}: ${repaired.problems.map((p) => p.what).join('; ')}`, { file: error.file });
    }
    const report: RecoveryFinding[] = repaired.dropped.map((d) => ({
      file: d.file,
      position: d.position,
      bytesDropped: d.bytes,
      kind: 'corrupt',
      reason: `${d.reason}; the sound batches after it were kept (repaired at open)`,
      ...(d.savedTo ? { savedTo: d.savedTo } : {}),
    }));
    topic.channels[channel] = ChannelLog.open(dir, this.channelOptions(topic, channel), report);
    this.report(report);
  }

  private report(findings: readonly RecoveryFinding[]): void {
    for (const finding of findings) {
      this.recoveryReport.push(finding);
      this.options.onRecovery?.(finding);
    }
  }

  /**
   * Opens every topic; returns the channels that need a repair before they can open.
   *
   * Channels are recovered one after another, in order, but the file work that ends each
   * open (ChannelLog.openAsync: a checkpoint, ~1.5 ms of syncs) goes on in the thread pool, up
   * to limits.openCloseChannelCountMax channels at once: one after another, a store of 9,601
   * channels took 11–15 s to open. A topic counts as opened (onProgress) once all of its
   * channels are. On a failure nothing more is started, and this throws once what is in flight
   * is done (Store.open then closes every file).
   */
  private async openAll(): Promise<DamagedChannel[]> {
    const damaged: DamagedChannel[] = [];
    markStoreCurrent(this.dir);
    const topicsDir = path.join(this.dir, 'topics');
    const names = fs.readdirSync(topicsDir);
    const slots = new IoSlots(limits.openCloseChannelCountMax);
    // Every promise here resolves, never rejects: a failure is kept in `failure` (the first one).
    const pending: Array<Promise<void>> = [];
    let failure: { error: unknown } | null = null;
    const fail = (error: unknown): void => void (failure ??= { error });
    let done = 0;
    const progress = (): void => {
      if (failure) return;
      try {
        this.options.onProgress?.({ phase: 'open', done, total: names.length });
      } catch (err) {
        fail(err);
      }
    };
    progress();
    try {
      for (const name of names) {
        if (failure) break;
        const dir = path.join(topicsDir, name);
        if (name.startsWith('.')) {
          // A deleted topic's files go after open, through the thread pool (sweepDeleted): a
          // 3 GiB one held open 0.6 s here. An interrupted create (small, and its name reused
          // by the next create of the topic) goes now.
          if (name.startsWith(deletedPrefix)) this.leftovers.push(dir);
          else fs.rmSync(dir, { recursive: true, force: true });
          done++;
          progress();
          continue;
        }
        let info: TopicInfo;
        try {
          info = readTopicFile(dir, this.options);
        } catch (err) {
          // One unreadable topic must not keep the others from serving: it is left closed and said.
          this.unopened.add(name);
          this.report([{ file: path.join(dir, topicFile), position: 0, bytesDropped: 0, kind: 'corrupt', reason: `topic ${name} not opened: ${(err as Error).message}; waymark repair rebuilds topic.json from its channel folders` }]);
          done++;
          progress();
          continue;
        }
        this.clock.observe(0, info.createdAt);
        const topic = this.newTopic(info, dir);
        this.topics.set(info.name, topic); // from now on a failed open closes its channels (Store.open)
        const report: RecoveryFinding[] = [];
        const ready: Array<Promise<void>> = [];
        try {
          for (let c = 0; c < info.channels && !failure; c++) {
            const release = await slots.acquire();
            let opened: { channel: ChannelLog; ready: Promise<void> };
            try {
              opened = await slots.withDescriptors(() => ChannelLog.openAsync(path.join(dir, String(c)), this.channelOptions(topic, c), report, slots));
            } catch (err) {
              release();
              if (!(err instanceof DamageBeforeSoundBatchesError)) throw storageError(err, `opening topic ${info.name}`);
              damaged.push({ topic, channel: c, error: err });
              topic.channels.push(null as unknown as ChannelLog); // filled by repairAtOpen before open returns
              continue;
            }
            topic.channels.push(opened.channel);
            ready.push(opened.ready.catch((err: unknown) => fail(storageError(err, `opening topic ${info.name}`))).finally(release));
          }
        } finally {
          pending.push(
            Promise.all(ready).then(() => {
              done++;
              progress();
            }),
          );
        }
        this.report(report);
      }
    } catch (err) {
      fail(err);
    }
    await Promise.all(pending);
    if (failure) throw (failure as { error: unknown }).error;
    return damaged;
  }

  /**
   * Removes the folders of topics deleted before this open (a crash or a failed removal left
   * them), file by file through the thread pool: unlinking frees the blocks, ~20 ms per
   * 64 MiB segment. Their names are unique and no longer any topic's, so the store serves
   * meanwhile. Close stops it between two files (the next open goes on); a failure is a
   * `delete` fault, and the next open tries again.
   */
  private async sweepDeleted(): Promise<void> {
    for (const dir of this.leftovers.splice(0)) {
      try {
        await removeTree(dir, () => this.closed);
      } catch (err) {
        const topic = path.basename(dir).slice(deletedPrefix.length).replace(/-\d+$/, '');
        this.fault({ kind: 'delete', topic, channel: null, code: errorCode(err), message: `removing ${dir}, left by an earlier delete of topic ${topic}, failed: ${(err as Error).message}; the next start tries again` });
      }
    }
  }

  /** Opens the channels of a topic just created (Store.open opens the others: openAll). */
  private openTopic(info: TopicInfo, dir: string): Topic {
    const topic = this.newTopic(info, dir);
    const report: RecoveryFinding[] = [];
    for (let c = 0; c < info.channels; c++) {
      try {
        topic.channels.push(ChannelLog.open(path.join(dir, String(c)), this.channelOptions(topic, c), report));
      } catch (err) {
        for (const opened of topic.channels) opened.closeNow(); // no file left open by a topic that did not open
        throw storageError(err, `opening topic ${info.name}`);
      }
    }
    this.report(report);
    this.topics.set(info.name, topic);
    return topic;
  }

  /** A topic with no channel open yet. */
  private newTopic(info: TopicInfo, dir: string): Topic {
    const upkeep = Array.from({ length: info.channels }, () => ({ retentionFailures: 0, cause: null }));
    return { info, dir, channels: [], upkeep, incarnation: ++incarnations };
  }

  private channelOptions(topic: Topic, channel: number): ChannelOptions {
    const { info } = topic;
    return {
      sync: this.options.sync,
      syncIntervalMs: this.options.syncIntervalMs,
      segmentBytes: info.segmentBytes,
      segmentMs: info.segmentMs,
      retentionMs: info.retentionMs,
      retentionBytes: info.retentionBytes,
      tailCacheBytes: this.options.tailCacheBytes,
      onFault: (kind, err) => this.channelFault(topic, channel, kind, err),
      clock: this.clock,
    };
  }

  private check(): void {
    if (this.closed) throw new WaymarkError('STORE_CLOSED');
  }

  private topic(name: string): Topic {
    this.check();
    const topic = this.topics.get(name);
    if (topic) return topic;
    // A name no topic can have is INVALID_NAME, as creating it would be (`a/b` was "does not exist").
    checkTopicName(name, true);
    throw new WaymarkError('TOPIC_NOT_FOUND', `topic ${shown(name)} does not exist`, { topic: name });
  }

  private channel(topicName: string, channel: number): ChannelLog {
    const topic = this.topic(topicName);
    if (!Number.isInteger(channel) || channel < 0 || channel >= topic.channels.length) {
      throw new WaymarkError('CHANNEL_NOT_FOUND', `topic ${topicName} has channels 0..${topic.channels.length - 1}, not ${channel}`);
    }
    return topic.channels[channel]!;
  }

  // ---------------------------------------------------------------- topics

  async createTopic(name: string, config: TopicConfig, internal: { system?: boolean } = {}): Promise<TopicInfo> {
    const deleting = this.deleting.get(name);
    if (deleting) await deleting.catch(() => undefined); // the deleted topic's channels write nothing more
    this.check();
    checkTopicName(name, internal.system);
    if (this.topics.has(name)) throw new WaymarkError('TOPIC_EXISTS', `topic ${name} already exists`, { topic: name });
    const channels = config.channels;
    if (!Number.isInteger(channels) || channels < 1) {
      throw new WaymarkError('INVALID_ARGUMENT', `channels must be a whole number from 1 to ${limits.channelCountMax}, not ${shown(channels)}`);
    }
    if (channels > limits.channelCountMax) throw new WaymarkError('TOO_MANY_CHANNELS', `channels must be 1..${limits.channelCountMax}, not ${channels}`);
    // Checked, not coerced: configs come from JSON too (HTTP), where {"owner": 5} was stored as "5".
    if (config.owner != null && typeof config.owner !== 'string') throw new WaymarkError('INVALID_ARGUMENT', `owner must be a string, not ${shown(config.owner)}`);
    if (config.owner != null && Buffer.byteLength(config.owner) > limits.ownerBytesMax) throw new WaymarkError('INVALID_ARGUMENT', `owner is ${Buffer.byteLength(config.owner)} bytes, the limit is ${limits.ownerBytesMax}`);
    // eslint-disable-next-line no-control-regex
    if (config.owner != null && /[\u0000-\u001f\u007f]/.test(config.owner)) throw new WaymarkError('INVALID_ARGUMENT', 'owner must be one line of text (no control characters): listings print it as it is');
    const info: TopicInfo = {
      name,
      channels,
      retentionMs: nonNegative('retentionMs', config.retentionMs ?? 0),
      retentionBytes: nonNegative('retentionBytes', config.retentionBytes ?? 0),
      segmentBytes: checkSegmentBytes(config.segmentBytes ?? this.options.segmentBytes),
      segmentMs: checkSegmentMs(nonNegative('segmentMs', config.segmentMs ?? this.options.segmentMs) || this.options.segmentMs),
      owner: config.owner ?? '',
      createdAt: this.clock.creation(),
    };
    const topicsDir = path.join(this.dir, 'topics');
    if (fs.existsSync(path.join(topicsDir, name))) {
      throw new WaymarkError('TOPIC_EXISTS', `a folder for topic ${name} exists but was not opened (its topic.json is unreadable; see the start-up report, or run waymark repair)`, { topic: name });
    }
    const temp = path.join(topicsDir, `.creating-${name}`);
    const dir = path.join(topicsDir, name);
    try {
      fs.rmSync(temp, { recursive: true, force: true });
      fs.mkdirSync(temp);
      // The channel folders are made here, in the folder not yet in place: the fsync of it
      // that writing topic.json ends with makes their entries durable with topic.json's. Made
      // after the rename (by the channels' open) they were entries nothing ever fsynced: a
      // power cut could lose a channel folder and every acknowledged message in it.
      for (let channel = 0; channel < channels; channel++) fs.mkdirSync(path.join(temp, String(channel)));
      writeTopicFile(temp, info);
      fs.renameSync(temp, dir);
    } catch (err) {
      // A full disk, say: the half-made folder goes now, not at the next start. The channel
      // folders first, by name: removing a folder that is not empty lists it, which takes a
      // descriptor, and the create may have failed for want of one (EMFILE).
      try {
        for (let channel = 0; channel < channels; channel++) fs.rmSync(path.join(temp, String(channel)), { recursive: true, force: true });
        fs.rmSync(temp, { recursive: true, force: true });
      } catch {
        // the next open sweeps it
      }
      throw storageError(err, `creating topic ${name}`);
    }
    try {
      syncDir(topicsDir); // the new name is on disk before the create is answered (a power cut lost it)
      this.openTopic(info, dir);
    } catch (err) {
      // Half made (out of file descriptors, say): nothing of it stays, on disk or open, so
      // it neither comes back at the next start nor blocks a later create of the name.
      const away = path.join(topicsDir, `${deletedPrefix}${name}-${Date.now()}`);
      fs.renameSync(dir, away);
      try {
        // The name was made durable above: its removal must be too, or a power cut brings back
        // a topic whose create was refused (the next open sweeps the renamed folder).
        syncDir(topicsDir);
      } catch {
        // (the create's own error is the one to tell)
      }
      fs.rmSync(away, { recursive: true, force: true });
      throw storageError(err, `creating topic ${name}`);
    }
    return { ...info };
  }

  /**
   * Deletes a topic: wholly there or wholly gone at every step. The folder is renamed away
   * first (needing no space): when that fails nothing has changed (STORAGE_FAILED, the topic
   * still served). After it the topic is gone (a crash now, and the next open sweeps the
   * folder); its channels close without writing anything, and its files are removed.
   */
  async deleteTopic(name: string): Promise<void> {
    const topic = this.topic(name);
    const away = path.join(this.dir, 'topics', `${deletedPrefix}${name}-${Date.now()}`);
    try {
      fs.renameSync(topic.dir, away);
    } catch (err) {
      throw new WaymarkError('STORAGE_FAILED', `deleting topic ${name}: ${(err as Error).message}; the topic is still there`, { topic: name, cause: errorCode(err) });
    }
    try {
      syncDir(path.join(this.dir, 'topics')); // the rename is on disk before the delete is answered
    } catch (err) {
      // Renamed all the same (the next open sweeps the folder); only a power cut now could bring it back.
      this.fault({ kind: 'delete', topic: name, channel: null, code: errorCode(err), message: `topic ${name} is deleted, but syncing the topics folder failed: ${(err as Error).message}` });
    }
    this.topics.delete(name);
    // Appends in flight finish on the open descriptors (or fail); nothing else is written.
    const closing = Promise.all(topic.channels.map((c) => c.close({ deleting: true }))).then(() => undefined);
    this.deleting.set(name, closing);
    try {
      await closing;
    } finally {
      if (this.deleting.get(name) === closing) this.deleting.delete(name);
    }
    try {
      // Through the thread pool: unlinking a file frees its blocks, 20–22 ms per 64 MiB segment
      // here, and rmSync held the event loop that long for every segment of the topic.
      await fs.promises.rm(away, { recursive: true, force: true });
    } catch (err) {
      // The topic is gone all the same (a new one of the name may be made); its space is not yet.
      this.fault({ kind: 'delete', topic: name, channel: null, code: errorCode(err), message: `topic ${name} was deleted, but removing its files failed: ${(err as Error).message}; the next start removes ${away}` });
    }
  }

  listTopics(): TopicInfo[] {
    this.check();
    return [...this.topics.values()].map((t) => ({ ...t.info })).sort((a, b) => a.name.localeCompare(b.name));
  }

  hasTopic(name: string): boolean {
    return this.topics.has(name);
  }

  /**
   * Topic folders this open found and left closed because their topic.json is unreadable
   * (see recoveryReport; `waymark repair` rebuilds it). Their data is on disk and comes back
   * with the repair, so what refers to them by name (committed group positions) must not be
   * taken for the leftovers of a deleted topic meanwhile.
   */
  isUnopenedTopic(name: string): boolean {
    return this.unopened.has(name);
  }

  describeTopic(name: string): TopicInfo & { channelInfo: ChannelInfo[] } {
    const topic = this.topic(name);
    return {
      ...topic.info,
      channelInfo: topic.channels.map((c, channel) => ({
        channel,
        logStartOffset: c.logStartOffset,
        highWatermark: c.highWatermark,
        bytes: c.totalBytes,
        segments: c.segmentCount,
      })),
    };
  }

  // ---------------------------------------------------------------- writes

  /** Encodes messages into one batch and appends it; resolves once durable (per the sync mode). */
  async append(topic: string, channel: number, messages: readonly MessageInput[], options: AppendOptions = {}): Promise<AppendResult> {
    const log = this.channel(topic, channel);
    const buffers = this.batchBuffers;
    const { batch, packedMsgIds, indexKeys } = encodeBatch(messages, { ...options, codec: this.options.compression ? lz4Codec : null, indexKeys: true, allocate: buffers.take });
    const probe = probeHeader(batch, 0);
    if (probe.kind !== 'ok') throw new Error(`append: encoded batch fails its own probe (${probe.kind})`);
    const appended = log.append(batch, probe.header, indexKeys);
    const msgIds = packedMsgIdsToHexList(packedMsgIds); // while the write is in flight
    let outcome: AppendOutcome;
    try {
      outcome = await appended;
    } finally {
      // Settled: written (or failed), indexed, copied to the tail cache; nothing reads it now.
      buffers.give(batch);
      if (indexKeys!.bytes !== batch) buffers.give(indexKeys!.bytes);
    }
    if (outcome.duplicate) return this.storedAppend(topic, channel, outcome);
    return { channel, baseOffset: outcome.baseOffset, brokerTimestamp: outcome.brokerTimestamp, msgIds, duplicate: false };
  }

  /**
   * A retried producer sequence: what the first append stored, read back (the ids encoded
   * for the retry are new ones, never stored). Rare: a resend after a lost acknowledgement.
   */
  private async storedAppend(topic: string, channel: number, outcome: AppendOutcome): Promise<AppendResult> {
    // Retention may have deleted it since (the read said OFFSET_OUT_OF_RANGE: helper-58): its
    // msgIds cannot be told, so the retry is refused as one the channel cannot answer.
    const gone = (): WaymarkError =>
      new WaymarkError('DUPLICATE_SEQUENCE', `this producer sequence was appended before (offsets ${outcome.baseOffset}…), and retention has deleted it since; nothing was appended`);
    if (outcome.baseOffset < this.channel(topic, channel).logStartOffset) throw gone();
    const stored = await this.read(topic, channel, { offset: outcome.baseOffset, maxMessages: outcome.recordCount, maxBytes: limits.batchBytesMax }).catch((err: unknown) => {
      throw err instanceof WaymarkError && err.code === 'OFFSET_OUT_OF_RANGE' ? gone() : err;
    });
    if (stored.length !== outcome.recordCount || stored[0]?.offset !== outcome.baseOffset) {
      throw new WaymarkError('CORRUPT_FILE', `the batch a retried sequence matched (offsets ${outcome.baseOffset}…) cannot be read back`);
    }
    return { channel, baseOffset: outcome.baseOffset, brokerTimestamp: stored[0].brokerTimestamp, msgIds: stored.map((m) => m.msgId), duplicate: true };
  }

  /**
   * Appends a batch built elsewhere (the SDK), as it is: header and checksum are validated,
   * then only baseOffset and brokerTimestamp are patched. The store takes ownership of
   * `batch` (it is patched in place and written from).
   */
  async appendBatch(topic: string, channel: number, batch: Uint8Array): Promise<AppendOutcome> {
    const log = this.channel(topic, channel);
    const header = validateBatch(batch);
    if (header.flags & BatchFlag.control) throw new WaymarkError('BAD_REQUEST', 'control batches are written by the broker only');
    return log.append(batch, header);
  }

  // ---------------------------------------------------------------- reads

  /**
   * Raw whole batches from an offset, at most `maxBytes` (1 MiB) after the first and, with `maxMessages`, none
   * after the first that holds a record at or past offset + maxMessages; always at least one
   * batch. With `buffer`, read into it (valid until the caller reuses it).
   */
  readBatches(topic: string, channel: number, options: { offset: number; maxBytes?: number; maxMessages?: number; buffer?: Buffer }): Promise<BatchRead> {
    const { maxMessages, maxBytes } = options;
    if (maxMessages !== undefined && (!Number.isSafeInteger(maxMessages) || maxMessages < 1)) return Promise.reject(new WaymarkError('INVALID_ARGUMENT', `maxMessages ${maxMessages}: at least 1`));
    if (maxBytes !== undefined && (!Number.isSafeInteger(maxBytes) || maxBytes < 1)) return Promise.reject(new WaymarkError('INVALID_ARGUMENT', `maxBytes ${maxBytes}: at least 1`));
    return this.readOf(topic, this.channel(topic, channel).readBatches(options.offset, options.maxBytes ?? 1024 * 1024, options.buffer, options.maxMessages));
  }

  /**
   * A read of `topic` (begun just now), its failure named for what happened meanwhile: the
   * topic deleted (TOPIC_NOT_FOUND; it was "deleted by retention: read again from the log
   * start", helper-58) or the store closed (STORE_CLOSED).
   */
  private async readOf<T>(topic: string, read: Promise<T>): Promise<T> {
    const reading = this.topics.get(topic);
    try {
      return await read;
    } catch (err) {
      if (this.closed) throw new WaymarkError('STORE_CLOSED', 'the store closed while a read was under way');
      if (this.topics.get(topic) !== reading) throw new WaymarkError('TOPIC_NOT_FOUND', `topic ${shown(topic)} was deleted while being read`, { topic });
      throw err;
    }
  }

  async read(topic: string, channel: number, options: ReadOptions = {}): Promise<StoredMessage[]> {
    const log = this.channel(topic, channel);
    const offset = options.offset ?? log.logStartOffset;
    const maxMessages = options.maxMessages ?? 1000;
    const maxBytes = options.maxBytes ?? 1024 * 1024;
    if (!Number.isSafeInteger(maxMessages) || maxMessages < 1) throw new WaymarkError('INVALID_ARGUMENT', `maxMessages ${maxMessages}: at least 1`);
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) throw new WaymarkError('INVALID_ARGUMENT', `maxBytes ${maxBytes}: at least 1`);
    const { records, brokerTimestamps } = await this.readOf(topic, log.read(offset, maxMessages, maxBytes));
    return records.map((r, i) => toMessage(topic, channel, r, brokerTimestamps[i]!));
  }

  channelState(topic: string, channel: number): { logStartOffset: number; highWatermark: number } {
    const log = this.channel(topic, channel);
    return { logStartOffset: log.logStartOffset, highWatermark: log.highWatermark };
  }

  /** Calls `watcher` whenever the channel's high watermark advances; returns the way to stop. */
  watch(topic: string, channel: number, watcher: () => void): () => void {
    return this.channel(topic, channel).watch(watcher);
  }

  /** See ChannelLog.stableTimestamp: the broker time up to which the channel is complete. */
  stableTimestamp(topic: string, channel: number, now?: number): number {
    return this.channel(topic, channel).stableTimestamp(now);
  }

  topicInfo(name: string): TopicInfo {
    return { ...this.topic(name).info };
  }

  /**
   * A number that tells this topic from another of the same name made later (deleted and
   * created again): a subscription checks it, or it went on into the new topic at its old
   * positions. TOPIC_NOT_FOUND when there is none.
   */
  topicIncarnation(name: string): number {
    return this.topic(name).incarnation;
  }

  /** The first offset with broker time ≥ `timestamp` (the high watermark when none). */
  offsetForTime(topic: string, channel: number, timestamp: number): Promise<number> {
    return this.readOf(topic, this.channel(topic, channel).offsetForTime(timestamp));
  }

  /** The message with this msgId (32 hex digits), searched in every channel of the topic. */
  async lookupMsgId(topic: string, msgId: string): Promise<StoredMessage | null> {
    const id = msgIdFromHex(msgId);
    if (!id) throw new WaymarkError('INVALID_ARGUMENT', `msgId must be 32 hex digits, got ${JSON.stringify(msgId)}`);
    // An id the producer made carries its clock, and broker time is later unless the clocks
    // disagree by more than a day: segments older than that are skipped. An id the
    // application chose need not start with a time at all, so a miss there searches the rest.
    const hash = xxh32(id, IndexKind.msgId);
    const matches = (r: StoredRecord): boolean => bytesEqual(r.msgId, id);
    const timeFrom = msgIdTime(id) - 24 * 3600 * 1000;
    const found = (await this.lookupAll(topic, hash, { timeFrom }, 1, matches)).messages;
    if (found.length > 0) return found[0]!;
    const older = (await this.lookupAll(topic, hash, { timeTo: timeFrom - 1 }, 1, matches)).messages;
    return older[0] ?? null;
  }

  /** Messages with this key, newest first, optionally within a broker-time range. */
  async lookupKey(topic: string, key: string | Uint8Array, options: LookupOptions = {}): Promise<StoredMessage[]> {
    return (await this.keyLookup(topic, key, options, false)).messages;
  }

  /**
   * lookupKey, and whether the answer stopped at `limit` or `maxBytes` (`truncated`: there may
   * be older messages with the key; ask again with `timeTo` at the last one's broker time).
   */
  lookupKeyPage(topic: string, key: string | Uint8Array, options: LookupOptions = {}): Promise<{ messages: StoredMessage[]; truncated: boolean }> {
    return this.keyLookup(topic, key, options, true);
  }

  private keyLookup(topic: string, key: string | Uint8Array, options: LookupOptions, tellTruncated: boolean): Promise<{ messages: StoredMessage[]; truncated: boolean }> {
    const bytes = typeof key === 'string' ? Buffer.from(key) : key;
    // No stored key is longer: say so rather than answer "none found".
    if (bytes.length > limits.keyBytesMax) return Promise.reject(new WaymarkError('KEY_TOO_LARGE', `key is ${bytes.length} bytes, the limit is ${limits.keyBytesMax}`));
    return this.lookupAll(topic, xxh32(bytes, IndexKind.key), options, options.limit ?? 100, (r) => r.key !== null && bytesEqual(r.key, bytes), options.maxBytes, tellTruncated);
  }

  /** Messages whose `traceid` header equals `traceId`, newest first. */
  async lookupTraceId(topic: string, traceId: string, options: LookupOptions = {}): Promise<StoredMessage[]> {
    const bytes = Buffer.from(traceId);
    const page = await this.lookupAll(topic, xxh32(bytes, IndexKind.traceId), options, options.limit ?? 100, (r) => {
      const value = headerValue(r.headers, traceIdHeaderName);
      return value !== undefined && bytesEqual(value, bytes);
    });
    return page.messages;
  }

  /**
   * `tellTruncated`: each channel is asked one past each bound (a message more than `limit`, a
   * byte more than maxBytes), so that when one more exists it is found and the cut below drops
   * it: `truncated`. (Asked for exactly the bounds, a channel with exactly `limit` matches said
   * truncated, for ever: helper-60.) Else `truncated` is false: a msgId lookup stops at its
   * first match, not searching every segment for a second one.
   */
  private async lookupAll(topic: string, hash: number, range: TimeRange, limit: number, matches: (r: StoredRecord) => boolean, maxBytes = Infinity, tellTruncated = false): Promise<{ messages: StoredMessage[]; truncated: boolean }> {
    const t = this.topic(topic);
    limit = Math.max(1, Math.min(limit, limits.lookupResultCountMax));
    if (!(maxBytes >= 1)) throw new WaymarkError('INVALID_ARGUMENT', `maxBytes ${maxBytes}: at least 1`);
    const results: StoredMessage[] = [];
    const damaged: WaymarkError[] = [];
    for (let c = 0; c < t.channels.length; c++) {
      const before = damaged.length;
      const past = tellTruncated ? 1 : 0;
      for (const { record, brokerTimestamp } of await t.channels[c]!.lookup(hash, range, limit + past, matches, maxBytes + past, damaged)) {
        results.push(toMessage(topic, c, record, brokerTimestamp));
      }
      for (const err of damaged.slice(before)) this.damagedRead(topic, c, err);
    }
    // Candidates in damaged batches were passed over: the sound ones are the answer. When
    // none is sound, "none found" could be false (the one sought may be in the damage): the
    // damage is the answer.
    if (results.length === 0 && damaged.length > 0) throw damaged[0]!;
    results.sort((a, b) => b.brokerTimestamp - a.brokerTimestamp || b.offset - a.offset);
    // Newest first while they fit the byte bound (the first always).
    let count = 0;
    for (let bytes = 0; count < Math.min(limit, results.length) && (count === 0 || bytes + results[count]!.body.length <= maxBytes); count++) bytes += results[count]!.body.length;
    return { messages: results.slice(0, count), truncated: count < results.length };
  }

  // ---------------------------------------------------------------- upkeep

  /**
   * Deletes whole segments past each topic's retention. Resolves with how many were deleted,
   * once the checkpoints that no longer list them are written (through the thread pool, a
   * bounded number of channels at once). Never rejects (the 30 s timer calls it): a channel
   * whose pass fails (an unlink or its checkpoint: EIO, EROFS, a full disk) is left
   * consistent, counted (channelHealth), said once per cause (onFault), and tried again at
   * the next pass; the other channels go on.
   */
  async applyRetention(now: number = Date.now()): Promise<number> {
    if (this.closed) return 0;
    const slots = new IoSlots(limits.openCloseChannelCountMax);
    const passes: Array<Promise<number>> = [];
    for (const topic of this.topics.values()) {
      topic.channels.forEach((c, channel) => {
        passes.push(
          c.applyRetention(now, slots).then(
            (removed) => {
              topic.upkeep[channel]!.cause = null;
              return removed;
            },
            (err: unknown) => {
              // The topic deleted (or the store closed) under the pass: its files went with it,
              // which is no fault to report (a pass caught writing its checkpoint said
              // "retention … failed: ENOENT" for a topic that no longer exists: helper-58).
              if (this.closed || this.topics.get(topic.info.name) !== topic) return 0;
              topic.upkeep[channel]!.retentionFailures++;
              this.channelFault(topic, channel, 'retention', err);
              return 0;
            },
          ),
        );
      });
    }
    return (await Promise.all(passes)).reduce((a, b) => a + b, 0);
  }

  /** Says a channel's fault, once per cause: a retry that fails alike is only counted (a channel fails once). */
  private channelFault(topic: Topic, channel: number, kind: 'retention' | 'checkpoint' | 'failed', err: unknown): void {
    const cause = (err as Error).message;
    const name = topic.info.name;
    if (kind !== 'failed') {
      const state = topic.upkeep[channel]!;
      if (state.cause === cause) return;
      state.cause = cause;
    }
    const message =
      kind === 'retention'
        ? `retention of topic ${name} channel ${channel} failed: ${cause}; the channel goes on serving, and every retention pass tries again`
        : kind === 'checkpoint'
          ? `topic ${name} channel ${channel} opened, but its checkpoint could not be written: ${cause}; it serves, and the next retention pass, roll or close writes it`
          : `topic ${name} channel ${channel} failed: ${cause}; it refuses appends until the broker restarts (reads go on)`;
    this.fault({ kind, topic: name, channel, code: errorCode(err), message });
  }

  /** A lookup met a damaged batch: said once per file and position (a bounded memory of them). */
  private damagedRead(topic: string, channel: number, err: WaymarkError): void {
    const where = err.message;
    if (this.damageSaid.has(where)) return;
    if (this.damageSaid.size >= limits.damageSaidMax) this.damageSaid.clear();
    this.damageSaid.add(where);
    this.fault({ kind: 'damaged', topic, channel, code: err.code, message: `a lookup in topic ${topic} channel ${channel} passed over a damaged batch: ${err.message}` });
  }

  private fault(fault: StoreFault): void {
    if (this.options.onFault) this.options.onFault(fault);
    else process.emitWarning(`waymark: ${fault.message}`);
  }

  /** The channels that had trouble since the store opened (failed, or retention failures), for monitoring; system topics included. */
  channelHealth(): ChannelHealth[] {
    const out: ChannelHealth[] = [];
    for (const topic of this.topics.values()) {
      topic.upkeep.forEach((state, channel) => {
        const failed = topic.channels[channel]?.failed?.message ?? null;
        if (failed !== null || state.retentionFailures > 0) out.push({ topic: topic.info.name, channel, failed, retentionFailures: state.retentionFailures });
      });
    }
    return out;
  }

  /**
   * Deletes the whole segments of one channel that hold only offsets before `offset` (never
   * the active segment); the channel's log start moves to the first segment kept. For data
   * the caller has rewritten further on (the broker's `__groups` compaction): whatever is
   * written to the channel is made durable first, in every sync mode. Resolves to how many.
   */
  deleteSegmentsBefore(topic: string, channel: number, offset: number): Promise<number> {
    this.check();
    if (!Number.isSafeInteger(offset) || offset < 0) throw new WaymarkError('INVALID_ARGUMENT', `offset ${offset} is not a valid position`);
    return this.channel(topic, channel).deleteSegmentsBefore(offset);
  }

  /**
   * Resolves once every channel's queued appends are written and its rolled segments sealed
   * (their index files written, a checkpoint listing them): what a retention pass needs to
   * delete them — and the files of topics deleted before this open removed (sweepDeleted).
   * Background work the store does anyway; this only waits for it.
   */
  async settled(): Promise<void> {
    const waits: Array<Promise<void>> = [this.sweeping];
    for (const topic of this.topics.values()) for (const c of topic.channels) waits.push(c.settled());
    await Promise.all(waits);
  }

  /**
   * Finishes queued appends, writes clean checkpoints, and releases the folder lock. Every
   * channel is closed, and the lock released, even when a checkpoint or index cannot be
   * written (a full disk): then this rejects with the first such failure, STORAGE_FAILED
   * naming topic and channel (the next open scans what the checkpoint does not vouch for).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retentionTimer) clearInterval(this.retentionTimer);
    await Promise.allSettled([...this.deleting.values(), this.sweeping]); // their channels are not in `topics` any more
    const total = [...this.topics.values()].reduce((n, t) => n + t.channels.length, 0);
    let done = 0;
    this.options.onProgress?.({ phase: 'close', done, total });
    // Every channel stops taking appends now; their file work (sealing the active segment's
    // indexes, the clean checkpoint: ~2 ms of syncs each) goes on in the thread pool, up to
    // limits.openCloseChannelCountMax channels at once: one after another, a store of 9,601
    // channels took 19 s to close.
    const slots = new IoSlots(limits.openCloseChannelCountMax);
    const closing: Array<Promise<void>> = [];
    for (const t of this.topics.values()) {
      for (const [channel, c] of t.channels.entries()) {
        closing.push(
          c.close({ slots }).then(
            () => this.options.onProgress?.({ phase: 'close', done: ++done, total }),
            (err: unknown) => {
              throw storageError(err, `closing topic ${t.info.name} channel ${channel}`);
            },
          ),
        );
      }
    }
    try {
      const failed = (await Promise.allSettled(closing)).find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
    } finally {
      this.topics.clear();
      this.lock.release();
    }
  }
}

/** The code of any thrown value: an errno code (EIO…), a WaymarkError's, or INTERNAL. */
function errorCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'INTERNAL';
}

function toMessage(topic: string, channel: number, r: StoredRecord, brokerTimestamp: number): StoredMessage {
  return {
    topic,
    channel,
    offset: r.offset,
    msgId: msgIdToHex(r.msgId),
    key: r.key ? textDecoder.decode(r.key) : null,
    headers: r.headers.map((h) => ({ name: h.name, value: Buffer.from(h.value) })),
    body: Buffer.from(r.body),
    timestamp: r.timestamp,
    brokerTimestamp,
    deliverAt: r.deliverAt,
  };
}

function nonNegative(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new WaymarkError('INVALID_ARGUMENT', `${name} must be a whole number ≥ 0, not ${shown(value)}`);
  return value;
}

function checkSegmentMs(value: number): number {
  if (!Number.isSafeInteger(value) || value < 1 || value > limits.segmentMsMax) {
    throw new WaymarkError('INVALID_ARGUMENT', `segmentMs must be 1..${limits.segmentMsMax} (about 49.7 days: key index entries keep a segment's times as 32-bit ms), not ${shown(value)}`);
  }
  return value;
}

function checkSegmentBytes(value: number): number {
  if (!Number.isSafeInteger(value) || value < limits.segmentBytesMin || value > limits.segmentBytesMax) {
    throw new WaymarkError('INVALID_ARGUMENT', `segmentBytes must be ${limits.segmentBytesMin}..${limits.segmentBytesMax}, not ${shown(value)}`);
  }
  return value;
}

/** Opens (creating when absent) and recovers a store in `dir`. */
export function openStore(dir: string, options: StoreOptions = {}): Promise<Store> {
  return Store.open(dir, options);
}
