/**
 * Buffers that store.append encodes batches into, lent and taken back, so that appending a
 * large batch does not first fault in a new one. A new 1 MiB Uint8Array has its pages mapped
 * on first write: a quarter of the time store.append spent encoding 1,000 × 1 KiB messages,
 * plus the garbage collections its external memory set off (BENCHMARKS.md, session 18).
 *
 * - `take(bytes)` returns a view of exactly `bytes` bytes, stale contents included (the
 *   encoder writes every byte); below `pooledBytesMin` it is a plain new array (small ones
 *   come cheap from the allocator and would waste a pooled buffer).
 * - `give(view)` takes a lent buffer back once nothing reads it any more: for store.append,
 *   once the append settled (the write is done, the index built, the tail cache copied what
 *   it keeps). A view the pool did not lend, or one given back twice, is ignored.
 * - Bounded: at most `idleCountMax` buffers and `idleBytesMax` bytes wait for reuse; past
 *   that a buffer given back is left to the garbage collector. Buffers lent and never given
 *   back (an encode that threw) are too.
 */
export class BatchBuffers {
  /** Idle buffers, any order. */
  private readonly idle: ArrayBuffer[] = [];
  private idleBytes = 0;
  /** Buffers lent and not yet given back (weak: one never given back is simply collected). */
  private readonly lent = new WeakSet<ArrayBuffer>();

  constructor(
    readonly pooledBytesMin = 16 * 1024,
    readonly idleCountMax = 8,
    readonly idleBytesMax = 32 * 1024 * 1024,
  ) {}

  /** A view of `bytes` bytes to encode into (bound: pass `buffers.take` as a callback). */
  readonly take = (bytes: number): Uint8Array => {
    if (bytes < this.pooledBytesMin) return new Uint8Array(bytes);
    let best = -1;
    for (let i = 0; i < this.idle.length; i++) {
      const size = this.idle[i]!.byteLength;
      if (size >= bytes && (best < 0 || size < this.idle[best]!.byteLength)) best = i;
    }
    let buffer: ArrayBuffer;
    if (best >= 0) {
      buffer = this.idle[best]!;
      this.idle[best] = this.idle[this.idle.length - 1]!;
      this.idle.pop();
      this.idleBytes -= buffer.byteLength;
    } else {
      // A little room over the size, so that the next batch of about the same size fits.
      buffer = new ArrayBuffer(roundUp(bytes + (bytes >>> 3), 64 * 1024));
    }
    this.lent.add(buffer);
    return new Uint8Array(buffer, 0, bytes);
  };

  /** Takes back a view `take` returned; anything else is ignored. */
  give(view: Uint8Array): void {
    const buffer = view.buffer as ArrayBuffer;
    if (!this.lent.delete(buffer)) return;
    const size = buffer.byteLength;
    if (size > this.idleBytesMax) return;
    while (this.idle.length >= this.idleCountMax || this.idleBytes + size > this.idleBytesMax) {
      // Make room by dropping the smallest idle buffer: large batches are the ones worth keeping for.
      let smallest = 0;
      for (let i = 1; i < this.idle.length; i++) if (this.idle[i]!.byteLength < this.idle[smallest]!.byteLength) smallest = i;
      if (this.idle.length === 0 || this.idle[smallest]!.byteLength > size) return;
      this.idleBytes -= this.idle[smallest]!.byteLength;
      this.idle[smallest] = this.idle[this.idle.length - 1]!;
      this.idle.pop();
    }
    this.idle.push(buffer);
    this.idleBytes += size;
  }

  /** Idle buffers and their bytes (for tests). */
  get idleStats(): { count: number; bytes: number } {
    return { count: this.idle.length, bytes: this.idleBytes };
  }
}

function roundUp(n: number, step: number): number {
  return Math.ceil(n / step) * step;
}
