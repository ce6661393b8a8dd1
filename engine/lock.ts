/**
 * The data folder lock: an exclusive, non-blocking flock (fs-ext) on the folder itself and on
 * `<dir>/LOCK`, held for the life of the store. The holder writes its pid into the file so that a refused opener
 * can name it. flock is tied to the open file description, so the lock also refuses a
 * second store in the same process, and the kernel drops it when the holder dies.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { flockSync } from 'fs-ext';
import { WaymarkError } from './format/errors';

export interface FolderLock {
  release(): void;
}

export function lockFolder(dir: string): FolderLock {
  const file = path.join(dir, 'LOCK');
  // The folder itself is locked first: a LOCK file someone removed (a clean-up script, a user
  // who took it for a stale pid file) would otherwise free the way for a second broker on the
  // same data, the two then writing the same segments. LOCK is locked too, as before: a
  // process of an earlier build locks only that.
  const dirFd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  let fd = -1;
  try {
    tryLock(dirFd, dir, file);
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    tryLock(fd, dir, file);
  } catch (err) {
    if (fd >= 0) fs.closeSync(fd);
    fs.closeSync(dirFd);
    throw err;
  }
  try {
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
  } catch {
    // The pid is a courtesy: a full disk must not keep the store from opening (its data is
    // readable, and the channels say themselves whether they can write).
  }
  return {
    release(): void {
      try {
        fs.ftruncateSync(fd, 0);
      } finally {
        fs.closeSync(fd); // closing drops the flocks
        fs.closeSync(dirFd);
      }
    },
  };
}

/** flock(fd, LOCK_EX | LOCK_NB); held elsewhere: STORE_LOCKED naming the holder's pid from `file`. */
function tryLock(fd: number, dir: string, file: string): void {
  try {
    flockSync(fd, 'exnb');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK') throw err;
    let holder = 'unknown';
    try {
      holder = fs.readFileSync(file, 'utf8').trim() || 'unknown';
    } catch {
      // the pid is a courtesy; the lock is what matters
    }
    const who =
      holder === String(process.pid)
        ? `this process (pid ${holder}): it is already open here`
        : holder === 'unknown'
          ? 'another process (its pid is not known: the LOCK file that names it was removed)'
          : `another process (pid ${holder})`;
    throw new WaymarkError('STORE_LOCKED', `data folder ${path.resolve(dir)} is locked by ${who}`, { dir, pid: holder });
  }
}

/**
 * The pid of a live process that holds (or held, and still runs) the folder's lock, from the
 * pid its holder wrote; null when none. Takes no lock itself — a probe with flock could make
 * a broker starting at that instant fail — so it can be wrong after a pid is reused: for
 * notes (verify on a running broker's folder), never for safety.
 */
export function lockHolder(dir: string): number | null {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(dir, 'LOCK'), 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isSafeInteger(pid) || pid <= 0) return null; // released: the file is emptied
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : null; // EPERM: alive, another user's
  }
}
