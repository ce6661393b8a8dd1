/**
 * Paces an open-loop load: calls `send(due)` for message i at its due time t0 + i ×
 * intervalMs (on this thread's clock, performance.now()), for `count` messages.
 *
 * A worker thread (bench/pacer-worker.ts) sleeps until each due time and wakes this thread
 * with a message, so this thread's event loop never blocks and never spins: between due times
 * it waits in the poll phase like any application waiting for work, and the replies, pushes
 * and fdatasync completions it is there for are handled the moment they arrive. Messages that
 * fell due meanwhile (this thread was busy, or collecting garbage) all go when it next looks,
 * and a latency counted from the due time includes that wait (no coordinated omission).
 *
 * The pacer this replaced slept on the pacing thread itself (Atomics.wait until the next due
 * time, then setImmediate): that held back every I/O callback of the process — the
 * producer's batch went out only after the sleep, acknowledgements and pushes waited behind
 * it — and a timed futex wait on this VM oversleeps its 0.1 ms by about as much again. It
 * added 0.3–0.5 ms to the median end-to-end latency (BENCHMARKS.md, session 7). Polling with
 * setImmediate instead would keep the thread busy and make garbage (one Immediate per turn).
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

export function paced(t0: number, intervalMs: number, count: number, send: (due: number) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const flag = new SharedArrayBuffer(4);
    const stopFlag = new Int32Array(flag);
    const worker = new Worker(path.join(__dirname, 'pacer-worker.js'), {
      workerData: { startEpochMs: performance.timeOrigin + t0, intervalMs, count, flag },
    });
    let sent = 0;
    let finished = false;
    const finish = (err?: unknown): void => {
      if (finished) return;
      finished = true;
      Atomics.store(stopFlag, 0, 1);
      Atomics.notify(stopFlag, 0);
      worker.removeAllListeners('message');
      void worker.terminate();
      if (err) reject(err instanceof Error ? err : new Error(String(err)));
      else resolve();
    };
    worker.on('message', () => {
      const t = performance.now();
      try {
        while (sent < count && t0 + sent * intervalMs <= t) {
          if (!send(t0 + sent * intervalMs)) return finish();
          sent++;
        }
      } catch (err) {
        return finish(err);
      }
      if (sent >= count) finish();
    });
    worker.once('error', finish);
    worker.once('exit', (code) => {
      if (!finished) finish(new Error(`pacer worker exited (code ${code}) after ${sent} of ${count} messages`));
    });
  });
}
