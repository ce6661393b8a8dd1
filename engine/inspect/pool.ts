/**
 * Spreads whole segments over a small piscina pool (DESIGN §7). The worker file is the
 * compiled worker.js beside this file. A job of one segment, or `threads: 0`, runs in the
 * calling thread: starting workers would cost more than the work.
 *
 * Invariants: results come back in task order whatever order the workers finish in; an
 * idle worker holds no reference on the event loop, so a CLI exits as soon as its work is
 * done.
 *
 * One pool per thread count lives as long as the process, its workers started on demand and
 * ended after `poolIdleMs` without work. A pool made and destroyed per call, as before,
 * aborted the process on Node 20 when called again and again (verify after every round of a
 * crash test): destroy() terminates workers just after their work, while V8 may still be
 * optimising their code on a background thread, and that job then finds its isolate gone
 * (NodePlatform::ForIsolate: "Assertion failed: (data.first) != nullptr"). Idle for
 * `poolIdleMs`, a worker has no such job left.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { Piscina } from 'piscina';
import { loadChecksum } from '../format/checksum';
import { inspectLimits } from './limits';

export const workerFile = path.join(__dirname, 'worker.js');
export const poolThreadCountMax = inspectLimits.poolThreadCountMax;

export interface PoolOptions {
  /** Worker threads; 0 runs everything in the calling thread. Default: min(2, cores). */
  threads?: number;
}

export type TaskKind = 'scan' | 'rewrite';

const poolIdleMs = 2000;
const pools = new Map<number, Piscina>();

function poolOf(threads: number): Piscina {
  let pool = pools.get(threads);
  if (!pool) {
    pool = new Piscina({ filename: workerFile, minThreads: 0, maxThreads: threads, idleTimeout: poolIdleMs });
    pools.set(threads, pool);
  }
  return pool;
}

/**
 * Runs `inline` or the worker's `kind` function on every task; `onDone` sees each result
 * as it arrives (progress). `weight` orders the work, biggest first, for an even spread.
 */
export async function runSegmentTasks<T, R>(
  kind: TaskKind,
  tasks: readonly T[],
  options: PoolOptions,
  inline: (task: T) => R,
  weight: (task: T) => number,
  onDone: (result: R, task: T) => void,
): Promise<R[]> {
  const threads = Math.min(options.threads ?? poolThreadCountMax, poolThreadCountMax, os.availableParallelism());
  const results: R[] = new Array(tasks.length);
  if (threads <= 0 || tasks.length <= 1) {
    await loadChecksum();
    tasks.forEach((task, i) => {
      results[i] = inline(task);
      onDone(results[i]!, task);
    });
    return results;
  }
  const pool = poolOf(threads);
  const order = tasks.map((_, i) => i).sort((a, b) => weight(tasks[b]!) - weight(tasks[a]!));
  await Promise.all(
    order.map(async (i) => {
      const result = (await pool.run(tasks[i], { name: kind })) as R;
      results[i] = result;
      onDone(result, tasks[i]!);
    }),
  );
  return results;
}
