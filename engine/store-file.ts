/**
 * `<data>/store.json`: `{ "format": "waymark", "version": 4 }`, the folder's format. The store
 * checks it before it reads a byte, and so do verify and repair (engine/inspect): a folder of
 * a format this build does not know is refused by all three alike.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WaymarkError } from './format/errors';
import { writeFileAtomic } from './log/checkpoint';
import { parseJson, printable } from './log/checked-json';

/**
 * The store format this build writes (FORMAT.md): 2 let an active segment end in a zeroed
 * tail, which a build of version 1 would take for damage; 3 writes an end mark after every
 * group commit, which a build of version 2 would take for damage; 4 makes the mark 16 bytes,
 * saying where its commit began, which a build of version 3 would take for damage. Stores of
 * versions 1, 2 and 3 are read (their files have no marks, or 8-byte ones; nothing in them
 * changes) and marked 4 at open, or by a repair, before anything is written.
 */
export const storeFormatVersion = 4;
const storeFileText = JSON.stringify({ format: 'waymark', version: storeFormatVersion });

export const storeFileName = 'store.json';

/**
 * The format version of the store in `dir` (null: no store.json, a folder a store has not
 * marked yet). Anything but a version this build reads is a CORRUPT_FILE error.
 */
export function storeFileVersion(dir: string): number | null {
  const file = path.join(dir, storeFileName);
  if (!fs.existsSync(file)) return null;
  let parsed: { format?: unknown; version?: unknown };
  try {
    parsed = parseJson(fs.readFileSync(file, 'utf8')) as typeof parsed;
  } catch (err) {
    throw new WaymarkError('CORRUPT_FILE', `${file}: ${(err as Error).message} (it should be ${storeFileText}; remove it to have it written again)`, { file });
  }
  if (parsed?.format !== 'waymark' || (parsed.version !== 1 && parsed.version !== 2 && parsed.version !== 3 && parsed.version !== storeFormatVersion)) {
    throw new WaymarkError('CORRUPT_FILE', `${file}: ${printable(JSON.stringify(parsed) ?? String(parsed))} is not a waymark store of format version 1, 2, 3 or ${storeFormatVersion} (what this build reads)`, { file });
  }
  return parsed.version;
}

/** Checks store.json and marks the store with this build's version; returns the version it had (null: none). */
export function markStoreCurrent(dir: string): number | null {
  const version = storeFileVersion(dir);
  if (version !== storeFormatVersion) writeFileAtomic(path.join(dir, storeFileName), storeFileText);
  return version;
}
