import { WaymarkError } from '../format/errors';

/** An index file failed its sanity check; the engine rebuilds it from the log. */
export class CorruptIndexError extends WaymarkError {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super('CORRUPT_FILE', `corrupt index ${file}: ${reason}`, { file });
  }
}
