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
    if (holder === 'unknown') holder = String(flockHolder(dir) ?? 'unknown'); // LOCK was removed: the kernel knows
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
    return flockHolder(dir);
  }
  if (!Number.isSafeInteger(pid) || pid <= 0) return flockHolder(dir); // released (emptied), or LOCK removed under a holder
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : null; // EPERM: alive, another user's
  }
}

/**
 * The pid holding a flock on `file` (the data folder itself: see lockFolder), from the
 * kernel's table (/proc/locks, Linux); null when none, or when the table cannot be read.
 * For messages only: it names a holder whose LOCK file was removed.
 */
export function flockHolder(file: string): number | null {
  let table: string;
  let stat: fs.BigIntStats;
  try {
    table = fs.readFileSync('/proc/locks', 'utf8');
    stat = fs.statSync(file, { bigint: true });
  } catch {
    return null;
  }
  // Linux's dev_t: major in bits 8-19 and 32+, minor in bits 0-7 and 20+ (the glibc encoding).
  const major = Number(((stat.dev >> 8n) & 0xfffn) | ((stat.dev >> 32n) & ~0xfffn));
  const minor = Number((stat.dev & 0xffn) | ((stat.dev >> 12n) & ~0xffn));
  for (const line of table.split('\n')) {
    // "1: FLOCK  ADVISORY  WRITE 4962 fe:00:2146553 0 EOF"; a waiter's line has "->" after the number.
    const m = /^\d+:\s+FLOCK\s+\S+\s+\S+\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/.exec(line);
    if (!m) continue;
    if (BigInt(m[4]!) === stat.ino && parseInt(m[2]!, 16) === major && parseInt(m[3]!, 16) === minor) return Number(m[1]);
  }
  return null;
}
