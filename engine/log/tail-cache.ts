/**
 * The newest acknowledged batches of a channel, kept in memory so that a consumer following
 * the tail is served without a file read. A read goes through Node's fs thread pool: a
 * thread hand-off per push, which on a busy core is most of a push's cost and the start of
 * the latency tail. Kafka leans on the page cache for the same reads; we cannot reach the
 * page cache without that hand-off, so the channel keeps the last few batches itself.
 *
 * The bytes live in one ring buffer allocated outside the JS heap, the bookkeeping in typed
 * arrays: holding a batch creates no object. (A first version kept each batch's Uint8Array;
 * at 10,000 one-message batches a second those lived long enough to be promoted, and the
 * mark-compacts that followed stalled the broker for 15–21 ms every few seconds.)
 *
 * Invariants:
 * - batches are contiguous in offset and end at the channel's high watermark: they are
 *   added only once acknowledged (after the group commit), in order, and evicted oldest
 *   first, so a read never sees a gap or an unacknowledged batch;
 * - at most `bytesMax` bytes and `entryCountMax` batches are held; a batch larger than
 *   `bytesMax` is never held (it empties the cache, as a gap does);
 * - a batch's bytes are never split: one that does not fit before the end of the ring starts
 *   again at 0, and every batch in its way (oldest first) is evicted;
 * - the bytes handed out are copies: a caller may keep or change them.
 */
import type { BatchRead } from './channel-log';

/** Batches held at most (the bookkeeping arrays' size). */
const entryCountMax = 4096;
const noInts = new Int32Array(0);
const noFloats = new Float64Array(0);

export class TailCache {
  // The ring and the bookkeeping (96 KiB) are made at the first batch and dropped by release():
  // every channel has a cache, few are watched (they were 100 KiB per channel, watched or not).
  private ring: Buffer | null = null;
  private starts = noInts;
  private lengths = noInts;
  private baseOffsets = noFloats;
  private nextOffsets = noFloats;
  /** Slot of the oldest batch; batches occupy slots head … head + count − 1 (mod entryCountMax). */
  private head = 0;
  private count = 0;
  /** Where the next batch's bytes go. */
  private writeAt = 0;
  private bytes = 0;

  constructor(private readonly bytesMax: number) {}

  /** Adds an acknowledged batch holding offsets [baseOffset, nextOffset). */
  add(batch: Uint8Array, baseOffset: number, nextOffset: number): void {
    const length = batch.length;
    if (this.count > 0 && this.nextOffsets[this.slot(this.count - 1)] !== baseOffset) this.clear(); // not contiguous: start over
    if (length > this.bytesMax || length === 0) {
      this.clear();
      return;
    }
    if (this.ring === null) {
      this.ring = Buffer.allocUnsafe(this.bytesMax);
      this.starts = new Int32Array(entryCountMax);
      this.lengths = new Int32Array(entryCountMax);
      this.baseOffsets = new Float64Array(entryCountMax);
      this.nextOffsets = new Float64Array(entryCountMax);
    }
    if (this.count === entryCountMax) this.evictOldest();
    // Bytes needed from writeAt on: the batch, plus the ring's end when it must wrap to 0.
    const wraps = this.writeAt + length > this.bytesMax;
    const needed = wraps ? this.bytesMax - this.writeAt + length : length;
    while (this.count > 0 && this.freeAhead() < needed) this.evictOldest();
    const at = wraps || this.count === 0 ? 0 : this.writeAt;
    this.ring.set(batch, at);
    const slot = this.slot(this.count);
    this.starts[slot] = at;
    this.lengths[slot] = length;
    this.baseOffsets[slot] = baseOffset;
    this.nextOffsets[slot] = nextOffset;
    this.count++;
    this.bytes += length;
    this.writeAt = at + length;
  }

  /**
   * Whole batches from the one holding `offset`, at most `maxBytes` after it, none holding a record at
   * or past `endOffset` (at least one batch), as ChannelLog.readBatches returns them; null
   * when `offset` is not in the cache.
   */
  read(offset: number, maxBytes: number, into?: Buffer, endOffset = Number.MAX_SAFE_INTEGER): BatchRead | null {
    if (this.count === 0 || offset < this.baseOffsets[this.head]! || offset >= this.nextOffsets[this.slot(this.count - 1)]!) return null;
    // The first batch whose range ends past `offset` (binary search: ranges are sorted).
    let lo = 0;
    let hi = this.count - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.nextOffsets[this.slot(mid)]! > offset) hi = mid;
      else lo = mid + 1;
    }
    let total = 0;
    let last = lo;
    while (last < this.count && (last === lo || (total + this.lengths[this.slot(last)]! <= maxBytes && this.nextOffsets[this.slot(last)]! <= endOffset))) total += this.lengths[this.slot(last++)]!;
    const out = into && into.length >= total ? into.subarray(0, total) : Buffer.allocUnsafe(total);
    let at = 0;
    for (let i = lo; i < last; i++) {
      const slot = this.slot(i);
      this.ring!.copy(out, at, this.starts[slot]!, this.starts[slot]! + this.lengths[slot]!);
      at += this.lengths[slot]!;
    }
    return { bytes: out, batchCount: last - lo, nextOffset: this.nextOffsets[this.slot(last - 1)]! };
  }

  /** Forgets every batch (the ring is kept for the next ones). */
  clear(): void {
    this.head = 0;
    this.count = 0;
    this.writeAt = 0;
    this.bytes = 0;
  }

  /** Forgets every batch and gives the ring's memory back (no one watches the channel). */
  release(): void {
    this.clear();
    this.ring = null;
    this.starts = this.lengths = noInts;
    this.baseOffsets = this.nextOffsets = noFloats;
  }

  get heldBytes(): number {
    return this.bytes;
  }

  private slot(i: number): number {
    return (this.head + i) % entryCountMax;
  }

  /** Free bytes from writeAt, going forward round the ring, to the oldest batch's start. */
  private freeAhead(): number {
    const gap = this.starts[this.head]! - this.writeAt;
    return gap >= 0 ? gap : gap + this.bytesMax;
  }

  private evictOldest(): void {
    this.bytes -= this.lengths[this.head]!;
    this.head = (this.head + 1) % entryCountMax;
    this.count--;
  }
}
