/**
 * File calls through the thread pool (a channel's group commit; seals and checkpoints), as
 * promises over node:fs's callback API. Not fs.promises: its FileHandle (an event emitter per
 * open file) cost twice the CPU per checkpoint written, and on two cores, at a store open or
 * close that writes ten thousand of them, the syncs wait for that CPU.
 */
import * as fs from 'node:fs';

export function open(file: string, flags: fs.OpenMode): Promise<number> {
  return new Promise((resolve, reject) => fs.open(file, flags, (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** Writes all of `bytes` at `position` (a short write goes on from where it stopped). */
export function writeAll(fd: number, bytes: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done >= bytes.length) return resolve();
      fs.write(fd, bytes, done, bytes.length - done, position + done, (err, written) => (err ? reject(err) : step(done + written)));
    };
    step(0);
  });
}

export function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

export function ftruncate(fd: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => fs.ftruncate(fd, length, (err) => (err ? reject(err) : resolve())));
}

export function fsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
}

export function close(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
}

/** unlink(2), a file already gone being no error. */
export function unlinkIfPresent(file: string): Promise<void> {
  return new Promise((resolve, reject) => fs.unlink(file, (err) => (err && err.code !== 'ENOENT' ? reject(err) : resolve())));
}

export function rename(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => fs.rename(from, to, (err) => (err ? reject(err) : resolve())));
}

/** Writes all of `buffers` at `position`, in order (a short writev goes on from where it stopped). */
export function writev(fd: number, buffers: Uint8Array[], position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const total = buffers.reduce((n, b) => n + b.length, 0);
    const step = (done: number, list: Uint8Array[]): void => {
      fs.writev(fd, list, position + done, (err, written) => {
        if (err) return reject(err);
        const now = done + written;
        if (now >= total) return resolve();
        step(now, remaining(list, written));
      });
    };
    step(0, buffers);
  });
}

/** The part of `list` after its first `skip` bytes (a short writev). */
function remaining(list: Uint8Array[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of list) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}
