/** Shared test helpers: temp folders and the corruption tools (flipByte, truncateTail). */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { checkedJsonText, parseCheckedJson } from '../engine/log/checked-json';

const made: string[] = [];

export function tempDir(prefix = 'waymark-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const dir of made.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}

/** XORs one byte of a real file with `mask` (default 0xff). */
export function flipByte(file: string, position: number, mask = 0xff): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    if (fs.readSync(fd, b, 0, 1, position) !== 1) throw new Error(`flipByte: ${file} has no byte at ${position}`);
    b[0] ^= mask;
    fs.writeSync(fd, b, 0, 1, position);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Rewrites a checksummed JSON file (checkpoint.json, topic.json) through `change`, with a
 * checksum that holds: a file that lies and passes its check, as a bug would write it.
 */
export function rewriteCheckedJson<T extends Record<string, unknown>>(file: string, change: (fields: T) => T | void, indent?: number): void {
  const fields = parseCheckedJson(fs.readFileSync(file, 'utf8')).fields as T;
  fs.writeFileSync(file, checkedJsonText(change(fields) ?? fields, indent));
}

/** Cuts a real file down to `size` bytes. */
export function truncateTail(file: string, size: number): void {
  fs.truncateSync(file, size);
}

/**
 * Start position of every batch in a segment file's bytes, walking batchLength fields, and
 * where the batches end: at the end of the file or at its zeroed tail (FORMAT.md), the zeros
 * an active segment in sync mode "batch" is written ahead with (a zero magic byte).
 */
export function batchLayout(bytes: Buffer): { starts: number[]; end: number } {
  const starts: number[] = [];
  let at = 0;
  while (at + 64 <= bytes.length && bytes[at + 24] !== 0) {
    starts.push(at);
    at += bytes.readUInt32LE(at + 28);
  }
  return { starts, end: at };
}

/** Where a segment file's batches end: its size, less any zeroed tail (an active segment in sync mode "batch"). */
export function logEnd(file: string): number {
  return batchLayout(fs.readFileSync(file)).end;
}

export function segmentFiles(channelDir: string, extension = 'log'): string[] {
  return fs
    .readdirSync(channelDir)
    .filter((n) => n.endsWith(`.${extension}`))
    .sort()
    .map((n) => path.join(channelDir, n));
}

/** bodyFor's bytes, always `length` of them (a test that needs batches of a known size). */
export function bodyOfLength(seed: string, index: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i += 32) createHash('sha256').update(`${seed}:${index}:${i}`).digest().copy(out, i, 0, Math.min(32, length - i));
  return out;
}

/** Deterministic bytes for (seed, index): lets a reader check bit-identity without keeping copies. */
export function bodyFor(seed: string, index: number, lengthMax = 300): Buffer {
  const digest = createHash('sha256').update(`${seed}:${index}`).digest();
  const length = 1 + (digest.readUInt16LE(0) % lengthMax);
  const out = Buffer.alloc(length);
  // A fresh hash per 32 bytes: incompressible, so lz4 on and off store alike.
  for (let i = 0; i < length; i += 32) {
    const chunk = createHash('sha256').update(`${seed}:${index}:${i}`).digest();
    chunk.copy(out, i, 0, Math.min(32, length - i));
  }
  return out;
}

/** Copies a data folder as it is on disk right now (a "crash image" when the store is still open). */
export function copyFolder(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true });
  fs.rmSync(path.join(to, 'LOCK'), { force: true });
}

/** Resolves with the error a promise rejects with (fails the test if it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a rejection, but the promise resolved');
}

export function thrown(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a throw, but the call returned');
}
