/**
 * The piscina worker of verify and repair: one task = one whole segment. Loaded by path
 * from dist (pool.ts), so it must stay a plain compiled module exporting one function per
 * task kind (piscina's `name` run option picks it).
 */
import { loadChecksum } from '../format/checksum';
import { scanSegmentFile, type ScanResult, type ScanTask } from './segment-check';
import { rewriteSegmentFile, type RewriteResult, type RewriteTask } from './segment-rewrite';

export async function scan(task: ScanTask): Promise<ScanResult> {
  await loadChecksum(); // the xxhash WebAssembly module is per thread
  return scanSegmentFile(task);
}

export async function rewrite(task: RewriteTask): Promise<RewriteResult> {
  await loadChecksum();
  return rewriteSegmentFile(task);
}
