/**
 * Crash consistency: what an fdatasync that failed, a folder entry not yet durable, or a power
 * cut inside one group commit must not cost. Faults are real errors from wrapped file calls
 * (the engine's thread-pool calls in engine/log/fs-pool, node:fs for the rest); crashes kill
 * a real child with SIGKILL; a power cut is the files edited as the device may have left them.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openStore, type StoreFault } from '../engine/index';
import { rejection, removeTempDirs, segmentFiles, tempDir } from './helpers';

after(removeTempDirs);

/** The engine's thread-pool file calls, replaceable (the compiled module's exports). */
const pool = require('../engine/log/fs-pool') as { fdatasync: (fd: number) => Promise<void> };

function eio(call: string): Error {
  return Object.assign(new Error(`EIO: i/o error, ${call}`), { code: 'EIO', errno: -5, syscall: call });
}

/** A promise and the way to resolve it. */
function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * Linux reports a write-back error once per descriptor ("fsyncgate"): the fdatasync that meets
 * it gets EIO, and the next one on the same descriptor returns 0 though the pages are lost.
 * From the call of this on, the first fdatasync fails so, and every later one succeeds.
 */
function failFirstFdatasync(): { restore: () => void } {
  const real = pool.fdatasync;
  let reported = false;
  pool.fdatasync = (fd) => {
    if (reported) return real(fd);
    reported = true;
    return Promise.reject(eio('fdatasync'));
  };
  return { restore: () => void (pool.fdatasync = real) };
}

describe('crash consistency: a failed fdatasync is never taken back', () => {
  // fsyncgate (cc23): in sync mode "interval" the timer's fdatasync got EIO and the channel
  // failed; the __groups compaction's own fdatasync on the same descriptor then returned 0, and
  // it deleted the old segments and wrote a checkpoint: the acknowledged rewrite was lost, and
  // what it replaced with it.
  it('a compaction on a channel whose sync timer got EIO removes nothing: STORAGE_FAILED, every segment and the checkpoint as they were', async () => {
    const dir = tempDir();
    const failed = deferred();
    const store = await openStore(dir, { sync: 'interval', syncIntervalMs: 5, segmentBytes: 4096, onFault: (f: StoreFault) => f.kind === 'failed' && failed.resolve() });
    await store.createTopic('g', { channels: 1 });
    for (let i = 0; i < 6; i++) await store.append('g', 0, [{ body: randomBytes(1500) }]); // two batches a segment: three segments
    await store.settled();
    const channelDir = path.join(dir, 'topics', 'g', '0');
    const logs = segmentFiles(channelDir);
    assert.equal(logs.length, 3);
    const checkpoint = fs.readFileSync(path.join(channelDir, 'checkpoint.json'), 'utf8');
    const fault = failFirstFdatasync();
    let rewrite: number;
    try {
      rewrite = (await store.append('g', 0, [{ body: randomBytes(500) }])).baseOffset; // the "rewrite": fits, acknowledged after the write
      await failed.promise; // the sync timer's fdatasync got EIO
      assert.equal((await rejection(store.append('g', 0, [{ body: Buffer.from('x') }]))).code, 'STORAGE_FAILED');
      const err = await rejection(store.deleteSegmentsBefore('g', 0, rewrite));
      assert.equal(err.code, 'STORAGE_FAILED');
    } finally {
      fault.restore();
    }
    assert.deepEqual(segmentFiles(channelDir), logs, 'no segment removed');
    assert.equal(fs.readFileSync(path.join(channelDir, 'checkpoint.json'), 'utf8'), checkpoint, 'no checkpoint written');
    await store.close();
  });

  it("a compaction whose own fdatasync gets EIO fails the channel (STORAGE_FAILED, sticky) and removes nothing; the next fdatasync's 0 does not revive it", async () => {
    const dir = tempDir();
    const faults: StoreFault[] = [];
    const store = await openStore(dir, { sync: 'interval', syncIntervalMs: 3_600_000, segmentBytes: 4096, onFault: (f: StoreFault) => faults.push(f) });
    await store.createTopic('g', { channels: 1 });
    for (let i = 0; i < 6; i++) await store.append('g', 0, [{ body: randomBytes(1500) }]);
    await store.settled();
    const channelDir = path.join(dir, 'topics', 'g', '0');
    const logs = segmentFiles(channelDir);
    const rewrite = (await store.append('g', 0, [{ body: randomBytes(500) }])).baseOffset;
    const fault = failFirstFdatasync(); // the compaction's is the first (the timer waits an hour)
    try {
      assert.equal((await rejection(store.deleteSegmentsBefore('g', 0, rewrite))).code, 'STORAGE_FAILED');
      assert.equal((await rejection(store.deleteSegmentsBefore('g', 0, rewrite))).code, 'STORAGE_FAILED', 'a second try, whose fdatasync would say 0, is refused too');
      assert.equal((await rejection(store.append('g', 0, [{ body: Buffer.from('x') }]))).code, 'STORAGE_FAILED');
    } finally {
      fault.restore();
    }
    assert.deepEqual(segmentFiles(channelDir), logs);
    assert.deepEqual(
      faults.map((f) => [f.kind, f.code]),
      [['failed', 'EIO']],
    );
    await store.close();
  });
});

describe('crash consistency: one fdatasync at a time per descriptor', () => {
  // sealrace (cc23): in sync mode "interval" a roll did not wait for the sync timer's
  // fdatasync of the segment it sealed; the seal's own fdatasync of the same descriptor ran
  // beside it. The timer's got EIO, the seal's 0, and the checkpoint listed the segment.
  it('a roll seals the old segment only after the sync timer\'s fdatasync of it; when that one gets EIO the seal fails too, and no checkpoint lists the segment', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { sync: 'interval', syncIntervalMs: 5, segmentBytes: 4096, onFault: () => undefined });
    await store.createTopic('t', { channels: 1 });
    const channelDir = path.join(dir, 'topics', 't', '0');
    const real = pool.fdatasync;
    const running = new Map<number, number>(); // fdatasync calls under way per descriptor
    let overlapped = false;
    const held = deferred();
    let release: (() => void) | null = null;
    pool.fdatasync = (fd) => {
      const calls = (running.get(fd) ?? 0) + 1;
      running.set(fd, calls);
      if (calls > 1) overlapped = true;
      const over = (): void => void running.set(fd, running.get(fd)! - 1);
      if (release || !fs.readlinkSync(`/proc/self/fd/${fd}`).endsWith('.log')) return real(fd).finally(over);
      // The first sync of a segment (the timer's): held until the test lets it fail.
      return new Promise<void>((_, reject) => {
        release = () => {
          over();
          reject(eio('fdatasync'));
        };
        held.resolve();
      });
    };
    try {
      await store.append('t', 0, [{ body: randomBytes(2500) }]); // acknowledged after the write
      await held.promise; // the timer's fdatasync of segment 0 is under way
      await store.append('t', 0, [{ body: randomBytes(2500) }]); // rolls: segment 0 is sealed in the background
      release!(); // the write-back error, reported to the timer's call
      await store.settled();
    } finally {
      pool.fdatasync = real;
    }
    assert.equal(overlapped, false, 'two fdatasync calls ran on one descriptor at once');
    const checkpoint = JSON.parse(fs.readFileSync(path.join(channelDir, 'checkpoint.json'), 'utf8')) as { segments: Array<{ baseOffset: number }> };
    assert.deepEqual(
      checkpoint.segments.map((s) => s.baseOffset),
      [],
      'the checkpoint vouches for no segment',
    );
    assert.equal((await rejection(store.append('t', 0, [{ body: Buffer.from('x') }]))).code, 'STORAGE_FAILED');
    await store.close();
  });
});
