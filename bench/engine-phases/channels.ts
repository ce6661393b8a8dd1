/**
 * Phase 5 of bench/engine.ts: open and close of a store of many small channels (600 topics
 * × 16 channels by default, three messages each), where the time goes to per-channel file
 * work, not to data: recovery reads a checkpoint and three index files per channel, and open
 * and close each write one checkpoint per channel.
 *
 * Baseline, same run: one atomic write of a checkpoint-sized file (temp file, fdatasync,
 * rename, fsync of the folder) into every channel folder, 32 at once through the thread pool
 * as open and close run them (limits.openCloseChannelCountMax) — the file work an open and
 * a close of idle channels cannot do without. Ratio = baseline seconds ÷ engine seconds.
 * Rounds alternate engine and baseline.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { limits, openStore } from '../../engine/index';
import { emit, median, now, progress, sig } from '../common';
import type { Options } from './shared';

export async function channelsPhase(o: Options): Promise<void> {
  const dir = path.join(o.dir, 'channels');
  const t0 = now();
  let store = await openStore(dir);
  for (let t = 0; t < o.manyTopics; t++) {
    const name = `topic-${String(t).padStart(4, '0')}`;
    await store.createTopic(name, { channels: o.manyChannels });
    await Promise.all(
      Array.from({ length: o.manyChannels }, (_, c) =>
        store.append(name, c, [{ key: `k${c}`, body: `hello ${t}/${c} a` }, { body: `hello ${t}/${c} b` }, { body: `hello ${t}/${c} c` }]),
      ),
    );
    if (t % 50 === 49) progress(`channels: ${(t + 1) * o.manyChannels} channels created`);
  }
  await store.close();
  const channelDirs = fs
    .readdirSync(path.join(dir, 'topics'))
    .flatMap((topic) => Array.from({ length: o.manyChannels }, (_, c) => path.join(dir, 'topics', topic, String(c))))
    .filter((d) => fs.existsSync(d));
  const checkpointBytes = fs.statSync(path.join(channelDirs[0]!, 'checkpoint.json')).size;
  progress(`channels: ${channelDirs.length} channels in ${((now() - t0) / 1000).toFixed(1)} s; timing ${o.rounds} rounds`);

  const rounds: Array<{ openS: number; closeS: number; baselineS: number }> = [];
  for (let r = 0; r < o.rounds; r++) {
    const engineFirst = r % 2 === 0;
    let baselineS = 0;
    if (!engineFirst) baselineS = await atomicWrites(channelDirs, checkpointBytes);
    const a = now();
    store = await openStore(dir);
    const b = now();
    await store.close();
    const c = now();
    if (engineFirst) baselineS = await atomicWrites(channelDirs, checkpointBytes);
    rounds.push({ openS: (b - a) / 1000, closeS: (c - b) / 1000, baselineS });
    progress(`channels: round ${r + 1}: open ${((b - a) / 1000).toFixed(2)} s, close ${((c - b) / 1000).toFixed(2)} s, baseline ${baselineS.toFixed(2)} s`);
  }
  emit({
    name: 'channels.open-close',
    channels: channelDirs.length,
    openS: rounds.map((x) => sig(x.openS, 3)),
    closeS: rounds.map((x) => sig(x.closeS, 3)),
    baselineS: rounds.map((x) => sig(x.baselineS, 3)),
    openRatio: sig(median(rounds.map((x) => x.baselineS / x.openS)), 3),
    closeRatio: sig(median(rounds.map((x) => x.baselineS / x.closeS)), 3),
    baseline: `one atomic ${checkpointBytes}-byte file write per channel folder (temp, fdatasync, rename, folder fsync), ${limits.openCloseChannelCountMax} at once`,
  });
  if (!o.keep) fs.rmSync(dir, { recursive: true, force: true });
}

/** The baseline: an atomic write of `bytes` bytes into every folder, a bounded number at once. Returns seconds. */
async function atomicWrites(dirs: string[], bytes: number): Promise<number> {
  const body = Buffer.alloc(bytes, 0x20);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < dirs.length) {
      const file = path.join(dirs[next++]!, 'baseline.json');
      const fd = await call<number>((cb) => fs.open(`${file}.tmp`, 'w', cb));
      await call<number>((cb) => fs.write(fd, body, 0, body.length, 0, (err, written) => cb(err, written)));
      await call((cb) => fs.fdatasync(fd, cb));
      await call((cb) => fs.close(fd, cb));
      await call((cb) => fs.rename(`${file}.tmp`, file, cb));
      const dfd = await call<number>((cb) => fs.open(path.dirname(file), 'r', cb));
      await call((cb) => fs.fsync(dfd, cb));
      await call((cb) => fs.close(dfd, cb));
    }
  };
  const t0 = now();
  await Promise.all(Array.from({ length: limits.openCloseChannelCountMax }, worker));
  const seconds = (now() - t0) / 1000;
  for (const d of dirs) fs.rmSync(path.join(d, 'baseline.json'), { force: true });
  return seconds;
}

function call<T = void>(start: (cb: (err: NodeJS.ErrnoException | null, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => start((err, value) => (err ? reject(err) : resolve(value as T))));
}
