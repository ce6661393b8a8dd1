/**
 * What the phases of bench/engine.ts share: the options, the plain-file baselines, the
 * drivers that keep appends in flight, the diagnostic counter of file reads, and the goals.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { openStore, type MessageInput, type Store } from '../../engine/index';
import { BodySource, formatBytes, now, progress, sig } from '../common';
export { settle } from '../common';

export type Phase = 'append' | 'read' | 'lookup' | 'open' | 'channels' | 'small' | 'upkeep';
export const phases: Phase[] = ['append', 'read', 'lookup', 'open', 'channels', 'small', 'upkeep'];

export interface Options {
  quick: boolean;
  only: Set<Phase>;
  dir: string;
  keep: boolean;
  rounds: number;
  appendBatches: number;
  batchMessages: number;
  inFlight: number;
  bodySizes: number[];
  readBytes: number;
  readChunkBytes: number;
  decodeBytes: number;
  lookupMessages: number;
  lookupSamples: number;
  openBytes: number;
  openBodyBytes: number;
  /** The channels phase: topics, and channels per topic. */
  manyTopics: number;
  manyChannels: number;
  /** The small phase: one-message appends per round and side. */
  smallAppends: number;
  cold: boolean;
}


// ------------------------------------------------------------------ plain-file baselines

export function writeAt(fd: number, buf: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      fs.write(fd, buf, done, buf.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (done + n >= buf.length) return resolve();
        step(done + n);
      });
    };
    step(0);
  });
}

export function datasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

export function readAt(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, 0, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

/**
 * The append baseline: each batch written with fs.write and fdatasynced, one at a time.
 * `before(i)`, when given, makes the bytes of write i (timed with it): the copy floor.
 */
export async function rawAppend(file: string, batches: Uint8Array[], count: number, before?: (i: number) => Uint8Array): Promise<number> {
  const fd = fs.openSync(file, 'w');
  try {
    let position = 0;
    const t0 = now();
    for (let i = 0; i < count; i++) {
      const batch = before ? before(i) : batches[i % batches.length]!;
      await writeAt(fd, batch, position);
      position += batch.length;
      await datasync(fd);
    }
    return (now() - t0) / 1000;
  } finally {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  }
}

/**
 * The read baseline: every file read front to back with fs.read, into one reused buffer
 * (`fresh` false: the floor) or into a new Buffer.allocUnsafe per chunk (`fresh` true: what
 * any API that hands the caller a buffer it keeps pays in page faults).
 */
export async function rawReadFiles(files: string[], chunkBytes: number, fresh: boolean): Promise<{ seconds: number; bytes: number }> {
  let buf = Buffer.allocUnsafe(chunkBytes);
  let bytes = 0;
  const t0 = now();
  for (const file of files) {
    const fd = fs.openSync(file, 'r');
    try {
      let position = 0;
      for (;;) {
        if (fresh) buf = Buffer.allocUnsafe(chunkBytes);
        const n = await readAt(fd, buf, chunkBytes, position);
        if (n === 0) break;
        position += n;
      }
      bytes += position;
    } finally {
      fs.closeSync(fd);
    }
  }
  return { seconds: (now() - t0) / 1000, bytes };
}

// ------------------------------------------------------------------ engine drivers

/** Runs `op(i)` for i in [0, count) with at most `inFlight` running; returns each one's latency in ms. */
export async function drive(count: number, inFlight: number, op: (i: number) => Promise<unknown>): Promise<number[]> {
  const latencies: number[] = new Array(count);
  if (inFlight <= 1) {
    for (let i = 0; i < count; i++) {
      const t = now();
      await op(i);
      latencies[i] = now() - t;
    }
    return latencies;
  }
  await new Promise<void>((resolve, reject) => {
    let issued = 0;
    let done = 0;
    let failed = false;
    const next = (): void => {
      while (!failed && issued < count && issued - done < inFlight) {
        const i = issued++;
        const t = now();
        op(i).then(
          () => {
            latencies[i] = now() - t;
            if (++done === count) resolve();
            else next();
          },
          (err: unknown) => {
            failed = true;
            reject(err);
          },
        );
      }
    };
    next();
  });
  return latencies;
}

export interface MessagePool {
  batches: MessageInput[][];
  bodyBytes: number;
}

export function messagePool(bodies: BodySource, bodyBytes: number, batchMessages: number, poolBatches = 16): MessagePool {
  const batches: MessageInput[][] = [];
  for (let b = 0; b < poolBatches; b++) {
    const batch: MessageInput[] = new Array(batchMessages);
    for (let m = 0; m < batchMessages; m++) batch[m] = { key: `user-${crypto.randomInt(1_000_000)}`, body: bodies.body(bodyBytes) };
    batches.push(batch);
  }
  return { batches, bodyBytes };
}

export async function freshStore(dir: string, compression: boolean, topic: string): Promise<Store> {
  fs.rmSync(dir, { recursive: true, force: true });
  const store = await openStore(dir, { compression });
  await store.createTopic(topic, { channels: 1 });
  return store;
}

export function channelBytes(store: Store, topic: string): number {
  return store.describeTopic(topic).channelInfo[0]!.bytes;
}

/**
 * Appends batches with `inFlight` in flight until the channel holds `targetBytes` of log
 * (or `maxBatches` batches). `batchFor(i)` makes batch i; `onResult` sees each result.
 */
export async function fill(
  store: Store,
  topic: string,
  targetBytes: number,
  maxBatches: number,
  inFlight: number,
  batchFor: (i: number) => MessageInput[],
  onResult?: (i: number, msgIds: string[]) => void,
): Promise<{ seconds: number; batches: number; messages: number }> {
  const t0 = now();
  let issued = 0;
  let done = 0;
  let messages = 0;
  let reached = false;
  let lastReport = now();
  await new Promise<void>((resolve, reject) => {
    let failed = false;
    const next = (): void => {
      while (!failed && !reached && issued < maxBatches && issued - done < inFlight) {
        const i = issued++;
        const batch = batchFor(i);
        store.append(topic, 0, batch).then(
          (result) => {
            done++;
            messages += batch.length;
            onResult?.(i, result.msgIds);
            if (!reached && (done >= maxBatches || channelBytes(store, topic) >= targetBytes)) reached = true;
            if (now() - lastReport > 10_000) {
              lastReport = now();
              progress(`  filled ${formatBytes(channelBytes(store, topic))} (${messages} messages)`);
            }
            if (done === issued && (reached || issued >= maxBatches)) resolve();
            else next();
          },
          (err: unknown) => {
            failed = true;
            reject(err);
          },
        );
      }
    };
    next();
  });
  return { seconds: (now() - t0) / 1000, batches: done, messages };
}

// ------------------------------------------------------------------ goals

export interface Goal {
  goal: string;
  value: number;
  target: string;
  met: boolean;
}
export const goals: Goal[] = [];

export function goal(text: string, value: number, target: string, met: boolean): { goal: string; met: boolean } {
  goals.push({ goal: text, value: sig(value, 3), target, met });
  return { goal: target, met };
}

/**
 * Counts the calls and bytes the engine asks of fs.read (async) and fs.readSync while `run`
 * runs — an untimed diagnostic pass, so the wrapper never sits on a timed path.
 */
export async function countFsReads<T>(run: () => Promise<T>): Promise<{ result: T; reads: number; bytes: number; syncReads: number; syncBytes: number }> {
  const mutable = require('node:fs') as { read: (...args: unknown[]) => void; readSync: (...args: unknown[]) => number };
  const { read, readSync } = mutable;
  const counts = { reads: 0, bytes: 0, syncReads: 0, syncBytes: 0 };
  mutable.read = (...args: unknown[]): void => {
    counts.reads++;
    if (typeof args[3] === 'number') counts.bytes += args[3];
    read(...args);
  };
  mutable.readSync = (...args: unknown[]): number => {
    counts.syncReads++;
    if (typeof args[3] === 'number') counts.syncBytes += args[3];
    return readSync(...args);
  };
  try {
    return { result: await run(), ...counts };
  } finally {
    mutable.read = read;
    mutable.readSync = readSync;
  }
}
