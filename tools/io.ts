/**
 * Output of the commands. The real one writes with fs.writeSync on fds 1 and 2: a reader
 * that goes away (`waymark dump … | head`) is seen at the very next write (EPIPE), so a
 * long dump stops at once instead of formatting the rest of the store into a closed pipe.
 * Tests pass their own Io.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inspectLimits } from '../engine/inspect/limits';

/** "1 segment", "3 segments": a count and its noun, for summary lines. */
export function counted(n: number, singular: string, plural = `${singular}s`): string {
  return `${n} ${n === 1 ? singular : plural}`;
}

export interface Io {
  /** Writes to stdout; false once the reader is gone. */
  out(text: string): boolean;
  err(text: string): void;
  /** Progress is drawn on stderr only when it is a terminal. */
  errIsTTY: boolean;
}

function writeAll(fd: number, text: string): boolean {
  const bytes = Buffer.from(text);
  let done = 0;
  while (done < bytes.length) {
    try {
      done += fs.writeSync(fd, bytes, done, bytes.length - done);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1); // a non-blocking pipe is full: wait 1 ms
        continue;
      }
      if (code === 'EPIPE') return false;
      throw err;
    }
  }
  return true;
}

export function processIo(): Io {
  let closed = false;
  return {
    out(text: string): boolean {
      if (closed) return false;
      closed = !writeAll(1, text);
      return !closed;
    },
    err(text: string): void {
      writeAll(2, text);
    },
    errIsTTY: process.stderr.isTTY === true,
  };
}

/** Gathers lines and writes them in chunks (one write per line would be one syscall per record). */
export class LineBuffer {
  private parts: string[] = [];
  private bytes = 0;
  private open = true;

  constructor(private readonly io: Io) {}

  /** False once stdout is closed: the caller stops. */
  push(line: string): boolean {
    if (!this.open) return false;
    this.parts.push(line, '\n');
    this.bytes += line.length + 1;
    if (this.bytes >= inspectLimits.outputChunkBytes) this.flush();
    return this.open;
  }

  flush(): boolean {
    if (this.open && this.parts.length > 0) this.open = this.io.out(this.parts.join(''));
    this.parts = [];
    this.bytes = 0;
    return this.open;
  }
}

/** A path as the user will want to read it: relative to the working folder when inside it. */
export function shownPath(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file;
}

/** Milliseconds as an ISO time, or the bare number when it is no real date (a corrupt field). */
export function shownTime(ms: number): string {
  return Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? new Date(ms).toISOString() : String(ms);
}
