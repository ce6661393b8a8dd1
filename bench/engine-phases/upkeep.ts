/**
 * Phase "upkeep" of bench/engine.ts: how long the broker's event loop stalls while the engine
 * does its upkeep — every client of the broker waits that long. A ticker (setTimeout 1 ms)
 * records the gaps between its ticks; a figure is the longest gap, and the sum of the time
 * lost to gaps past 2 ms, during:
 *
 *   rolls      sequential appends of 1,000 × 100 B messages through rolls (each roll seals the
 *              old segment: index files hashed and written, a checkpoint)
 *              baseline: the same bytes written with fs.write + fdatasync per batch
 *   retention  one store.applyRetention pass that deletes 64 MiB segments (1 KiB messages)
 *              baseline: fs.promises.unlink of as many files of the same size
 *   delete     store.deleteTopic of a topic of 64 MiB segments
 *              baseline: fs.promises.rm of a folder of as many files of the same size
 *
 * Rounds alternate engine and baseline; a ratio is the median over rounds of (the engine's
 * longest gap ÷ the baseline's). A ratio near 1 means the upkeep costs the event loop no more
 * than the file work a broker cannot avoid. The retention line also says how long the
 * synchronous part of applyRetention took (from the call to its return).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { limits, openStore, type MessageInput, type Store } from '../../engine/index';
import { BodySource, emit, formatBytes, median, now, progress, sig, type Json } from '../common';
import { datasync, settle, writeAt, type Options } from './shared';

interface Gaps {
  longestMs: number;
  /** Time lost to gaps longer than 2 ms (each counted past 1 ms, the ticker's own period). */
  lostMs: number;
}

/** Runs `work` under a 1 ms ticker and says the gaps between its ticks. */
async function underTicker(work: () => Promise<void>): Promise<Gaps> {
  let last = now();
  let longest = 0;
  let lost = 0;
  const ticker = setInterval(() => {
    const t = now();
    const gap = t - last;
    last = t;
    longest = Math.max(longest, gap);
    if (gap > 2) lost += gap - 1;
  }, 1);
  try {
    await work();
    await new Promise((resolve) => setTimeout(resolve, 2)); // a tick after the work: a stall at its very end counts
  } finally {
    clearInterval(ticker);
  }
  return { longestMs: longest, lostMs: lost };
}

function batchesOf(bodies: BodySource, bodyBytes: number, count: number, messages: number): MessageInput[][] {
  return Array.from({ length: count }, () => Array.from({ length: messages }, () => ({ body: bodies.body(bodyBytes) })));
}

async function freshStore(dir: string): Promise<Store> {
  fs.rmSync(dir, { recursive: true, force: true });
  const store = await openStore(dir, { sync: 'batch' });
  await store.createTopic('bench', { channels: 1 });
  return store;
}

/** Appends `count` batches one at a time. */
async function appendAll(store: Store, batches: MessageInput[][], count: number): Promise<void> {
  for (let i = 0; i < count; i++) await store.append('bench', 0, batches[i % batches.length]!);
}

/** The rolls figure's baseline: fs.write + fdatasync of `bytes` per batch, `count` times, into `fd`. */
async function rawAppends(fd: number, bytes: number, count: number): Promise<void> {
  const buf = Buffer.alloc(bytes, 7);
  for (let i = 0, position = 0; i < count; i++, position += bytes) {
    await writeAt(fd, buf, position);
    await datasync(fd);
  }
}

/** Files of `bytes` each in `dir`, written and synced (what a baseline then deletes). */
function filesOf(dir: string, count: number, bytes: number): string[] {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const chunk = Buffer.alloc(1024 * 1024, 3);
  return Array.from({ length: count }, (_, i) => {
    const file = path.join(dir, `${i}.dat`);
    const fd = fs.openSync(file, 'w');
    for (let at = 0; at < bytes; at += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - at), at);
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
    return file;
  });
}

interface Figure {
  engine: Gaps[];
  baseline: Gaps[];
}

function line(name: string, what: string, baseline: string, f: Figure, extra: Json = {}): Json {
  const ms = (gaps: Gaps[], key: keyof Gaps): number[] => gaps.map((g) => sig(g[key], 3));
  return {
    name: 'upkeep-stall',
    figure: name,
    what,
    baseline,
    rounds: f.engine.length,
    longest_ms: ms(f.engine, 'longestMs'),
    lost_ms: ms(f.engine, 'lostMs'),
    baseline_longest_ms: ms(f.baseline, 'longestMs'),
    baseline_lost_ms: ms(f.baseline, 'lostMs'),
    ratio_longest_vs_baseline: sig(median(f.engine.map((g, i) => g.longestMs / Math.max(f.baseline[i]!.longestMs, 1))), 3),
    ...extra,
  };
}

export async function upkeepPhase(o: Options): Promise<void> {
  const root = path.join(o.dir, 'upkeep');
  fs.mkdirSync(root, { recursive: true });
  const storeDir = path.join(root, 'store');
  const bodies = new BodySource('random');

  // Rolls: 100 B messages; a segment rolls when its key index would pass its entries.
  const small = batchesOf(bodies, 100, 16, o.batchMessages);
  const perSegment = Math.floor(limits.keyIndexEntryCountMax / 3 / o.batchMessages);
  const rollAppends = o.quick ? perSegment + 20 : 2 * perSegment + 20;
  progress(`upkeep: ${o.rounds} rounds of ${rollAppends} sequential appends of ${o.batchMessages} × 100 B (${Math.floor(rollAppends / perSegment)} rolls), under a 1 ms ticker`);
  const rolls: Figure = { engine: [], baseline: [] };
  let batchBytes = 0;
  for (let round = 0; round < o.rounds; round++) {
    const engineSide = async (): Promise<void> => {
      const store = await freshStore(storeDir);
      await settle();
      rolls.engine.push(await underTicker(() => appendAll(store, small, rollAppends)));
      batchBytes = store.describeTopic('bench').channelInfo[0]!.bytes / rollAppends;
      await store.close();
      fs.rmSync(storeDir, { recursive: true, force: true });
    };
    const rawSide = async (): Promise<void> => {
      const file = path.join(root, 'raw.dat');
      const fd = fs.openSync(file, 'w');
      try {
        await settle();
        rolls.baseline.push(await underTicker(() => rawAppends(fd, Math.round(batchBytes || 123_000), rollAppends)));
      } finally {
        fs.closeSync(fd); // (not timed: the close of a removed file frees its blocks on the spot)
        fs.rmSync(file, { force: true });
      }
    };
    for (const side of round % 2 === 0 ? [engineSide, rawSide] : [rawSide, engineSide]) await side();
  }
  emit(line('rolls', `${rollAppends} sequential store.append of ${o.batchMessages} × 100 B through rolls`, 'fs.write + fdatasync of the same bytes per batch', rolls, { batchBytes: Math.round(batchBytes) }));

  // Retention and delete: 1 KiB messages filling segments of the default size.
  const segmentBytes = o.quick ? 16 * 1024 * 1024 : limits.segmentBytesDefault;
  const segmentsToDelete = o.quick ? 2 : 4;
  const large = batchesOf(bodies, 1024, 8, o.batchMessages);
  progress(`upkeep: ${o.rounds} rounds of a retention pass deleting ${segmentsToDelete} segments of ${formatBytes(segmentBytes)}, then a topic delete`);
  const retention: Figure = { engine: [], baseline: [] };
  const deletion: Figure = { engine: [], baseline: [] };
  const syncPartMs: number[] = [];
  const removedCounts: number[] = [];
  const hour = 3_600_000;
  const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
  /** Appends to `topic` until it has `segments` segments, the last one holding at least one batch. */
  const fill = async (store: Store, topic: string, segments: number): Promise<void> => {
    for (let i = 0; store.describeTopic(topic).channelInfo[0]!.segments < segments; i++) await store.append(topic, 0, large[i % large.length]!);
  };
  for (let round = 0; round < o.rounds; round++) {
    const engineSide = async (): Promise<void> => {
      fs.rmSync(storeDir, { recursive: true, force: true });
      const store = await openStore(storeDir, { sync: 'batch', segmentBytes });
      try {
        // 'r': retention by age (an hour, so the store's own 30 s sweep deletes nothing here).
        // Its sealed segments were all written before `cut`, the active one's last batches after.
        await store.createTopic('r', { channels: 1, retentionMs: hour });
        await fill(store, 'r', segmentsToDelete + 1);
        await sleep(3);
        const cut = Date.now();
        await sleep(3);
        for (let i = 0; i < 4; i++) await store.append('r', 0, large[i]!);
        await store.settled();
        await settle();
        retention.engine.push(
          await underTicker(async () => {
            const t0 = now();
            const pass = store.applyRetention(cut + hour);
            syncPartMs.push(sig(now() - t0, 3));
            removedCounts.push(await pass);
          }),
        );
        await store.createTopic('d', { channels: 1 });
        await fill(store, 'd', segmentsToDelete + 1);
        await store.settled();
        await settle();
        deletion.engine.push(await underTicker(() => store.deleteTopic('d')));
      } finally {
        await store.close();
        fs.rmSync(storeDir, { recursive: true, force: true });
      }
    };
    const rawSide = async (): Promise<void> => {
      const files = filesOf(path.join(root, 'files'), segmentsToDelete, segmentBytes);
      await settle();
      retention.baseline.push(await underTicker(async () => void (await Promise.all(files.map((f) => fs.promises.unlink(f))))));
      filesOf(path.join(root, 'files'), segmentsToDelete + 1, segmentBytes);
      await settle();
      deletion.baseline.push(await underTicker(() => fs.promises.rm(path.join(root, 'files'), { recursive: true, force: true })));
    };
    for (const side of round % 2 === 0 ? [engineSide, rawSide] : [rawSide, engineSide]) await side();
  }
  emit(
    line('retention', `store.applyRetention deleting ${segmentsToDelete} segments of ${formatBytes(segmentBytes)}`, 'fs.promises.unlink of as many files of that size', retention, {
      removed: removedCounts,
      applyRetention_sync_ms: syncPartMs,
    }),
  );
  emit(line('delete', `store.deleteTopic of ${segmentsToDelete + 1} segments of ${formatBytes(segmentBytes)} and their index files`, 'fs.promises.rm of a folder of as many files of that size', deletion));
  fs.rmSync(root, { recursive: true, force: true });
}
