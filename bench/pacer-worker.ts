/**
 * The sleeping side of bench/pacer.ts, in its own thread: waits until each due time with
 * Atomics.wait and wakes the pacing thread with an empty message. Stops early when the
 * shared flag is set (and notified).
 */
import { parentPort, workerData } from 'node:worker_threads';

const { startEpochMs, intervalMs, count, flag } = workerData as { startEpochMs: number; intervalMs: number; count: number; flag: SharedArrayBuffer };
const stop = new Int32Array(flag);
const epochNow = (): number => performance.timeOrigin + performance.now();

for (let i = 0; i < count; i++) {
  const wait = startEpochMs + i * intervalMs - epochNow();
  if (wait > 0) Atomics.wait(stop, 0, 0, wait);
  if (Atomics.load(stop, 0) !== 0) break;
  parentPort!.postMessage(null);
}
