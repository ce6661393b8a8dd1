/**
 * Broker time for a whole store, in ms. Two promises, which the system clock alone does not
 * keep (it steps back, and a millisecond holds many events):
 * - every broker time given out after a topic is made is at or after its creation time;
 * - a topic's creation time is after every broker time given out before it.
 * So "written after the topic was made" (a group position in `__groups` whose broker time
 * is ≥ its topic's createdAt) is exact: a deleted topic's positions never count for a new
 * topic of that name, and a new topic of a name used since the last append has a later
 * creation time than the old one (a client tells them apart by it). It runs ahead of the
 * system clock by at most a millisecond per topic made in a millisecond that had an append
 * (or while the system clock is behind what was given out). Within a channel broker times
 * also never decrease.
 *
 * After a restart it starts from what the store holds: the newest broker time of any
 * segment and the newest creation time of any topic (Store.open observes both).
 */
export class StoreClock {
  /** The newest topic's creation time: no broker time is given out below it. */
  private floor = 0;
  /** The latest broker time given out (or found at open). */
  private last = 0;
  /** The latest now() given out: a stable time was computed from it, so no stamp may go below it. */
  private lastNow = 0;

  /** A broker time for an append to a channel whose last broker time is `after`. */
  stamp(after: number): number {
    const time = Math.max(Date.now(), after, this.floor, this.lastNow);
    if (time > this.last) this.last = time;
    return time;
  }

  /** A creation time for a new topic (see the class comment). */
  creation(): number {
    const time = Math.max(Date.now(), this.last + 1, this.floor);
    this.floor = time;
    return time;
  }

  /** The current broker time, as stamp() would give it, without giving it out. */
  now(): number {
    const time = Math.max(Date.now(), this.floor, this.lastNow);
    this.lastNow = time;
    return time;
  }

  /** What the store holds at open: a segment's newest broker time, a topic's creation time. */
  observe(brokerTime: number, createdAt = 0): void {
    this.last = Math.max(this.last, brokerTime, createdAt);
    this.floor = Math.max(this.floor, createdAt);
  }
}
