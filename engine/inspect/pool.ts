/**
 * Spreads whole segments over a small piscina pool (DESIGN §7). The worker file is the
 * compiled worker.js beside this file. A job of one segment, or `threads: 0`, runs in the
 * calling thread: starting workers would cost more than the work.
 *
 * Invariants: results come back in task order whatever order the workers finish in; the
 * pool is destroyed before this returns, so a CLI exits as soon as its work is done.
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
  const pool = new Piscina({ filename: workerFile, minThreads: threads, maxThreads: threads, idleTimeout: 1000 });
  try {
    const order = tasks.map((_, i) => i).sort((a, b) => weight(tasks[b]!) - weight(tasks[a]!));
    await Promise.all(
      order.map(async (i) => {
        const result = (await pool.run(tasks[i], { name: kind })) as R;
        results[i] = result;
        onDone(result, tasks[i]!);
      }),
    );
  } finally {
    await pool.destroy();
  }
  return results;
}
