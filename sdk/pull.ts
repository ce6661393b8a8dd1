/**
 * The waiting side of a pull-style async iterator (a consumer's messages, a msgStream's
 * packs): at most one next() waits at a time; a failure rejects it and every later next();
 * ending resolves it as done. What to hand out is the caller's `take`.
 */
import { WaymarkError } from '../engine/format/errors';

export class Pull<T> {
  private waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  /** A failure that waits until `take` runs dry (failAfterQueued). */
  private failureAfterQueued: Error | null = null;

  /** The next item: rejects after a failure, done once `ended`, else one from `take` or the next wake(). */
  next(take: () => T | null, ended: boolean): Promise<IteratorResult<T>> {
    if (this.failure) return Promise.reject(this.failure);
    if (ended) return Promise.resolve({ value: undefined, done: true });
    const item = take();
    if (item !== null) return Promise.resolve({ value: item, done: false });
    if (this.failureAfterQueued) {
      this.failure = this.failureAfterQueued;
      return Promise.reject(this.failure);
    }
    if (this.waiting) return Promise.reject(new WaymarkError('INVALID_ARGUMENT', 'next() called again before the previous call resolved'));
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  /** Set once fail() was called: next() rejects from then on. */
  get failed(): boolean {
    return this.failure !== null || this.failureAfterQueued !== null;
  }

  /** Items arrived: hands one to a waiting next(). */
  wake(take: () => T | null): void {
    if (!this.waiting) return;
    const item = take();
    if (item === null) return;
    const waiting = this.waiting;
    this.waiting = null;
    waiting.resolve({ value: item, done: false });
  }

  /**
   * Fails once what is queued now has been taken (a corrupt batch after good ones: the good
   * messages are handed out, then the error). A next() waiting now has nothing to take.
   */
  failAfterQueued(err: Error): void {
    if (this.waiting) this.fail(err);
    else this.failureAfterQueued ??= err;
  }

  fail(err: Error): void {
    this.failure = err;
    const waiting = this.waiting;
    this.waiting = null;
    waiting?.reject(err);
  }

  /** Resolves a waiting next() as done. */
  end(): void {
    const waiting = this.waiting;
    this.waiting = null;
    waiting?.resolve({ value: undefined, done: true });
  }
}
