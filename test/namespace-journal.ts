/**
 * A journal of what a process does to folders' entries, for power-cut tests. POSIX makes a new
 * folder entry (a file or folder created, a name renamed into place) durable only once the
 * folder itself is fsynced; a power cut may lose any entry made after its folder's last fsync,
 * and the whole subtree under it with it. `journalFolders` wraps node:fs (the engine calls it
 * through the module's exports, thread-pool calls included) and says each such change and each
 * folder fsync, in order, as it is done; `unsyncedEntries` replays such lines and says which
 * entries a power cut at the end of them may lose.
 *
 * Lines: `create PATH` (a file or folder that did not exist), `rename FROM TO`, `syncdir PATH`.
 * Paths are absolute and real (symlinks resolved); none holds a space.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

type Callback = (...args: any[]) => void;

/** Starts saying changes to `say`; returns the way to stop (node:fs as it was). */
export function journalFolders(say: (line: string) => void): () => void {
  // The module object itself: `import * as` gives a copy whose fields cannot be replaced.
  const mutable = require('node:fs') as Record<string, any>;
  const real = {
    openSync: mutable.openSync as typeof fs.openSync,
    open: mutable.open as typeof fs.open,
    mkdirSync: mutable.mkdirSync as typeof fs.mkdirSync,
    renameSync: mutable.renameSync as typeof fs.renameSync,
    rename: mutable.rename as typeof fs.rename,
    fsyncSync: mutable.fsyncSync as typeof fs.fsyncSync,
    fsync: mutable.fsync as typeof fs.fsync,
  };
  const absolute = (p: fs.PathLike): string => {
    const resolved = path.resolve(String(p));
    return path.join(fs.realpathSync(path.dirname(resolved)), path.basename(resolved));
  };
  const syncedFolder = (fd: number): void => {
    if (fs.fstatSync(fd).isDirectory()) say(`syncdir ${fs.readlinkSync(`/proc/self/fd/${fd}`)}`);
  };
  mutable.openSync = (file: fs.PathLike, ...rest: any[]): number => {
    const made = !fs.existsSync(file);
    const fd = (real.openSync as any)(file, ...rest);
    if (made) say(`create ${absolute(file)}`);
    return fd;
  };
  mutable.open = (file: fs.PathLike, ...args: any[]): void => {
    const cb = args.pop() as Callback;
    const made = !fs.existsSync(file);
    (real.open as any)(file, ...args, (err: Error | null, fd: number) => {
      if (!err && made) say(`create ${absolute(file)}`);
      cb(err, fd);
    });
  };
  mutable.mkdirSync = (dir: fs.PathLike, options?: fs.MakeDirectoryOptions): string | undefined => {
    const missing: string[] = [];
    for (let p = path.resolve(String(dir)); !fs.existsSync(p); p = path.dirname(p)) missing.unshift(p);
    const result = real.mkdirSync(dir, options);
    for (const p of missing) say(`create ${absolute(p)}`);
    return result;
  };
  mutable.renameSync = (from: fs.PathLike, to: fs.PathLike): void => {
    const source = absolute(from);
    real.renameSync(from, to);
    say(`rename ${source} ${absolute(to)}`);
  };
  mutable.rename = (from: fs.PathLike, to: fs.PathLike, cb: Callback): void => {
    const source = absolute(from);
    real.rename(from, to, (err) => {
      if (!err) say(`rename ${source} ${absolute(to)}`);
      cb(err);
    });
  };
  mutable.fsyncSync = (fd: number): void => {
    real.fsyncSync(fd);
    syncedFolder(fd);
  };
  mutable.fsync = (fd: number, cb: Callback): void => {
    real.fsync(fd, (err) => {
      if (!err) syncedFolder(fd);
      cb(err);
    });
  };
  return () => Object.assign(mutable, real);
}

/**
 * The changes in `lines` (journalFolders) that a power cut right after the last of them may
 * undo, oldest first: each `create` or `rename` whose folder was not fsynced after it (a
 * rename counts for both folders when it moves between two).
 */
export function unsyncedEntries(lines: readonly string[]): string[] {
  const pending = new Map<string, string[]>();
  const add = (folder: string, change: string): void => void pending.set(folder, [...(pending.get(folder) ?? []), change]);
  for (const line of lines) {
    const [word, a, b] = line.split(' ') as [string, string, string | undefined];
    if (word === 'create') add(path.dirname(a), line);
    else if (word === 'rename') {
      add(path.dirname(b!), line);
      if (path.dirname(a) !== path.dirname(b!)) add(path.dirname(a), line);
    } else if (word === 'syncdir') pending.delete(a);
  }
  const undone = new Set<string>();
  for (const changes of pending.values()) for (const change of changes) undone.add(change);
  return lines.filter((line) => undone.has(line));
}

/**
 * A power cut after `lines`: every entry created (or renamed into place) after its folder's
 * last fsync is removed, with what is under it. Returns the paths removed. (A rename undone
 * would also bring back the old name; the tests here need only the new one gone.)
 */
export function powerCut(lines: readonly string[]): string[] {
  const lost: string[] = [];
  for (const line of unsyncedEntries(lines).reverse()) {
    const parts = line.split(' ');
    const entry = parts[0] === 'create' ? parts[1]! : parts[2]!;
    if (!fs.existsSync(entry)) continue;
    fs.rmSync(entry, { recursive: true, force: true });
    lost.push(entry);
  }
  return lost;
}
