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

export class ProducerStates {
  private readonly producers = new Map<number, ProducerBatch[]>();
  /** Evicted producers' last sequences, oldest eviction first (see the file comment). */
  private readonly evicted = new Map<number, number>();
  /** The producer recorded last: the last in the Map's order. */
  private newest = -1;

  static isIdempotent(header: BatchHeader): boolean {
    return header.producerId >= 0 && header.producerSequence >= 0;
  }

  check(header: BatchHeader): ProducerCheck {
    const batches = this.producers.get(header.producerId);
    if (!batches || batches.length === 0) {
      const lastSeq = this.evicted.get(header.producerId);
      return lastSeq !== undefined && header.producerSequence <= lastSeq ? { kind: 'stale', lastSeq } : { kind: 'new' };
    }
    const last = batches[batches.length - 1]!;
    const lastSeq = last.firstSeq + last.count - 1;
    if (header.producerSequence > lastSeq) return { kind: 'new' };
    const batch = batches.find((b) => b.firstSeq === header.producerSequence && b.count === header.recordCount);
    return batch ? { kind: 'duplicate', batch } : { kind: 'stale', lastSeq };
  }

  record(producerId: number, firstSeq: number, count: number, baseOffset: number, done: Promise<unknown> | null = null, brokerTimestamp = 0): ProducerBatch {
    let batches = this.producers.get(producerId);
    if (!batches) {
      batches = [];
      this.producers.set(producerId, batches);
      this.evicted.delete(producerId); // back: its batches are known again
    } else if (producerId !== this.newest) {
      // Re-insert: most recently used last. Not for the producer recorded last (it is last
      // already): a delete + set per batch rehashed the Map every few batches, and V8 keeps
      // discarded tables linked to their successors (sdk/request-table.ts has the cost).
      this.producers.delete(producerId);
      this.producers.set(producerId, batches);
    }
    this.newest = producerId;
    const batch: ProducerBatch = { firstSeq, count, baseOffset, done, brokerTimestamp };
    batches.push(batch);
    if (batches.length > limits.producerBatchCountMax) batches.shift();
    if (this.producers.size > limits.producerStateCountMax) this.evict();
    return batch;
  }

  /** Drops the least recently used producer, keeping its last sequence in `evicted`. */
  private evict(): void {
    const [id, batches] = this.producers.entries().next().value!;
    this.producers.delete(id);
    const last = batches[batches.length - 1];
    if (last) this.evicted.set(id, last.firstSeq + last.count - 1);
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
    for (const [id, batches] of this.producers) {
      for (const b of batches) if (!b.done || b.baseOffset + b.count <= durableBelow) out.push([id, b.firstSeq, b.firstSeq + b.count - 1, b.baseOffset, b.count]);
    }
    return out;
  }

  load(entries: readonly ProducerEntry[]): void {
    for (const [id, firstSeq, , baseOffset, count] of entries) this.record(id, firstSeq, count, baseOffset);
  }
}
