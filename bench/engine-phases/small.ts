/**
 * Phase "small" of bench/engine.ts: one-message batches (100 B body) appended one at a time
 * in sync "batch" — the latency path, each acknowledged after its O_DSYNC write — against two
 * plain-file baselines of the same bytes, in the same run, rounds alternating:
 *
 *   grow    O_DSYNC writes that make the file longer: what every small append did before
 *           the zeroed tail (each write also commits a new file size to the journal)
 *   zeroed  O_DSYNC writes into a file written with zeros beforehand: what the zeroed tail
 *           gives (engine/FORMAT.md)
 *
 * Per side: appends/s, latency p50/p99/max in µs, and CPU µs per append (user + system of
 * the whole process, thread pool included). The engine's ratios are to `grow` (the cost it
 * would pay without the zeroed tail) and to `zeroed` (the floor it can reach).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeBatch, openStore } from '../../engine/index';
import { BodySource, emit, latencySummary, median, now, progress, sig, type Json } from '../common';
import { settle, writeAt, type Options } from './shared';

interface Side {
  seconds: number;
  latencyMs: number[];
  cpuUs: number;
}

async function timed(count: number, op: (i: number) => Promise<unknown>): Promise<Side> {
  await settle();
  const latencyMs: number[] = new Array<number>(count);
  const cpu0 = process.cpuUsage();
  const t0 = now();
  for (let i = 0; i < count; i++) {
    const a = now();
    await op(i);
    latencyMs[i] = now() - a;
  }
  const seconds = (now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { seconds, latencyMs, cpuUs: (cpu.user + cpu.system) / count };
}

/** O_DSYNC writes of `batches` back to back into `file`: made longer by each, or zeroed beforehand. */
async function raw(file: string, batches: Uint8Array[], count: number, zeroed: boolean): Promise<Side> {
  fs.rmSync(file, { force: true });
  const bytes = batches.reduce((n, b) => n + b.length, 0) * Math.ceil(count / batches.length);
  if (zeroed) {
    const fd = fs.openSync(file, 'w');
    const zeros = Buffer.alloc(1024 * 1024);
    for (let at = 0; at < bytes; at += zeros.length) fs.writeSync(fd, zeros, 0, zeros.length, at);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_DSYNC);
  try {
    let position = 0;
    return await timed(count, async (i) => {
      const batch = batches[i % batches.length]!;
      await writeAt(fd, batch, position);
      position += batch.length;
    });
  } finally {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  }
}

async function engine(dir: string, batches: Uint8Array[], count: number): Promise<Side> {
  fs.rmSync(dir, { recursive: true, force: true });
  const store = await openStore(dir, { sync: 'batch' });
  try {
    await store.createTopic('bench', { channels: 1 });
    return await timed(count, (i) => store.appendBatch('bench', 0, batches[i % batches.length]!));
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export async function smallPhase(o: Options): Promise<void> {
  const root = path.join(o.dir, 'small');
  fs.mkdirSync(root, { recursive: true });
  const bodies = new BodySource('random');
  const batches = Array.from({ length: 64 }, () => encodeBatch([{ body: bodies.body(100) }], { codec: null }).batch);
  const count = o.smallAppends;
  progress(`small appends: ${o.rounds} rounds × ${count} one-message batches of ${batches[0]!.length} B per side, one at a time, sync "batch"`);
  // Warm-up (JIT, file system): not recorded.
  await raw(path.join(root, 'raw.dat'), batches, Math.min(200, count), false);
  await engine(path.join(root, 'store'), batches, Math.min(200, count));
  const runs: Record<'engine' | 'grow' | 'zeroed', Side[]> = { engine: [], grow: [], zeroed: [] };
  for (let round = 0; round < o.rounds; round++) {
    const order: Array<keyof typeof runs> = round % 2 === 0 ? ['grow', 'zeroed', 'engine'] : ['engine', 'zeroed', 'grow'];
    for (const side of order) {
      runs[side].push(side === 'engine' ? await engine(path.join(root, 'store'), batches, count) : await raw(path.join(root, 'raw.dat'), batches, count, side === 'zeroed'));
    }
  }
  const summary = (side: keyof typeof runs): Json => {
    const sides = runs[side];
    const seconds = sides.reduce((n, s) => n + s.seconds, 0);
    return {
      appendsPerSec: sig((count * sides.length) / seconds),
      cpuUsPerAppend: sig(median(sides.map((s) => s.cpuUs)), 3),
      ...latencySummary(sides.flatMap((s) => s.latencyMs), 'us'),
    };
  };
  const ratio = (a: keyof typeof runs, b: keyof typeof runs): number => sig(median(runs[a].map((s, i) => runs[b][i]!.seconds / s.seconds)), 3);
  const toGrow = ratio('engine', 'grow');
  emit({
    name: 'small-appends',
    api: 'store.appendBatch',
    sync: 'batch',
    batchBytes: batches[0]!.length,
    appendsPerRound: count,
    rounds: o.rounds,
    engine: summary('engine'),
    raw_grow: summary('grow'),
    raw_zeroed: summary('zeroed'),
    ratio_vs_grow: toGrow,
    ratio_vs_zeroed: ratio('engine', 'zeroed'),
    zeroed_vs_grow: ratio('zeroed', 'grow'),
  });
  fs.rmSync(root, { recursive: true, force: true });
}
