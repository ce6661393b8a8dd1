import { WaymarkError } from '../format/errors';

/**
 * Out of file descriptors is the operator's to fix, and says how: every segment file is kept
 * open. The cause to show for an error with that code, or null for any other.
 */
export function tooManyOpenFiles(code: unknown): string | null {
  if (code !== 'EMFILE' && code !== 'ENFILE') return null;
  return `too many open files (${code}); every segment file is kept open: raise the limit (ulimit -n) or use fewer channels`;
}

/** An index file failed its sanity check; the engine rebuilds it from the log. */
export class CorruptIndexError extends WaymarkError {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super('CORRUPT_FILE', `corrupt index ${file}: ${reason}`, { file });
  }
}

/**
 * Recovery found a damaged batch with whole, checksum-sound batches after it: cutting the
 * segment there (what a torn tail gets) would drop acknowledged messages and hand their
 * offsets out again. Thrown before anything is changed; the store repairs the channel
 * (engine/inspect/repair.ts keeps every sound batch) and opens it again.
 */
export class DamageBeforeSoundBatchesError extends WaymarkError {
  constructor(
    readonly dir: string,
    readonly file: string,
    readonly position: number,
    readonly soundAt: number,
    readonly reason: string,
  ) {
    super('CORRUPT_FILE', `${file}: ${reason} at byte ${position}, sound batches from byte ${soundAt} on`, { file, position });
  }
}
