/**
 * Bounds of the inspection tools (TIGER_STYLE: a limit on everything), units last. The
 * relations between them are asserted at load, below.
 */
export const inspectLimits = {
  /** Worker threads of the verify/repair pool at most: the work is disk-bound; 2 keep a 2-core box usable. */
  poolThreadCountMax: 2,
  /** Bytes copied per read while rewriting a segment or saving dropped bytes aside. */
  copyChunkBytes: 4 * 1024 * 1024,
  /** Faults of one kind listed per file (index entries, batch order); the rest are counted in one line. */
  faultsPerFileMax: 10,
  /** Progress on a terminal is redrawn at most this often (the last update of a phase always is). */
  progressRedrawMsMin: 100,
  /** Off a terminal: a plain progress line this often, the first after as long. */
  progressPlainLineMs: 10_000,
  /** CLI output is written in chunks of about this size (one write per record line would be one syscall each). */
  outputChunkBytes: 64 * 1024,
} as const;

function assert(condition: boolean, message: string): void {
  if (!condition) throw new Error(`engine/inspect/limits: ${message}`);
}
assert(inspectLimits.poolThreadCountMax >= 1, 'the pool needs a thread');
assert(inspectLimits.copyChunkBytes >= 64, 'a copy chunk holds at least a batch header');
assert(inspectLimits.faultsPerFileMax >= 1, 'at least one fault per file is listed');
