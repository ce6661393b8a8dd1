/**
 * The newest acknowledged batches of a channel, kept in memory so that a consumer following
 * the tail is served without a file read. A read goes through Node's fs thread pool: a
 * thread hand-off per push, which on a busy core is most of a push's cost and the start of
 * the latency tail. Kafka leans on the page cache for the same reads; we cannot reach the
 * page cache without that hand-off, so the channel keeps the last few batches itself.
 *
 * Invariants:
 * - batches are contiguous in offset and end at the channel's high watermark: they are
 *   added only once acknowledged (after the group commit), in order, and evicted oldest
 *   first, so a read never sees a gap or an unacknowledged batch;
 * - at most `bytesMax` bytes are held (a batch larger than that is never held: it evicts
 *   everything, itself included);
 * - the bytes handed out are copies: a caller may keep or change them.
 */
import type { BatchRead } from './channel-log';

/** Dropped slots are compacted away once this many accumulate at the front. */
const compactAfter = 1024;

export class TailCache {
  private batches: Uint8Array[] = [];
  private baseOffsets: number[] = [];
  private nextOffsets: number[] = [];
  private head = 0;
  private bytes = 0;

  constructor(private readonly bytesMax: number) {}

  /** Adds an acknowledged batch holding offsets [baseOffset, nextOffset). */
  add(batch: Uint8Array, baseOffset: number, nextOffset: number): void {
    const last = this.nextOffsets.length - 1;
    if (last >= this.head && this.nextOffsets[last] !== baseOffset) this.clear(); // not contiguous: start over
    this.batches.push(batch);
    this.baseOffsets.push(baseOffset);
    this.nextOffsets.push(nextOffset);
    this.bytes += batch.length;
    while (this.bytes > this.bytesMax && this.head < this.batches.length) {
      this.bytes -= this.batches[this.head]!.length;
      this.batches[this.head] = empty;
      this.head++;
    }
    if (this.head >= compactAfter && this.head * 2 >= this.batches.length) this.compact();
  }

  /**
   * Whole batches from the one holding `offset`, about `maxBytes` (at least one batch), as
   * ChannelLog.readBatches returns them; null when `offset` is not in the cache.
   */
  read(offset: number, maxBytes: number, into?: Buffer): BatchRead | null {
    const end = this.batches.length;
    if (this.head >= end || offset < this.baseOffsets[this.head]! || offset >= this.nextOffsets[end - 1]!) return null;
    // The first batch whose range ends past `offset` (binary search: ranges are sorted).
    let lo = this.head;
    let hi = end - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.nextOffsets[mid]! > offset) hi = mid;
      else lo = mid + 1;
    }
    let total = 0;
    let last = lo;
    while (last < end && (last === lo || total + this.batches[last]!.length <= maxBytes)) total += this.batches[last++]!.length;
    const bytes = into && into.length >= total ? into.subarray(0, total) : Buffer.allocUnsafe(total);
    let at = 0;
    for (let i = lo; i < last; i++) {
      bytes.set(this.batches[i]!, at);
      at += this.batches[i]!.length;
    }
    return { bytes, batchCount: last - lo, nextOffset: this.nextOffsets[last - 1]! };
  }

  clear(): void {
    this.batches = [];
    this.baseOffsets = [];
    this.nextOffsets = [];
    this.head = 0;
    this.bytes = 0;
  }

  get heldBytes(): number {
    return this.bytes;
  }

  private compact(): void {
    this.batches = this.batches.slice(this.head);
    this.baseOffsets = this.baseOffsets.slice(this.head);
    this.nextOffsets = this.nextOffsets.slice(this.head);
    this.head = 0;
  }
}

const empty = new Uint8Array(0);
