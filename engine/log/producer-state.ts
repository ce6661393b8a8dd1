/**
 * Idempotent appends: what a channel remembers of each producer's recent batches, so a
 * batch resent after a lost reply (same producer id + sequence) is answered with its
 * original offsets instead of being appended twice.
 *
 * Invariants: per producer, the last `producerBatchCountMax` batches in append order (a
 * pipelining producer may have that many in flight on one channel and resend them all
 * after a reconnect); at most `producerStateCountMax` producers (least recently used evicted).
 * A resent sequence older than the window cannot be answered with offsets: DUPLICATE_SEQUENCE.
 *
 * An evicted producer leaves its id and last sequence behind, for `evictedProducerCountMax`
 * more evictions: a resend from it (a producer whose reply was lost while more than
 * `producerStateCountMax` others wrote to the channel — one producer per request does that
 * in seconds) was taken for a new producer's batch and stored twice (helper-34). Now it is
 * refused as DUPLICATE_SEQUENCE (stored, offsets no longer known), and a sequence past the
 * last is a new batch, as before.
 */
import type { BatchHeader } from '../format/record-batch';
import { formatLimits } from '../format/limits';
import { limits } from '../limits';
import type { ProducerEntry } from './checkpoint';

export interface ProducerBatch {
  firstSeq: number;
  count: number;
  baseOffset: number;
  /** Resolves when the batch is durable; a retry arriving before that waits on it. */
  done: Promise<unknown> | null;
  /** Its broker time, for the answer to a retry (0 when not known: an entry of a checkpoint). */
  brokerTimestamp: number;
}

export type ProducerCheck = { kind: 'new' } | { kind: 'duplicate'; batch: ProducerBatch } | { kind: 'stale'; lastSeq: number };

/** Where a producer's batches are in the slab: its slot, and the ring of batches in it. */
interface Ring {
  slot: number;
  /** The oldest batch's place in the ring. */
  head: number;
  size: number;
}

/** Numbers kept per batch in the slab: first sequence, count, base offset, broker time. */
const fields = 4;
const batchesKept = formatLimits.producerBatchCountMax;

/**
 * Each producer's last batches live in one Float64Array (a slot of `batchesKept` batches each,
 * reused once its producer is evicted), not as an object per batch: at the caps (10,000
 * producers × 16 batches) the objects and their boxed numbers took ~16 MB a channel
 * (helper-61). A batch still being written has its `done` in `pending`, by its place.
 */
export class ProducerStates {
  private readonly producers = new Map<number, Ring>();
  /** Evicted producers' last sequences, oldest eviction first (see the file comment). */
  private readonly evicted = new Map<number, number>();
  private slab = new Float64Array(0);
  private slotsMade = 0;
  private readonly freeSlots: number[] = [];
  /** `done` of batches not yet durable, by their place in the slab (slot × batchesKept + index). */
  private readonly pending = new Map<number, Promise<unknown>>();
  /** The producer recorded last: the last in the Map's order. */
  private newest = -1;

  static isIdempotent(header: BatchHeader): boolean {
    return header.producerId >= 0 && header.producerSequence >= 0;
  }

  check(header: BatchHeader): ProducerCheck {
    const ring = this.producers.get(header.producerId);
    if (!ring || ring.size === 0) {
      const lastSeq = this.evicted.get(header.producerId);
      return lastSeq !== undefined && header.producerSequence <= lastSeq ? { kind: 'stale', lastSeq } : { kind: 'new' };
    }
    const lastSeq = this.lastSeqOf(ring);
    if (header.producerSequence > lastSeq) return { kind: 'new' };
    for (let i = 0; i < ring.size; i++) {
      const place = this.place(ring, i);
      const at = place * fields;
      if (this.slab[at] === header.producerSequence && this.slab[at + 1] === header.recordCount) {
        const batch: ProducerBatch = { firstSeq: this.slab[at]!, count: this.slab[at + 1]!, baseOffset: this.slab[at + 2]!, done: this.pending.get(place) ?? null, brokerTimestamp: this.slab[at + 3]! };
        return { kind: 'duplicate', batch };
      }
    }
    return { kind: 'stale', lastSeq };
  }

  /**
   * Remembers a batch. `done`: resolves once it is durable; until then a retry waits on it and
   * the checkpoint leaves it out (entries). A `done` that rejects stays: the batch never was.
   */
  record(producerId: number, firstSeq: number, count: number, baseOffset: number, done: Promise<unknown> | null = null, brokerTimestamp = 0): void {
    let ring = this.producers.get(producerId);
    if (!ring) {
      ring = { slot: this.takeSlot(), head: 0, size: 0 };
      this.producers.set(producerId, ring);
      this.evicted.delete(producerId); // back: its batches are known again
    } else if (producerId !== this.newest) {
      // Re-insert: most recently used last. Not for the producer recorded last (it is last
      // already): a delete + set per batch rehashed the Map every few batches, and V8 keeps
      // discarded tables linked to their successors (sdk/request-table.ts has the cost).
      this.producers.delete(producerId);
      this.producers.set(producerId, ring);
    }
    this.newest = producerId;
    if (ring.size === batchesKept) {
      // The oldest goes: its place takes the new batch.
      this.pending.delete(this.place(ring, 0));
      ring.head = (ring.head + 1) % batchesKept;
      ring.size--;
    }
    const place = this.place(ring, ring.size);
    ring.size++;
    const at = place * fields;
    this.slab[at] = firstSeq;
    this.slab[at + 1] = count;
    this.slab[at + 2] = baseOffset;
    this.slab[at + 3] = brokerTimestamp;
    if (done) {
      this.pending.set(place, done);
      done.then(
        () => {
          if (this.pending.get(place) === done) this.pending.delete(place);
        },
        () => undefined,
      );
    }
    if (this.producers.size > limits.producerStateCountMax) this.evict();
  }

  /** Where the ring's `i`th batch (0: the oldest) is in the slab, in batches. */
  private place(ring: Ring, i: number): number {
    return ring.slot * batchesKept + ((ring.head + i) % batchesKept);
  }

  private lastSeqOf(ring: Ring): number {
    const at = this.place(ring, ring.size - 1) * fields;
    return this.slab[at]! + this.slab[at + 1]! - 1;
  }

  /** A free slot, the slab grown (doubled, up to the producers' cap + 1) when there is none. */
  private takeSlot(): number {
    const free = this.freeSlots.pop();
    if (free !== undefined) return free;
    const slot = this.slotsMade++;
    if ((slot + 1) * batchesKept * fields > this.slab.length) {
      const slots = Math.min(Math.max(4, 2 * this.slotsMade), limits.producerStateCountMax + 1);
      const grown = new Float64Array(Math.max(slots, slot + 1) * batchesKept * fields);
      grown.set(this.slab);
      this.slab = grown;
    }
    return slot;
  }

  /** Drops the least recently used producer, keeping its last sequence in `evicted`. */
  private evict(): void {
    const [id, ring] = this.producers.entries().next().value!;
    this.producers.delete(id);
    if (ring.size > 0) this.evicted.set(id, this.lastSeqOf(ring));
    for (let i = 0; i < ring.size; i++) this.pending.delete(this.place(ring, i));
    this.freeSlots.push(ring.slot);
    if (this.evicted.size > limits.evictedProducerCountMax) this.evicted.delete(this.evicted.keys().next().value!);
  }

  recordHeader(header: BatchHeader, baseOffset: number): void {
    if (ProducerStates.isIdempotent(header)) this.record(header.producerId, header.producerSequence, header.recordCount, baseOffset, null, header.brokerTimestamp);
  }

  /**
   * Checkpoint entries, oldest batch first per producer: durable batches only. A batch still
   * queued or being written is left out — were it listed and then lost in a crash, its retry
   * would be answered as a duplicate with offsets that hold nothing. If it becomes durable in
   * the active segment, recovery learns it again by scanning that segment.
   *
   * Except below `durableBelow`, the end of the sealed segments the same checkpoint lists:
   * those are durable, and open does not scan them. A group commit that rolls part-way
   * resolves (clears `done`) only once its last slice is written, so a batch of its first
   * slice is still pending when the rolled segment's seal writes the checkpoint; left out,
   * it was never learned again after a crash, and its retry was refused or stored twice.
   */
  entries(durableBelow = 0): ProducerEntry[] {
    const out: ProducerEntry[] = [];
    for (const [id, ring] of this.producers) {
      for (let i = 0; i < ring.size; i++) {
        const place = this.place(ring, i);
        const at = place * fields;
        const firstSeq = this.slab[at]!;
        const count = this.slab[at + 1]!;
        const baseOffset = this.slab[at + 2]!;
        if (!this.pending.has(place) || baseOffset + count <= durableBelow) out.push([id, firstSeq, firstSeq + count - 1, baseOffset, count]);
      }
    }
    return out;
  }

  load(entries: readonly ProducerEntry[]): void {
    for (const [id, firstSeq, , baseOffset, count] of entries) this.record(id, firstSeq, count, baseOffset);
  }
}
