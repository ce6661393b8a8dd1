/**
 * The requests of one connection awaiting a reply, by request id.
 *
 * Ids are handed out in sequence, so a ring of slots indexed by the id's low bits holds them;
 * an id whose slot is still taken by a request `slotCount` ids older waits in `overflow`
 * (rare: that many requests in flight at once).
 *
 * Why not a Map: set and deleted thousands of times a second, a Map kept its garbage alive.
 * V8 links each hash table a Map discards (on a rehash) to its successor, and once one of them
 * had been promoted to the old generation, every later table — and every request record,
 * closure, promise and reply frame it still pointed to — survived every scavenge until the
 * next full collection. Measured in a client making 10,000 produce requests a second:
 * 1.7–1.9 MB surviving each scavenge and pauses of 6–7 ms with the Map, 6 KB and 0.4–0.8 ms
 * with this table (BENCHMARKS.md, end-to-end latency).
 */
export class RequestTable<T> {
  private readonly ids: Float64Array;
  private readonly records: Array<T | undefined>;
  private readonly mask: number;
  private readonly overflow = new Map<number, T>();
  private count = 0;

  constructor(slotCount = 4096) {
    if ((slotCount & (slotCount - 1)) !== 0 || slotCount <= 0) throw new Error('RequestTable: slotCount must be a power of two');
    this.mask = slotCount - 1;
    this.ids = new Float64Array(slotCount).fill(-1);
    this.records = new Array<T | undefined>(slotCount).fill(undefined);
  }

  /** Requests held. */
  get size(): number {
    return this.count;
  }

  get(id: number): T | undefined {
    const at = id & this.mask;
    if (this.ids[at] === id) return this.records[at];
    return this.overflow.size > 0 ? this.overflow.get(id) : undefined;
  }

  /** Adds a request; `id` must not be held already. */
  add(id: number, record: T): void {
    const at = id & this.mask;
    if (this.ids[at] === -1) {
      this.ids[at] = id;
      this.records[at] = record;
    } else {
      this.overflow.set(id, record);
    }
    this.count++;
  }

  /** Removes and returns the request with this id (undefined when not held). */
  take(id: number): T | undefined {
    const at = id & this.mask;
    if (this.ids[at] === id) {
      const record = this.records[at];
      this.ids[at] = -1;
      this.records[at] = undefined;
      this.count--;
      return record;
    }
    if (this.overflow.size === 0) return undefined;
    const record = this.overflow.get(id);
    if (record !== undefined) {
      this.overflow.delete(id);
      this.count--;
    }
    return record;
  }

  /** Every request held, with its id (a copy: the table may change while the caller goes through it). */
  entries(): Array<[number, T]> {
    const out: Array<[number, T]> = [];
    if (this.count === 0) return out;
    for (let at = 0; at <= this.mask; at++) if (this.ids[at] !== -1) out.push([this.ids[at]!, this.records[at]!]);
    for (const entry of this.overflow) out.push(entry);
    return out;
  }

  /** Removes and returns every request. */
  takeAll(): T[] {
    const all = this.entries().map(([, record]) => record);
    this.ids.fill(-1);
    this.records.fill(undefined);
    this.overflow.clear();
    this.count = 0;
    return all;
  }
}
