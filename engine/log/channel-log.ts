/**
 * One channel: an ordered set of segments, the group commit that appends to it, reads by
 * offset and time, key lookups, and retention.
 *
 * Invariants:
 * - offsets are assigned at enqueue, in call order, densely; the group commit writes
 *   batches in that same order, so a batch's offsets never depend on when it is flushed;
 * - `highWatermark` (one past the last acknowledged offset) only moves after a group is
 *   written and, in sync mode "batch", durable (the active segment is opened O_DSYNC, so
 *   the write returns only once its data is on disk, like a write + fdatasync); readers
 *   and lookups never see past it;
 * - a failed write or fsync is sticky: `failure` is set, every queued and later append is
 *   rejected with STORAGE_FAILED, and the channel must be reopened (DESIGN §3);
 * - broker timestamps never decrease within a channel.
 *
 * Recovery on open (decision table):
 *   | checkpoint says          | sealed segment (size matches) | active segment              |
 *   |--------------------------|-------------------------------|-----------------------------|
 *   | clean, sizes match       | trusted, not read             | trusted, indexes from files |
 *   | not clean / missing      | trusted, not read             | scanned, indexes rebuilt    |
 *   | segment unknown/mismatch | scanned, indexes rebuilt      | —                           |
 * When every segment is as a clean checkpoint lists it, open writes no checkpoint, and a
 * close with nothing appended since writes nothing (cleanCheckpointCurrent).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WaymarkError } from '../format/errors';
import { BatchOffset, batchHeaderBytes, decodeRecordAt, decodeRecords, patchBatch, probeHeader, readInt64, readUint32, type BatchHeader, type StoredRecord } from '../format/record-batch';
import { checksumHolds } from '../format/record-batch';
import { lz4Codec } from '../codec';
import type { KeyHit, TimeRange } from '../index/key-index';
import type { IndexKeyRanges } from '../format/index-kind';
import { limits } from '../limits';
import { CorruptIndexError, tooManyOpenFiles } from './errors';
import { checkpointFile, inspectCheckpoint, lostSegments, syncDir, syncDirAsync, writeCheckpoint, writeCheckpointAsync, type Checkpoint } from './checkpoint';
import * as pool from './fs-pool';
import { IoSlots } from './io-slots';
import { ProducerStates } from './producer-state';
import { lastCommitMayBeTorn, orphanIndexNames, outOfSpace, Segment, segmentFileName, segmentNamePattern, unlinkIfPresent, type RecoveryFinding, type SegmentMeta } from './segment';
import { encodeEndMark, endMarkBytes, segmentFileFits } from './segment-scanner';
import { TailCache } from './tail-cache';
import type { StoreClock } from '../clock';

export type SyncMode = 'batch' | 'interval' | 'none';

export interface ChannelOptions {
  sync: SyncMode;
  syncIntervalMs: number;
  segmentBytes: number;
  segmentMs: number;
  /** 0 = keep forever. */
  retentionMs: number;
  /** 0 = no size bound. */
  retentionBytes: number;
  /** Newest bytes kept in memory while the channel has watchers (0 = none). */
  tailCacheBytes: number;
  /**
   * Hears of the channel's faults: checkpoint, its checkpoint could not be written at open
   * (owed; see recover); failed, the channel turned failed (sticky), with the first cause.
   */
  onFault?: (kind: 'checkpoint' | 'failed', err: Error) => void;
  /** The store's broker time (one for every channel and topic: see StoreClock). */
  clock: StoreClock;
}

export interface AppendOutcome {
  baseOffset: number;
  recordCount: number;
  brokerTimestamp: number;
  /** True when this was a retry of a batch already stored (producer id + sequence). */
  duplicate: boolean;
}

export interface BatchRead {
  /** Whole batches, back to back; the first may start before the asked offset. */
  bytes: Buffer;
  batchCount: number;
  /** The offset to ask for next. */
  nextOffset: number;
}

interface Pending {
  batch: Uint8Array;
  header: BatchHeader;
  /** Where its index keys are, as its encoder wrote them (store.append); null to walk the records. */
  keys: IndexKeyRanges | null;
  baseOffset: number;
  brokerTimestamp: number;
  resolve: (outcome: AppendOutcome) => void;
  reject: (err: Error) => void;
}

/** A lookup reads this much at a batch's position at once (most batches fit; a larger one takes a second read). */
const lookupReadBytes = 128 * 1024;
/** Write errors that say the file system has no room (or the file may grow no further). */

export class ChannelLog {
  private readonly segments: Segment[] = [];
  private queue: Pending[] = [];
  private flushing: Promise<void> | null = null;
  /** The newest append queued (settled() waits for it). */
  private lastQueued: Promise<AppendOutcome> | null = null;
  private syncing: Promise<void> | null = null;
  /** Background seals of rolled segments (roll), chained in roll order. */
  private sealing: Promise<void> | null = null;
  private failure: WaymarkError | null = null;
  private closed = false;
  /** Closed for deletion (its topic is being deleted): its files go, nothing of them is written. */
  private deleting = false;
  private nextOffset = 0;
  private lastBrokerTimestamp = 0;
  private committedSize = 0; // bytes of the active segment readers may see
  private dirty = false; // written but not fdatasynced (sync modes interval / none)
  /** Lookups read batches into this one buffer (see recordAt). */
  private lookupBuffer: Buffer | null = null;
  private syncTimer: NodeJS.Timeout | null = null;
  private readonly producers = new ProducerStates();
  private readonly watchers = new Set<() => void>();
  /** The newest acknowledged batches, kept only while someone watches (tail readers). */
  private readonly tail: TailCache;
  /** Sync mode "batch": the active segment is opened O_DSYNC, so a finished write is durable. */
  private readonly dsync: boolean;
  /** Broker time of the oldest appended-but-unacknowledged batch, null when none. */
  private uncommittedFirstTimestamp: number | null = null;
  /** Index files of removed segments not unlinked yet (their logs are gone); each retention pass tries again. */
  private leftovers: string[] = [];
  /** A checkpoint write failed where nothing had to fail with it (after retention, at open): the next pass writes it. */
  private checkpointOwed = false;
  /** The seals (roll) not finished yet, oldest first: at limits.sealsPendingMax a roll waits for the oldest. */
  private readonly seals: Array<Promise<void>> = [];
  /** The intent of the removal under way (checkpoint `removingBefore`), 0 when none. */
  private removingBefore = 0;
  /** Removals (retention, compaction) run one at a time: each writes its intent, then removes. */
  private removals: Promise<unknown> = Promise.resolve();
  /**
   * The checkpoint on disk is a clean close's and this open found everything as it left it:
   * none was written at open. Until the next checkpoint write it still says clean, with the
   * active segment at its size then; a crash after appends leaves that segment longer than
   * listed, which open scans (a mismatch of size is never trusted). A close finds nothing to
   * write while the active segment is untouched too.
   */
  private cleanCheckpointCurrent = false;
  /**
   * Segment files made by this channel so far (Segment.create), and how many of them an fsync
   * of the channel folder is known to have covered (one that began after they were made). A
   * new file's folder entry is durable only once its folder is fsynced (POSIX; O_DSYNC writes
   * to the file do not cover it): a power cut could lose the file, and open would hand out its
   * offsets again. So nothing in a new segment is acknowledged before such an fsync
   * (writeGroup; a checkpoint write ends with one too).
   */
  private segmentsCreated = 0;
  private folderSyncedThrough = 0;
  highWatermark = 0;

  private constructor(
    readonly dir: string,
    private options: ChannelOptions,
  ) {
    this.tail = new TailCache(options.tailCacheBytes);
    this.dsync = options.sync === 'batch';
  }

  /** Opens (creating when absent) and recovers a channel folder, ready to serve. Findings are pushed to `report`. */
  static open(dir: string, options: ChannelOptions, report: RecoveryFinding[]): ChannelLog {
    const channel = ChannelLog.recovered(dir, options, report);
    try {
      channel.syncLeftoverTail();
    } catch (err) {
      channel.closeNow();
      throw err;
    }
    try {
      if (!channel.cleanCheckpointCurrent) channel.saveCheckpoint(false);
    } catch (err) {
      channel.checkpointFailedAtOpen(err as Error);
    }
    return channel;
  }

  /**
   * open() with its closing file work — the active segment's fdatasync and the checkpoint, a
   * few ms of waiting on the disk — in the thread pool, for a store opening thousands of
   * channels, many at once (Store.open; the caller holds a slot of `slots`). The recovery is
   * done on return, throwing as open() does; the channel may serve once `ready` resolves, and
   * no sooner (until then the checkpoint file is being written). `ready` rejects, the
   * channel's files closed, where open() would throw; a checkpoint that cannot be written is
   * owed, as in open().
   */
  static openAsync(dir: string, options: ChannelOptions, report: RecoveryFinding[], slots: IoSlots): { channel: ChannelLog; ready: Promise<void> } {
    const channel = ChannelLog.recovered(dir, options, report);
    const ready = (async () => {
      try {
        if (channel.leftoverTailToSync()) await channel.active.syncData();
      } catch (err) {
        channel.closeNow();
        throw err;
      }
      try {
        if (!channel.cleanCheckpointCurrent) await slots.withDescriptors(() => channel.saveCheckpointAsync(false));
      } catch (err) {
        channel.checkpointFailedAtOpen(err as Error);
      }
    })();
    return { channel, ready };
  }

  /** A channel folder made if absent and recovered (see recover), its files open; not yet ready to serve (see open). */
  private static recovered(dir: string, options: ChannelOptions, report: RecoveryFinding[]): ChannelLog {
    // A channel folder missing within the count starts empty (a topic's are made with it, in
    // Store.createTopic): made here, its entry is made durable before anything is written in
    // it, as a new segment's is.
    const made = fs.mkdirSync(dir, { recursive: true });
    if (made !== undefined) {
      const first = path.resolve(made);
      for (let folder = path.resolve(dir); folder !== path.dirname(folder); folder = path.dirname(folder)) {
        syncDir(path.dirname(folder));
        if (folder === first) break;
      }
    }
    const channel = new ChannelLog(dir, options);
    try {
      channel.recover(report);
    } catch (err) {
      channel.closeNow();
      throw err;
    }
    if (options.sync === 'interval') {
      channel.syncTimer = setInterval(() => channel.syncIfDirty(), options.syncIntervalMs);
      channel.syncTimer.unref();
    }
    return channel;
  }

  private get active(): Segment {
    return this.segments[this.segments.length - 1]!;
  }

  get logStartOffset(): number {
    return this.segments[0]!.baseOffset;
  }

  get totalBytes(): number {
    let total = 0;
    for (const s of this.segments) total += s.size;
    return total;
  }

  get segmentCount(): number {
    return this.segments.length;
  }

  setOptions(options: ChannelOptions): void {
    this.options = options;
  }

  private recover(report: RecoveryFinding[]): void {
    const { checkpoint, problem } = inspectCheckpoint(this.dir);
    // Costs only a full scan, but a file that fails its checks was damaged: said, not swallowed.
    if (problem !== null) report.push({ file: path.join(this.dir, checkpointFile), position: 0, bytesDropped: 0, kind: 'corrupt', reason: `checkpoint untrusted (${problem}): every segment scanned, nothing lost` });
    const trusted = new Map<number, SegmentMeta>();
    for (const meta of checkpoint?.segments ?? []) trusted.set(meta.baseOffset, meta);
    const names = fs.readdirSync(this.dir);
    const bases = names
      .filter((name) => segmentNamePattern.test(name))
      .map((name) => Number(name.slice(0, 20)))
      .sort((a, b) => a - b);
    removeOrphanIndexFiles(this.dir, names);
    this.producers.load(checkpoint?.producers ?? []);
    // A listed segment whose log is gone, with no removal under way (a checkpoint of format 3
    // says): its messages were lost by something other than the broker. Said, as recovery
    // says bytes it drops; the channel goes on with what is left.
    for (const meta of lostSegments(checkpoint, new Set(bases))) {
      report.push({
        file: path.join(this.dir, segmentFileName(meta.baseOffset, 'log')),
        position: 0,
        bytesDropped: 0, // nothing dropped here: they were gone before
        kind: 'corrupt',
        reason: `missing: checkpoint.json lists it (offsets ${meta.baseOffset}..${meta.nextOffset - 1}) and no removal was under way; its messages are lost`,
      });
    }

    let everyTrusted = true;
    for (let i = 0; i < bases.length; i++) {
      const base = bases[i]!;
      const isLast = i === bases.length - 1;
      const meta = trusted.get(base);
      const size = fs.statSync(path.join(this.dir, segmentFileName(base, 'log'))).size;
      const expectedBase = this.segments.length > 0 ? this.active.nextOffset : base;
      if (meta && segmentFileFits(size, meta.bytes) && meta.baseOffset === expectedBase) {
        if (!isLast) {
          this.segments.push(Segment.openSealed(this.dir, meta));
          continue;
        }
        if (checkpoint!.clean) {
          try {
            this.segments.push(Segment.reopenActive(this.dir, meta, size, this.dsync));
            continue;
          } catch (err) {
            if (!(err instanceof CorruptIndexError) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
            // fall through: scan the log and rebuild its indexes
          }
        }
      }
      everyTrusted = false;
      // A clean checkpoint's active segment lands here when its index fails: its last commit was acknowledged, not torn.
      const { segment, findings } = Segment.recover(this.dir, base, ({ header }) => this.producers.recordHeader(header, header.baseOffset), this.dsync, isLast && lastCommitMayBeTorn(checkpoint, base, size));
      report.push(...findings);
      if (segment.baseOffset !== expectedBase) {
        report.push({ file: segment.path('log'), position: 0, bytesDropped: 0, kind: 'corrupt', reason: `segment starts at ${segment.baseOffset}, previous ends at ${expectedBase}` });
      }
      if (!isLast) segment.seal();
      this.segments.push(segment);
    }

    if (this.segments.length === 0) {
      this.segments.push(Segment.create(this.dir, 0, this.dsync));
      this.segmentsCreated++; // the checkpoint written at open syncs the folder (else the first commit does)
    }
    this.nextOffset = this.active.nextOffset;
    this.highWatermark = this.nextOffset;
    this.committedSize = this.active.size;
    for (const s of this.segments) this.lastBrokerTimestamp = Math.max(this.lastBrokerTimestamp, s.maxTimestamp);
    this.options.clock.observe(this.lastBrokerTimestamp);
    this.cleanCheckpointCurrent = checkpoint !== null && checkpoint.clean && everyTrusted && checkpoint.segments.length === this.segments.length && this.active.untouchedSinceCleanClose;
    // What open (or openAsync) does next, before the channel serves: syncLeftoverTail, then
    // the checkpoint (clean=false) unless cleanCheckpointCurrent.
  }

  /**
   * O_DSYNC makes durable what each write covers, not bytes an earlier run left unsynced in
   * the page cache (sync "none" or "interval", then a crash of the process): they are synced
   * once at open, or an acknowledged append could come to sit after bytes a power cut then loses.
   * Not after a clean close, which left the log durable (Segment.untouchedSinceCleanClose).
   */
  private leftoverTailToSync(): boolean {
    return this.dsync && this.active.size > 0 && !this.active.untouchedSinceCleanClose;
  }

  private syncLeftoverTail(): void {
    if (this.leftoverTailToSync()) fs.fdatasyncSync(this.active.fd);
  }

  /**
   * The checkpoint written at open records what the open found and sealed, and that the
   * checkpoint no longer says clean. Safety does not hang on it: a clean checkpoint vouches
   * for the active segment only at the size it lists, which any append changes. So when it
   * cannot be written (a full disk) the channel still opens, acknowledged data stays
   * readable, and the write is owed to the next retention pass, roll or close; an append that
   * truly cannot be written fails the channel as always.
   */
  private checkpointFailedAtOpen(err: Error): void {
    this.checkpointOwed = true;
    this.options.onFault?.('checkpoint', err);
  }

  private saveCheckpoint(clean: boolean): void {
    this.cleanCheckpointCurrent = false;
    const created = this.segmentsCreated;
    writeCheckpoint(this.dir, this.checkpoint(clean));
    this.checkpointOwed = false;
    this.folderSynced(created); // the write ends with an fsync of the folder
  }

  /** An fsync of the channel folder that began once `created` segment files were made is done. */
  private folderSynced(created: number): void {
    this.folderSyncedThrough = Math.max(this.folderSyncedThrough, created);
  }

  /**
   * saveCheckpoint through the thread pool: at store open and close, and after a seal (while
   * `sealing` is set, which keeps retention from writing the file at the same time: see
   * removeOldestWhile). What it writes is taken at the call; a change made while the write
   * runs leaves the checkpoint owed.
   */
  private async saveCheckpointAsync(clean: boolean): Promise<void> {
    this.cleanCheckpointCurrent = false;
    const checkpoint = this.checkpoint(clean);
    const owed = this.checkpointOwed;
    this.checkpointOwed = false;
    const created = this.segmentsCreated;
    try {
      await writeCheckpointAsync(this.dir, checkpoint);
    } catch (err) {
      this.checkpointOwed ||= owed;
      throw err;
    }
    this.folderSynced(created); // the write ends with an fsync of the folder
  }

  private checkpoint(clean: boolean): Checkpoint {
    const segments = this.segments.filter((s) => s.sealed).map((s) => s.meta());
    return { clean, removingBefore: this.removingBefore, segments, producers: this.producers.entries(segments.at(-1)?.nextOffset ?? 0) };
  }

  /**
   * Appends one validated batch (header probed, checksum verified by the caller). The batch
   * bytes are patched in place with the base offset and broker time, then written as they
   * are. Resolves once durable per the sync mode. `keys`: where the batch's index keys are, as
   * our own encoder wrote them (trusted as the batch is), else null and the records are walked.
   */
  append(batch: Uint8Array, header: BatchHeader, keys: IndexKeyRanges | null = null): Promise<AppendOutcome> {
    if (this.closed) return Promise.reject(new WaymarkError('STORE_CLOSED'));
    if (this.failure) return Promise.reject(this.failure);
    const idempotent = ProducerStates.isIdempotent(header);
    if (idempotent) {
      const check = this.producers.check(header);
      if (check.kind === 'duplicate') {
        const { baseOffset, count, done, brokerTimestamp } = check.batch;
        const outcome: AppendOutcome = { baseOffset, recordCount: count, brokerTimestamp, duplicate: true };
        return done ? done.then((o) => ({ ...(o as AppendOutcome), duplicate: true })) : Promise.resolve(outcome);
      }
      if (check.kind === 'stale') {
        return Promise.reject(
          new WaymarkError('DUPLICATE_SEQUENCE', `producer ${header.producerId} sequence ${header.producerSequence} is at or before its last stored sequence ${check.lastSeq} and not one of its recent batches: a resend of a batch stored long ago (its offsets are no longer known), not stored again`),
        );
      }
    }
    const baseOffset = this.nextOffset;
    this.nextOffset += header.recordCount;
    const brokerTimestamp = this.options.clock.stamp(this.lastBrokerTimestamp);
    this.lastBrokerTimestamp = brokerTimestamp;
    this.uncommittedFirstTimestamp ??= brokerTimestamp;
    patchBatch(batch, baseOffset, brokerTimestamp);
    header.baseOffset = baseOffset;
    header.brokerTimestamp = brokerTimestamp;
    const done = new Promise<AppendOutcome>((resolve, reject) => {
      this.queue.push({ batch, header, keys, baseOffset, brokerTimestamp, resolve, reject });
    });
    this.lastQueued = done;
    if (idempotent) this.producers.record(header.producerId, header.producerSequence, header.recordCount, baseOffset, done, brokerTimestamp);
    this.flushing ??= this.flushLoop();
    return done;
  }

  /** The group commit: everything queued since the last round goes out in one write + one fdatasync. */
  private async flushLoop(): Promise<void> {
    try {
      while (this.queue.length > 0 && !this.failure) {
        const group = this.takeGroup();
        try {
          // In sync mode "batch" the active segment is O_DSYNC: a finished write is durable.
          await this.writeGroup(group);
          if (!this.dsync) this.dirty = true;
        } catch (err) {
          this.fail(err as Error, group);
          return;
        }
        const last = group[group.length - 1]!;
        this.highWatermark = last.baseOffset + last.header.recordCount;
        this.committedSize = this.active.size;
        this.uncommittedFirstTimestamp = this.queue.length > 0 ? this.queue[0]!.brokerTimestamp : null;
        for (const p of group) p.resolve({ baseOffset: p.baseOffset, recordCount: p.header.recordCount, brokerTimestamp: p.brokerTimestamp, duplicate: false });
        if (this.watchers.size > 0) {
          for (const p of group) this.tail.add(p.batch, p.baseOffset, p.baseOffset + p.header.recordCount);
          for (const watcher of this.watchers) watcher();
        }
      }
    } finally {
      this.flushing = null;
    }
  }

  private takeGroup(): Pending[] {
    let bytes = 0;
    let count = 0;
    while (count < this.queue.length && count < limits.groupCommitBatchCountMax) {
      const size = this.queue[count]!.batch.length;
      if (count > 0 && bytes + size > limits.groupCommitBytesMax) break;
      bytes += size;
      count++;
    }
    const group = this.queue.slice(0, count);
    this.queue = this.queue.slice(count);
    return group;
  }

  /**
   * Writes the group, rolling segments as needed. Each slice is indexed while its write runs
   * in the thread pool: readers and lookups stop at the high watermark, which moves only
   * after the write (and in sync mode "batch" its O_DSYNC) is done.
   */
  private async writeGroup(group: Pending[]): Promise<void> {
    let start = 0;
    while (start < group.length) {
      const roll = this.shouldRoll(group[start]!);
      if (roll) {
        // Backpressure: the seals behind must keep up (limits.sealsPendingMax).
        while (this.seals.length >= limits.sealsPendingMax) await this.seals[0];
        this.roll(roll);
      }
      const segment = this.active;
      // A segment file made since the channel folder's last fsync (a roll, just now): the
      // folder is fsynced beside the write, through the thread pool, and the acknowledgement
      // waits for both (segmentsCreated). Settled into a value here: the write may fail first.
      const folderSync = this.folderSyncedThrough < this.segmentsCreated ? this.syncFolder().then(() => null, (err: Error) => err) : null;
      let end = start;
      let bytes = 0;
      let records = 0;
      while (end < group.length && (end === start || !this.wouldOverflow(segment, bytes, records, group[end]!))) {
        bytes += group[end]!.batch.length;
        records += group[end]!.header.recordCount;
        end++;
      }
      const slice = group.slice(start, end);
      // The batches, the end mark after them (FORMAT.md, "The end mark": a whole commit never
      // ends in zeros, and the mark says where the commit began; the next commit writes over
      // it), and perhaps zeros ahead.
      const buffers = slice.map((p) => p.batch);
      buffers.push(encodeEndMark(segment.size));
      const zeros = segment.zerosAhead(segment.size + bytes + endMarkBytes, this.options.segmentBytes);
      let writing = pool.writev(segment.fd, zeros.length > 0 ? [...buffers, zeros] : buffers, segment.size);
      if (zeros.length > 0) {
        // The zeros must never cost an append that fits: on a full disk (or a file size
        // limit) the same bytes are written again without them, and this segment writes no
        // more zeros ahead (zeroAheadFailed).
        writing = writing.catch((err: NodeJS.ErrnoException) => {
          if (!outOfSpace(err)) throw err;
          segment.zeroAheadFailed();
          return pool.writev(segment.fd, buffers, segment.size);
        });
      }
      let at = segment.size;
      try {
        for (const p of slice) {
          segment.indexBatch(at, p.header, p.batch, p.keys);
          at += p.batch.length;
        }
      } catch (err) {
        // Not before the write lets go of the batches: their buffers are reused once the appends settle.
        await writing.catch(() => undefined);
        throw err;
      }
      await writing;
      const folderFailure = folderSync && (await folderSync);
      if (folderFailure) throw folderFailure;
      segment.wrote(at + endMarkBytes + zeros.length);
      segment.size = at;
      segment.markBytes = endMarkBytes;
      start = end;
    }
  }

  /**
   * Whether `next` would take the segment past its size or its key index past its entries,
   * after `pendingBytes` / `pendingRecords` of the slice before it (0 for a slice's first
   * batch: shouldRoll). (The entries were checked only at a slice's first batch: one group
   * commit of many small records could take a key index several times past its cap.)
   */
  private wouldOverflow(segment: Segment, pendingBytes: number, pendingRecords: number, next: Pending): boolean {
    if (segment.size + pendingBytes + next.batch.length > this.options.segmentBytes) return true;
    return segment.keyEntryCount + (pendingRecords + next.header.recordCount) * 3 > limits.keyIndexEntryCountMax;
  }

  /** Whether the active segment rolls before `next`: 'full' (bytes or key index entries), 'age', or null. */
  private shouldRoll(next: Pending): 'full' | 'age' | null {
    const segment = this.active;
    if (segment.size === 0) return null;
    if (this.wouldOverflow(segment, 0, 0, next)) return 'full';
    // Capped for topics made before segmentMs was bounded: key index times are u32 ms within a segment.
    return next.brokerTimestamp - segment.firstTimestamp >= Math.min(this.options.segmentMs, limits.segmentMsMax) ? 'age' : null;
  }

  /**
   * Starts the next segment at once and seals the old one in the background
   * (Segment.sealInBackground); once sealed, a checkpoint records it. Seals run one after
   * another in roll order; a failed seal or checkpoint write fails the channel (sticky), as a
   * failed write does — never the process.
   */
  private roll(why: 'full' | 'age'): void {
    const old = this.active;
    // A full segment's successor will most likely fill too: its key index starts at the size
    // the old one grew to (Segment.keySlotCount). One that rolled by age starts small.
    // (Clamped into the limits: a reopened active segment's .kix may hold any power of two.)
    const slots = Math.min(Math.max(old.keySlotCount, limits.keyIndexSlotCountMin), limits.keyIndexSlotCount);
    this.segments.push(Segment.create(this.dir, old.nextOffset, this.dsync, why === 'full' ? slots : undefined));
    this.segmentsCreated++; // its folder entry is made durable before the first acknowledgement in it (writeGroup)
    this.committedSize = 0;
    const sealed: Promise<void> = (this.sealing ?? Promise.resolve())
      .then(async () => {
        await old.sealInBackground();
        // A failed channel writes no checkpoint here: whatever failed (a write, the sync
        // timer's fdatasync of this very segment) may have lost bytes the checkpoint would
        // vouch for. The seal itself already refuses when its own descriptor's sync failed
        // (Segment.syncData, one at a time per descriptor); this holds for the rest.
        if (this.failure) throw this.failure;
        // Through the thread pool: written with synchronous calls it held the event loop
        // 0.6-0.95 ms a roll (an fdatasync, a rename, a folder fsync), every client waiting.
        // Skipped when another seal is queued behind this one: its checkpoint lists this
        // segment too (a checkpoint per seal made a backlog of small segments cost more as it
        // grew). Until then a crash leaves this segment unlisted, which open scans.
        if (this.sealing === sealed) await this.saveCheckpointAsync(false);
        else this.checkpointOwed = true; // a retention turn queued behind writes it then
      })
      .catch((err: Error) => this.fail(err, []))
      .finally(() => {
        this.seals.splice(this.seals.indexOf(sealed), 1); // the oldest: seals end in roll order
        if (this.sealing === sealed) this.sealing = null;
      });
    this.sealing = sealed;
    this.seals.push(sealed);
  }

  /** fsync of the channel folder through the thread pool; then the segment files made before it began are durable entries. */
  private async syncFolder(): Promise<void> {
    const created = this.segmentsCreated;
    await syncDirAsync(this.dir);
    this.folderSynced(created);
  }

  /** Turns the channel failed (sticky), said once (onFault), keeping the first cause; rejects what waits. */
  private fail(err: Error, group: Pending[]): void {
    if (!this.failure) {
      const code = (err as NodeJS.ErrnoException).code;
      const cause = tooManyOpenFiles(code) ?? err.message; // a roll opens a file: EMFILE says how to fix it
      this.failure = new WaymarkError('STORAGE_FAILED', `channel ${this.dir}: ${cause}; it refuses appends until reopened`, { cause: code });
      // A channel whose files are being deleted (its topic is) fails on them as they go: no news.
      if (!this.deleting) this.options.onFault?.('failed', Object.assign(new Error(cause), { code }));
    }
    const waiting = group.concat(this.queue);
    this.queue = [];
    // Nothing queued will be written now, nor anything later: no broker time is pending.
    this.uncommittedFirstTimestamp = null;
    for (const p of waiting) p.reject(this.failure);
  }

  private syncIfDirty(): void {
    // One at a time: a tick while the last sync runs leaves `dirty` for the next tick.
    if (!this.dirty || this.syncing || this.failure || this.closed) return;
    this.dirty = false;
    this.syncing = this.active.syncData().then(
      () => void (this.syncing = null),
      (err: Error) => {
        this.syncing = null;
        this.fail(err, []);
      },
    );
  }

  /** Calls `watcher` each time the high watermark advances; returns the way to stop. */
  watch(watcher: () => void): () => void {
    this.watchers.add(watcher);
    return () => {
      this.watchers.delete(watcher);
      if (this.watchers.size === 0) this.tail.release();
    };
  }

  /**
   * The broker time up to which this channel is complete: every message with a broker
   * time ≤ it is already readable, and no later append can get such a time (broker times
   * are assigned in order and never decrease). Time-tick packs close at the minimum of
   * this over their channels.
   */
  stableTimestamp(now: number = this.options.clock.now()): number {
    if (this.uncommittedFirstTimestamp !== null) return this.uncommittedFirstTimestamp - 1;
    return Math.max(now, this.lastBrokerTimestamp) - 1;
  }

  get failed(): WaymarkError | null {
    return this.failure;
  }

  // ---------------------------------------------------------------- reads

  private segmentFor(offset: number): number {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.segments[mid]!.baseOffset <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private checkOffset(offset: number): void {
    if (!Number.isSafeInteger(offset) || offset < this.logStartOffset || offset > this.highWatermark) {
      throw new WaymarkError('OFFSET_OUT_OF_RANGE', `offset ${offset} is outside [${this.logStartOffset}, ${this.highWatermark}]`, {
        logStartOffset: this.logStartOffset,
        highWatermark: this.highWatermark,
      });
    }
  }

  /**
   * Reads whole raw batches from `offset`, at most `maxBytes` after the first and, with `maxMessages`, no batch
   * after the first holding a record at or past offset + maxMessages (always at least one
   * whole batch). One read per call in the common case: from the offset index's position,
   * skipping the batches before `offset` inside the chunk, up to a batch start the index
   * knows within both limits (a consumer with credit for 2,500 messages does not read a
   * megabyte to be handed 2,000). With `into`, the chunk is read into that buffer (the caller
   * reuses it; the result is valid until its next use).
   */
  async readBatches(offset: number, maxBytes: number, into?: Buffer, maxMessages = Number.MAX_SAFE_INTEGER): Promise<BatchRead> {
    this.checkOffset(offset);
    maxBytes = Math.max(batchHeaderBytes, Math.min(maxBytes, limits.readBytesMax));
    const endOffset = Math.min(offset + maxMessages, Number.MAX_SAFE_INTEGER);
    const cached = this.tail.read(offset, maxBytes, into, endOffset);
    if (cached) return cached;
    for (let index = this.segmentFor(offset); index < this.segments.length && offset < this.highWatermark; index++) {
      const segment = this.segments[index]!;
      const end = segment === this.active ? this.committedSize : segment.size;
      // Offsets are dense within a segment: each batch must start where the one before it
      // ended. baseOffset sits outside the checksum, so a flipped bit there would otherwise
      // make a reader jump ahead (and a consumer skip, and commit, what it never saw).
      let { position, offset: expected } = segment.entryFor(offset);
      while (position < end) {
        // End the read on a batch start the offset index knows, so it returns whole batches
        // (no partial batch read twice, no second read for a batch larger than maxBytes).
        const boundary = segment.readBoundary(position, position + maxBytes, endOffset);
        const length = boundary > position && boundary <= end ? boundary - position : maxBytes;
        const chunk = await segment.read(position, length, end, into);
        let at = 0;
        let first = -1;
        let count = 0;
        let nextOffset = offset;
        while (at + batchHeaderBytes <= chunk.length) {
          const h = probeFields(chunk.subarray(at));
          if (h.batchLength < batchHeaderBytes) throw corruptAt(segment, position + at, `batch length ${h.batchLength}`);
          // Every batch holds a record: a count of 0 (a flipped bit; the field is checksummed,
          // but a skipped batch's checksum is not checked) would take no offsets, and a read
          // at its offset returned nothing for ever while the high watermark stood past it.
          if (h.recordCount < 1) {
            if (count > 0) break; // the sound batches before it go out; the next read starts at it
            throw corruptAt(segment, position + at, `batch says it holds ${h.recordCount} records`);
          }
          // A damaged offset field in a batch before the asked offset costs nothing: it is
          // skipped by where it stands. One that would be handed out fails the read (after the
          // sound batches before it).
          if (h.baseOffset !== expected && !(first < 0 && expected + h.recordCount <= offset)) {
            if (count > 0) break; // the next read starts at it
            throw corruptAt(segment, position + at, `batch has offset ${h.baseOffset} where ${expected} was expected`);
          }
          if (at + h.batchLength > chunk.length) break;
          const batchEnd = expected + h.recordCount;
          if (count > 0 && batchEnd > endOffset) break;
          // Past maxBytes after the first: the chunk can run to the next batch start the sparse
          // offset index knows, ~4 KiB on, and every whole batch in it was returned (helper-35).
          if (count > 0 && at + h.batchLength - first > maxBytes) break;
          expected = batchEnd;
          if (first < 0 && batchEnd <= offset) {
            at += h.batchLength; // before the asked offset
            continue;
          }
          if (first < 0) first = at;
          at += h.batchLength;
          count++;
          nextOffset = batchEnd;
          if (nextOffset >= this.highWatermark) break;
        }
        if (count > 0) return { bytes: chunk.subarray(first, at), batchCount: count, nextOffset };
        if (at + batchHeaderBytes > chunk.length) {
          // Only skipped batches (or a header cut by the chunk): read on from there.
          if (at === 0) throw corruptAt(segment, position, `${chunk.length} bytes before the end, shorter than a batch header`);
          position += at;
          continue;
        }
        // The next batch is larger than the chunk: keep what was read of it and read just
        // its missing tail (in the caller's buffer when the batch fits there).
        const h = probeFields(chunk.subarray(at));
        const whole = into && into.length >= h.batchLength ? into.subarray(0, h.batchLength) : Buffer.allocUnsafe(h.batchLength);
        // The part already read moves to the front (copy handles overlap); when the batch starts
        // the chunk and the chunk is the caller's buffer, it is already in place.
        if (whole.buffer !== chunk.buffer || whole.byteOffset !== chunk.byteOffset + at) chunk.copy(whole, 0, at, chunk.length);
        const tail = await segment.read(position + chunk.length, h.batchLength - (chunk.length - at), end, whole.subarray(chunk.length - at));
        if (tail.length !== h.batchLength - (chunk.length - at)) throw corruptAt(segment, position + at, 'batch runs past the end of the log');
        const batchEnd = expected + h.recordCount;
        expected = batchEnd;
        if (batchEnd <= offset) {
          position += at + h.batchLength;
          continue;
        }
        return { bytes: whole, batchCount: 1, nextOffset: batchEnd };
      }
    }
    return { bytes: Buffer.alloc(0), batchCount: 0, nextOffset: offset };
  }

  /** Reads and decodes messages from `offset`, verifying every batch's checksum. */
  async read(offset: number, maxMessages: number, maxBytes: number): Promise<{ records: StoredRecord[]; brokerTimestamps: number[]; nextOffset: number }> {
    this.checkOffset(offset);
    maxMessages = Math.max(1, Math.min(maxMessages, limits.readMessagesMax));
    const records: StoredRecord[] = [];
    const brokerTimestamps: number[] = [];
    let next = offset;
    while (records.length < maxMessages && next < this.highWatermark) {
      let chunk: BatchRead;
      try {
        chunk = await this.readBatches(next, maxBytes);
      } catch (err) {
        // Damage after sound records: those go out; the read that starts at it fails.
        if (records.length > 0 && err instanceof WaymarkError && err.code === 'CORRUPT_FILE') break;
        throw err;
      }
      if (chunk.batchCount === 0) break;
      let pos = 0;
      while (pos < chunk.bytes.length && records.length < maxMessages) {
        const probe = probeHeader(chunk.bytes, pos);
        if (probe.kind !== 'ok' || !checksumHolds(chunk.bytes, pos, probe.header)) {
          // The good records before it go out; the read that starts at the bad batch fails.
          if (records.length > 0) return { records, brokerTimestamps, nextOffset: records[records.length - 1]!.offset + 1 };
          throw new WaymarkError('CORRUPT_FILE', `batch at offset ${probeFields(chunk.bytes.subarray(pos)).baseOffset} in ${this.dir} fails its checksum: run waymark verify`);
        }
        for (const record of decodeRecords(chunk.bytes, pos, probe.header, lz4Codec)) {
          if (record.offset < next || records.length >= maxMessages) continue;
          records.push(record);
          brokerTimestamps.push(probe.header.brokerTimestamp);
        }
        pos += probe.header.batchLength;
      }
      next = records.length > 0 ? records[records.length - 1]!.offset + 1 : chunk.nextOffset;
      if (maxBytes <= chunk.bytes.length) break;
      maxBytes -= chunk.bytes.length;
    }
    return { records, brokerTimestamps, nextOffset: next };
  }

  /** The first offset whose broker time is ≥ `timestamp` (highWatermark when none). */
  async offsetForTime(timestamp: number): Promise<number> {
    for (;;) {
      const start = this.logStartOffset;
      try {
        return await this.offsetForTimeOnce(timestamp);
      } catch (err) {
        // Retention deleted the segment being searched: search again from the new log start.
        if (!(err instanceof WaymarkError && err.code === 'OFFSET_OUT_OF_RANGE') || this.logStartOffset === start) throw err;
      }
    }
  }

  private async offsetForTimeOnce(timestamp: number): Promise<number> {
    for (const segment of this.segments) {
      if (segment.maxTimestamp < timestamp || segment.recordCount === 0) continue;
      let offset = Math.max(segment.offsetForTime(timestamp), this.logStartOffset);
      while (offset < segment.nextOffset && offset < this.highWatermark) {
        const { records, brokerTimestamps, nextOffset } = await this.read(offset, 1000, 1024 * 1024);
        for (let i = 0; i < records.length; i++) if (brokerTimestamps[i]! >= timestamp) return records[i]!.offset;
        if (nextOffset === offset) break;
        offset = nextOffset;
      }
    }
    return this.highWatermark;
  }

  /**
   * Records whose index entries match `hash`, newest segment first, confirmed by `matches`
   * against the record itself (hash collisions are expected and dropped here).
   */
  /**
   * Records whose key hash is `hash` and that `matches`, newest first, up to `limit` records
   * and — past the first — `maxBytes` of bodies: the reads are synchronous, and a hundred
   * 8 MiB messages under one key held the broker for 24 s. A candidate in a damaged batch
   * (CORRUPT_FILE) is passed over and its error pushed to `damaged`.
   */
  async lookup(
    hash: number,
    range: TimeRange,
    limit: number,
    matches: (record: StoredRecord) => boolean,
    maxBytes = Infinity,
    damaged: WaymarkError[] = [],
  ): Promise<Array<{ record: StoredRecord; brokerTimestamp: number }>> {
    const found: Array<{ record: StoredRecord; brokerTimestamp: number }> = [];
    let bytes = 0;
    for (let i = this.segments.length - 1; i >= 0 && found.length < limit && bytes < maxBytes; i--) {
      const segment = this.segments[i]!;
      if (segment.recordCount === 0) continue;
      if (range.timeTo !== undefined && segment.firstTimestamp > range.timeTo) continue;
      if (range.timeFrom !== undefined && segment.maxTimestamp < range.timeFrom) continue;
      const hits: KeyHit[] = segment.keyLookup(hash, range, limits.lookupResultCountMax + 1); // + 1: Store.lookupAll asks one past its limit
      for (const hit of hits) {
        if (hit.offset >= this.highWatermark || found.length >= limit || bytes >= maxBytes) continue;
        let at: { record: StoredRecord; brokerTimestamp: number } | null;
        try {
          at = this.recordAt(segment, hit.position, hit.offset);
        } catch (err) {
          // A damaged batch costs the lookup that candidate, not the whole answer: passed
          // over and handed to the caller (`damaged`), which says it and decides.
          if (!(err instanceof WaymarkError && err.code === 'CORRUPT_FILE')) throw err;
          damaged.push(err);
          continue;
        }
        if (at && matches(at.record)) {
          found.push(at);
          bytes += at.record.body.length;
        }
      }
    }
    return found;
  }

  /**
   * The one record at `offset` in the batch at `position`: one read, checksum verified, only
   * that record decoded. The read goes into one reused buffer and the record's fields are
   * copied out of it: a fresh 128 KiB buffer per lookup made the lookup loop allocate
   * ~1 GB/s of external memory, and the garbage collections that forced were its p99.
   */
  private recordAt(segment: Segment, position: number, offset: number): { record: StoredRecord; brokerTimestamp: number } | null {
    const end = segment === this.active ? this.committedSize : segment.size;
    let bytes = segment.readNowInto((this.lookupBuffer ??= Buffer.allocUnsafe(lookupReadBytes)), position, end);
    if (bytes.length < batchHeaderBytes) throw corruptAt(segment, position, 'index points past the log');
    const length = probeFields(bytes).batchLength;
    if (length > bytes.length) bytes = segment.readNow(position, length, end);
    const probe = probeHeader(bytes, 0);
    if (probe.kind !== 'ok') throw corruptAt(segment, position, probe.kind === 'corrupt' ? probe.reason : 'short batch');
    if (!checksumHolds(bytes, 0, probe.header)) throw corruptAt(segment, position, 'checksum mismatch');
    const index = offset - probe.header.baseOffset;
    if (index < 0 || index >= probe.header.recordCount) return null;
    return { record: ownedRecord(decodeRecordAt(bytes, 0, probe.header, lz4Codec, index)), brokerTimestamp: probe.header.brokerTimestamp };
  }

  // ---------------------------------------------------------------- retention and close

  /**
   * Deletes whole sealed segments past the age or size bound, and the active segment too when
   * every record in it is past the age bound (removeExpiredActive). Resolves with how many
   * once the checkpoint that no longer lists them is written (removeThenCheckpoint, holding a
   * slot of `slots` when given). Rejects as removeOldestWhile throws, or when a checkpoint
   * cannot be written (it stays owed).
   */
  async applyRetention(now: number, slots?: IoSlots): Promise<number> {
    if (this.closed) return 0; // close() writes the files from then on (see deleteSegmentsBefore)
    const { retentionMs, retentionBytes } = this.options;
    const expired = (segment: Segment): boolean => retentionMs > 0 && segment.maxTimestamp >= 0 && segment.maxTimestamp < now - retentionMs;
    // Where retention cuts the log: the oldest sealed segments while past either bound, then
    // the active one when every older one goes (removeExpiredActive runs after them, when it
    // is the last one left) and it is expired.
    const cut = (): number => {
      let total = this.totalBytes;
      const { below, everyOlder } = this.cutOldest((segment) => {
        const tooBig = retentionBytes > 0 && total > retentionBytes;
        total -= segment.size;
        return expired(segment) || tooBig;
      });
      return everyOlder && this.activeRemovable(expired, true) ? this.active.nextOffset : below;
    };
    return this.removeThenCheckpoint(
      cut,
      (below) => this.removeOldestWhile((oldest) => oldest.nextOffset <= below) + this.removeExpiredActive((active) => expired(active) && active.nextOffset <= below),
      slots,
    );
  }

  /**
   * One removal at a time, in three durable steps: a checkpoint saying `removingBefore` (the
   * offset `cut` gives: segments wholly below it may go), then `remove(below)` (synchronous:
   * it unlinks logs, never past `below`, and says how many segments went) and the index files
   * they left, then the checkpoint that no longer lists them, with `removingBefore` 0. A crash
   * between leaves listed segments missing under a written intent: open and verify tell that
   * from data lost otherwise (a log removed by hand), which they report. The checkpoint is
   * written after `remove` even when it threw part-way; rejects with the first failure, and
   * removes nothing when the intent cannot be written. With nothing to cut, writes only a
   * checkpoint owed by an earlier failure.
   */
  private removeThenCheckpoint(cut: () => number, remove: (below: number) => number, slots?: IoSlots): Promise<number> {
    const run = async (): Promise<number> => {
      let removed = 0;
      let failure: unknown = null;
      const below = this.closed ? 0 : cut();
      if (below > this.logStartOffset) {
        try {
          await this.checkpointInTurn(slots, below);
          // Closed meanwhile: close writes the checkpoint; nothing is removed.
          if (!this.closed) removed = remove(below);
        } catch (err) {
          failure = err;
        }
        this.removingBefore = 0;
        this.checkpointOwed = true; // the intent is lifted whether or not anything went
      }
      try {
        await this.removeLeftovers();
      } catch (err) {
        failure ??= err;
      }
      if (this.checkpointOwed) {
        try {
          await this.checkpointInTurn(slots);
        } catch (err) {
          failure ??= err;
        }
      }
      if (failure) throw failure;
      return removed;
    };
    const done = this.removals.then(run, run);
    this.removals = done.catch(noop);
    return done;
  }

  /**
   * Writes the owed checkpoint through the thread pool, after the seals and checkpoint writes
   * already under way (`sealing`): one writer of the temp file at a time, and close() waits
   * for it as for a seal. Written synchronously (as retention did), a checkpoint after a
   * removal held the event loop 3–7 ms: its fdatasync waited on the journal commit that frees
   * the removed segment. Nothing is written once the channel is closed (close writes it).
   * Resolves once its turn is over (`sealing` no longer names it). Rejects when the write
   * fails; the checkpoint stays owed (the next pass, roll or close writes it) and the channel
   * goes on. `intent`: a removal's, written even when nothing is owed, with `removingBefore`
   * set as the write starts (not before: a seal's checkpoint ahead of it must not carry an
   * intent that may never be written) and back to 0 when it fails.
   *
   * The slot of `slots` (a retention pass's, shared by every channel of the store) is taken
   * before the turn joins the chain: a turn waiting there for a slot held up every seal queued
   * behind it, and with them (sealsPendingMax) the channel's appends, for a whole pass.
   */
  private async checkpointInTurn(slots?: IoSlots, intent = 0): Promise<void> {
    const release = slots ? await slots.acquire() : null;
    try {
      const write = async (): Promise<void> => {
        if (!(this.checkpointOwed || intent > 0) || this.closed) return;
        if (intent > 0) this.removingBefore = intent;
        try {
          if (slots) await slots.withDescriptors(() => this.saveCheckpointAsync(false));
          else await this.saveCheckpointAsync(false);
        } catch (err) {
          if (intent > 0) this.removingBefore = 0;
          throw err;
        }
      };
      const written = (this.sealing ?? Promise.resolve()).then(write);
      const turn: Promise<void> = written.then(noop, noop).finally(() => {
        if (this.sealing === turn) this.sealing = null;
      });
      this.sealing = turn;
      try {
        await written;
      } finally {
        await turn;
      }
    } finally {
      release?.();
    }
  }

  /**
   * An active segment whose every record is past retentionMs is rolled and deleted, as Kafka
   * does: else a channel that never fills a segment (low volume, idle) would keep its data
   * for ever. Only when it is the last segment left and nothing is in flight (appends, a
   * sync, a seal), so the next segment starts at the high watermark and offsets go on from
   * there; readers at the old positions move to the log start as for any deleted segment.
   * A failed channel is left alone. Returns 1 when it went, else 0.
   */
  private removeExpiredActive(expired: (segment: Segment) => boolean): number {
    if (!this.activeRemovable(expired)) return 0;
    const old = this.active;
    const next = Segment.create(this.dir, old.nextOffset, this.dsync); // throws: nothing changed
    const created = ++this.segmentsCreated;
    let left: string[];
    try {
      // The next segment is on disk before the old one goes: a crash between must not leave a
      // channel without segments (its offsets would start again at 0).
      syncDir(this.dir);
      this.folderSynced(created);
      left = old.remove(); // throws with the old segment whole when its log cannot be unlinked
    } catch (err) {
      next.close();
      try {
        unlinkIfPresent(next.path('log'));
      } catch (cleanup) {
        // The empty log at the high watermark stays: an append to the old segment would now
        // run past it, and recovery would take it as the next segment in the middle of the
        // appended offsets (a reader would skip them). No append may follow: the channel
        // fails (sticky), and recovery at the next open takes the empty log as the active one.
        this.fail(cleanup as Error, []);
      }
      throw err;
    }
    this.segments[0] = next;
    this.committedSize = 0;
    this.leftovers.push(...left);
    this.checkpointOwed = true; // the caller writes it (removeThenCheckpoint)
    return 1;
  }

  /**
   * Where a removal of the oldest segments would cut the log: past each sealed segment, oldest
   * first, while `goes` says so (called in that order), never past the high watermark (as
   * Kafka: a segment rolled in the middle of a group commit holds batches not acknowledged
   * yet, and the log start must not pass them). `everyOlder`: every segment before the active
   * one goes.
   */
  private cutOldest(goes: (segment: Segment) => boolean): { below: number; everyOlder: boolean } {
    let below = this.logStartOffset;
    for (const segment of this.segments) {
      if (segment === this.active) return { below, everyOlder: true };
      if (!segment.sealed || segment.nextOffset > this.highWatermark || !goes(segment)) break;
      below = segment.nextOffset;
    }
    return { below, everyOlder: false };
  }

  /**
   * removeExpiredActive's condition: the active segment is the last left (or every older one
   * is about to go: `olderGoing`), expired, and nothing is in flight.
   */
  private activeRemovable(expired: (segment: Segment) => boolean, olderGoing = false): boolean {
    const old = this.active;
    if ((this.segments.length > 1 && !olderGoing) || old.size === 0 || !expired(old)) return false;
    // old.syncing: an fdatasync not the sync timer's (deleteSegmentsBefore's) is under way.
    return !(this.queue.length > 0 || this.flushing || this.syncing || old.syncing || this.sealing || this.failure || this.closed);
  }

  /**
   * Deletes the oldest segments, one after another, while `remove` says so; never the active
   * one nor one still being sealed in the background (roll). Leaves the checkpoint owed when
   * any went: the caller writes it (removeThenCheckpoint).
   *
   * A failure (EIO, EROFS, a full disk) leaves the channel consistent, and is thrown once the
   * rest is done; the next call tries again: a log that cannot be unlinked keeps its segment
   * (whole, open, readable), and so stops the pass there; index files left by a removed
   * segment are owed. A stale checkpoint is harmless meanwhile: recovery trusts only the
   * segments whose logs it finds.
   */
  private removeOldestWhile(remove: (oldest: Segment) => boolean): number {
    let removed = 0;
    let failure: unknown = null;
    try {
      while (this.segments.length > 1) {
        const oldest = this.segments[0]!;
        if (!oldest.sealed || !remove(oldest)) break;
        this.leftovers.push(...oldest.remove()); // throws with nothing changed when the log stays
        this.segments.shift();
        this.checkpointOwed = true;
        removed++;
      }
    } catch (err) {
      failure = err;
    }
    if (failure) throw failure;
    return removed;
  }

  /**
   * Unlinks the index files of removed segments through the thread pool: on the event loop a
   * retention pass spent 1–9 ms on them (their blocks freed, the journal waited on). One that
   * cannot be unlinked stays listed for the next pass; rejects with the first failure.
   */
  private async removeLeftovers(): Promise<void> {
    const files = this.leftovers.splice(0);
    let failure: unknown = null;
    for (const [i, file] of files.entries()) {
      // Closed: its topic may be deleted, and one of the same name made in the same folder; an
      // unlink by path then removed the new topic's file of that name (helper-58). What is
      // left is an orphan the next open removes.
      if (this.closed) {
        this.leftovers.push(...files.slice(i));
        break;
      }
      try {
        await pool.unlinkIfPresent(file);
      } catch (err) {
        this.leftovers.push(file);
        failure ??= err;
      }
    }
    if (failure) throw failure;
  }

  /**
   * Deletes whole sealed segments that hold only offsets before `offset` (the active segment
   * and a segment still being sealed are kept). Returns how many. The caller vouches that
   * nothing before `offset` is needed any more (the `__groups` compaction rewrote it).
   */
  async deleteSegmentsBefore(offset: number): Promise<number> {
    // A failed channel removes nothing: the rewrite at `offset` may be among the bytes whose
    // write-back failed (sync mode "interval": acknowledged after the write, lost when the
    // timer's fdatasync got EIO), and what it replaces is then the only copy.
    if (this.failure) throw this.failure;
    // A segment rolled before the call is deleted too, once its seal is done (not left for the
    // next compaction, which may be long in coming). The seals started so far, not every one:
    // under a steady load there is always another (a compaction waiting for them all stalled
    // while __groups grew).
    const sealing = this.sealing;
    if (sealing) await sealing;
    // What the caller rewrote at `offset` and after must be durable before what it replaces
    // goes: in sync modes "interval" and "none" its writes may still be only in the page cache.
    // Through Segment.syncData: once an fdatasync of this descriptor failed (the sync timer's),
    // Linux returns 0 to the next one, which proves nothing; syncData keeps the failure.
    if (!this.dsync) {
      if (this.closed) throw new WaymarkError('STORE_CLOSED');
      try {
        await this.active.syncData();
      } catch (err) {
        // The bytes acknowledged since the last sync may be lost: the channel fails (sticky),
        // as when the sync timer's fdatasync fails, and the caller hears STORAGE_FAILED.
        this.fail(err as Error, []);
        throw this.failure!;
      }
    }
    // Checked again after the wait, and in every sync mode: once `closed` is set, close()
    // writes the checkpoint through the thread pool, and a removal's own checkpoint write in
    // the middle of it (same temp file) failed the close and left a checkpoint listing
    // segments that were gone.
    if (this.closed) throw new WaymarkError('STORE_CLOSED');
    // And the channel may have failed meanwhile (a seal, the sync timer, a group commit): then
    // nothing here is known durable, and nothing goes — checked where the cut is taken and
    // again where the removal runs, after the removals queued ahead of it.
    const refuseIfFailed = (): void => {
      if (this.failure) throw this.failure;
    };
    const cut = (): number => {
      refuseIfFailed();
      return this.cutOldest((segment) => segment.nextOffset <= offset).below;
    };
    return this.removeThenCheckpoint(cut, (below) => {
      refuseIfFailed();
      return this.removeOldestWhile((oldest) => oldest.nextOffset <= below);
    });
  }

  /**
   * Resolves once the appends queued so far are written and every rolled segment is sealed
   * and in the checkpoint: the background work that retention and compaction wait on (they
   * delete only sealed segments). Never rejects: a failure there fails the channel, which the
   * next append says.
   */
  async settled(): Promise<void> {
    // Snapshots, not loops: under a steady load there is always a next group or seal.
    const written = this.lastQueued; // groups go out in queue order: once it is done, so is every append before it
    if (written) await written.then(noop, noop);
    if (this.syncing) await this.syncing;
    const sealing = this.sealing; // seals run one after another: the newest ends after every earlier one
    if (sealing) await sealing;
    // A seal that found another queued behind it left the checkpoint to that one, which may
    // have come after the snapshot: written now, after the seals queued so far (at most
    // sealsPendingMax), so that every segment sealed is in the checkpoint. Never rejects.
    if (this.checkpointOwed) await this.checkpointInTurn().catch(noop);
  }

  /**
   * Waits for queued appends, seals nothing, writes the active indexes and a clean checkpoint
   * — unless the channel's files are about to be deleted (`deleting`: its topic is), when it
   * writes nothing: sealing the indexes of files about to go, on a full disk, failed the
   * topic's delete halfway. That file work runs in the thread pool, once a slot of `slots`
   * is held (Store.close closes every channel at once, sharing one).
   */
  async close(options: { deleting?: boolean; slots?: IoSlots } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true; // later appends are refused; queued ones still go out
    this.deleting = options.deleting === true;
    if (this.syncTimer) clearInterval(this.syncTimer);
    // Closed: no append is queued from here on, so these end. A removal under way (retention,
    // compaction) ends too, writing and unlinking nothing more once it sees `closed`; waited
    // for, so that nothing of it runs once the caller (deleteTopic) has let the folder's name go.
    await this.removals;
    while (this.flushing) await this.flushing;
    if (this.syncing) await this.syncing;
    while (this.sealing) await this.sealing;
    let failure: unknown = null;
    // Nothing appended since an open that found a clean close's files as it left them: they
    // say what a close would write (Segment.untouchedSinceCleanClose, cleanCheckpointCurrent).
    const asLeft = this.cleanCheckpointCurrent && this.active.untouchedSinceCleanClose;
    if (!this.failure && !this.deleting && !asLeft) {
      // Closed, with nothing in flight: nothing else writes the files from here on.
      const slots = options.slots ?? new IoSlots(1);
      const release = await slots.acquire();
      try {
        const active = this.active;
        if (active.size > 0) await slots.withDescriptors(() => active.sealInBackground({ syncIndexFiles: true }));
        else if (this.segments.length > 1) {
          this.segments.pop();
          // Its index files are small; one that cannot go now is an orphan the next open removes.
          for (const file of active.remove()) await pool.unlinkIfPresent(file).catch(noop);
        }
        await slots.withDescriptors(() => this.saveCheckpointAsync(true));
      } catch (err) {
        failure = err; // thrown once the files are closed: the next open scans what is not vouched for
      } finally {
        release();
      }
    }
    // An fdatasync still under way (a compaction's, when nothing above waited on the chain:
    // a close that writes nothing) ends before its descriptor is closed: closed under it, it
    // failed with EBADF, or synced another file that took the descriptor's number (helper-55).
    await Promise.all(this.segments.map((s) => s.syncsDone()));
    for (const s of this.segments) s.close();
    // Watchers learn that the channel is gone (a deleted topic ends its subscriptions).
    for (const watcher of [...this.watchers]) watcher();
    this.watchers.clear();
    if (failure) throw failure;
  }

  /** Closes the files of a channel nothing was appended to yet (one that failed to open, or whose topic did), at once. */
  closeNow(): void {
    this.closed = true;
    if (this.syncTimer) clearInterval(this.syncTimer);
    for (const s of this.segments) s.close();
  }
}

/**
 * The record with its own copies of the bytes it viewed (in a buffer about to be reused).
 * Buffer.from copies (a Buffer's own slice() would not).
 */
function ownedRecord(r: StoredRecord): StoredRecord {
  return {
    ...r,
    msgId: Buffer.from(r.msgId),
    key: r.key ? Buffer.from(r.key) : null,
    headers: r.headers.map((h) => ({ name: h.name, value: Buffer.from(h.value) })),
    body: Buffer.from(r.body),
  };
}

/** Header fields read without checks, for bytes already validated when written. */
function probeFields(head: Uint8Array): { baseOffset: number; batchLength: number; recordCount: number } {
  return { baseOffset: readInt64(head, BatchOffset.baseOffset), batchLength: readUint32(head, BatchOffset.batchLength), recordCount: readUint32(head, BatchOffset.recordCount) };
}

function corruptAt(segment: Segment, position: number, reason: string): WaymarkError {
  return new WaymarkError('CORRUPT_FILE', `${segment.path('log')} at position ${position}: ${reason}; run waymark verify`, { file: segment.path('log'), position });
}

/**
 * Index files whose log is gone: a removal (retention, compaction) unlinks the log first, and
 * a crash before its index files left them. Nothing reads them; left alone they would stay for
 * ever. Best effort: one that cannot be removed now is tried at the next open.
 */
function removeOrphanIndexFiles(dir: string, names: readonly string[]): void {
  for (const name of orphanIndexNames(names)) {
    try {
      unlinkIfPresent(path.join(dir, name));
    } catch {
      // (a read-only folder: the store opens for reading, as before)
    }
  }
}

function noop(): void {}
