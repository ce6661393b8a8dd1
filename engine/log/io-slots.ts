/**
 * A bound on channels doing file work at once: at most `count` hold a slot, the rest wait
 * for one in the order they asked.
 *
 * Opening and closing a store write every channel's checkpoint (and at close seal its active
 * segment): each a chain of syncs of ~1–2 ms that waits on the disk, not the CPU. Done one
 * channel after another, a store of ten thousand channels took 10–20 s each way; run many at
 * once through the thread pool, the disk works on many channels' syncs together. The bound
 * keeps what that holds small: the thread pool's queue (appends and reads share it), and the
 * descriptors of the files being written, one per slot.
 *
 * Those descriptors must not make a store fail where one channel at a time would not: every
 * segment file stays open (engine/README.md), so a store may run close to its limit
 * (ulimit -n). A step that runs out of them (EMFILE, ENFILE) while other slots are held runs
 * again once its slot is the only one held (withDescriptors), as it did when channels opened
 * and closed one after another.
 */
export class IoSlots {
  private free: number;
  /** Waiting for a slot, in call order. */
  private readonly waiting: Array<() => void> = [];
  /** Holders waiting to retry a step with no other slot held, in call order. */
  private readonly waitingAlone: Array<() => void> = [];
  /** A holder is retrying a step alone: no slot is handed out meanwhile. */
  private aloneRunning = false;

  constructor(private readonly count: number) {
    if (!Number.isSafeInteger(count) || count < 1) throw new Error(`IoSlots: count ${count} must be a whole number ≥ 1`);
    this.free = count;
  }

  /** Resolves once a slot is held; the function it gives back returns the slot (once). */
  async acquire(): Promise<() => void> {
    if (this.free > 0 && this.waiting.length === 0 && !this.exclusive()) this.free--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve)); // pump() took the slot for us
    let held = true;
    return () => {
      if (!held) throw new Error('IoSlots: a slot returned twice');
      held = false;
      this.free++;
      this.pump();
    };
  }

  /**
   * Runs `step` (the caller holds a slot); when it fails for want of file descriptors (EMFILE,
   * ENFILE), runs it once more as soon as the caller's is the only slot held, no other handed
   * out meanwhile. So `step` must be safe to run twice: a whole atomic file write, say, not
   * half of one.
   */
  async withDescriptors<T>(step: () => T | Promise<T>): Promise<T> {
    try {
      return await step();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException | null)?.code;
      if (code !== 'EMFILE' && code !== 'ENFILE') throw err;
    }
    await new Promise<void>((resolve) => {
      this.waitingAlone.push(resolve);
      this.pump();
    });
    try {
      return await step();
    } finally {
      this.aloneRunning = false;
      this.pump();
    }
  }

  private exclusive(): boolean {
    return this.aloneRunning || this.waitingAlone.length > 0;
  }

  private pump(): void {
    if (this.exclusive()) {
      // The first waiting to be alone runs once every other holder has let go or waits too.
      if (!this.aloneRunning && this.count - this.free === this.waitingAlone.length) {
        this.aloneRunning = true;
        this.waitingAlone.shift()!();
      }
      return;
    }
    while (this.free > 0 && this.waiting.length > 0) {
      this.free--;
      this.waiting.shift()!();
    }
  }
}
