/**
 * Phase 1 of bench/engine.ts: append throughput against fs.write + fdatasync of the same bytes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeBatch, lz4Codec, type MessageInput, type Store } from '../../engine/index';
import { BodySource, emit, formatBytes, latencySummary, median, now, progress, quiesceDisk, sig, type BodyKind, type Json } from '../common';
import { channelBytes, drive, freshStore, goal, messagePool, rawAppend, settle, type Options } from './shared';


export async function appendPhase(o: Options): Promise<void> {
  const root = path.join(o.dir, 'append');
  fs.mkdirSync(root, { recursive: true });
  const rawFile = path.join(root, 'raw.dat');
  const bodyKinds: BodyKind[] = ['random', 'text'];
  for (const bodyBytes of o.bodySizes) {
    for (const kind of bodyKinds) {
      const bodies = new BodySource(kind);
      for (const compression of [true, false]) {
        const codec = compression ? lz4Codec : null;
        const pool = messagePool(bodies, bodyBytes, o.batchMessages);
        // The baseline writes exactly what the engine stores per batch (compressed or not).
        const encoded = pool.batches.map((b) => encodeBatch(b, { codec }).batch);
        const batchBytes = encoded.reduce((n, b) => n + b.length, 0) / encoded.length;
        const rawRecordBytes = pool.batches[0]!.reduce((n, m) => n + (m.body as Uint8Array).length, 0);
        const label = `append ${bodyBytes} B ${kind} bodies, compression ${compression ? 'on' : 'off'}`;
        progress(`${label}: ${o.rounds} rounds × ${o.appendBatches} batches of ${formatBytes(batchBytes)}`);

        const engine = (inFlight: number): Promise<EngineRun> =>
          timedAppends(o, path.join(root, 'store'), compression, inFlight, (store, i) => store.append('bench', 0, pool.batches[i % pool.batches.length]!));
        // Warm-up (JIT, file system): not recorded.
        await rawAppend(rawFile, encoded, Math.min(20, o.appendBatches));
        await engine(1);
        const { raw, seq, par } = await alternatingRounds(o, rawFile, encoded, engine);
        const total = o.appendBatches * o.rounds;
        const rawSeconds = raw.reduce((a, b) => a + b, 0);
        const rawBatchesPerSec = total / rawSeconds;
        const line = (mode: 'sequential' | 'in-flight', runs: typeof seq, inFlight: number): Json => {
          const seconds = runs.reduce((a, r) => a + r.seconds, 0);
          const batchesPerSec = total / seconds;
          const storedPerBatch = runs.reduce((a, r) => a + r.storedBytes, 0) / total;
          const ratioRounds = runs.map((run, i) => raw[i]! / run.seconds);
          const ratio = median(ratioRounds);
          const out: Json = {
            name: 'append',
            api: 'store.append',
            bodyBytes,
            bodies: kind,
            compression,
            sync: 'batch',
            mode,
            inFlight,
            batchMessages: o.batchMessages,
            batches: total,
            msgPerSec: sig(batchesPerSec * o.batchMessages),
            payloadMBps: sig((batchesPerSec * rawRecordBytes) / 1e6),
            storedMBps: sig((batchesPerSec * storedPerBatch) / 1e6),
            storedBatchBytes: Math.round(storedPerBatch),
            raw_batchBytes: Math.round(batchBytes),
            raw_batchesPerSec: sig(rawBatchesPerSec),
            raw_MBps: sig((rawBatchesPerSec * batchBytes) / 1e6),
            ratio_vs_raw: sig(ratio, 3),
            ratio_rounds: ratioRounds.map((r) => sig(r, 3)),
            ...latencySummary(runs.flatMap((run) => run.latencies), 'ms'),
          };
          if (mode === 'sequential' && kind === 'random' && compression) {
            Object.assign(out, goal(`append ${bodyBytes} B, store.append (the engine encodes), sequential, ratio vs raw`, ratio, '>= 0.7', ratio >= 0.7));
          }
          return out;
        };
        emit(line('sequential', seq, 1));
        emit(line('in-flight', par, o.inFlight));
        if (kind === 'random' && compression) await copyFloorLine(o, rawFile, pool.batches, encoded, bodyBytes);
      }
    }
    await appendBatchLines(o, root, rawFile, bodyBytes);
  }
  fs.rmSync(root, { recursive: true, force: true });
}

/**
 * The ceiling of any store.append that encodes before it writes (one in flight): raw, but
 * each batch's bytes are first made by copying its messages' bodies into one reused buffer
 * at their places in the batch — no headers, varints, ids, checksum or index, only the one
 * copy of each body every encoder makes. Alternating rounds against plain raw; the ratio is
 * what that copy alone leaves of raw's rate on this machine (the goal line's ratio cannot
 * pass it by more than noise).
 */
async function copyFloorLine(o: Options, rawFile: string, batches: MessageInput[][], encoded: Uint8Array[], bodyBytes: number): Promise<void> {
  const scratch = new Uint8Array(Math.max(...encoded.map((b) => b.length)));
  const copyThen = (i: number): Uint8Array => {
    const messages = batches[i % batches.length]!;
    const size = encoded[i % encoded.length]!.length;
    const step = Math.floor((size - 64) / messages.length);
    for (let m = 0; m < messages.length; m++) scratch.set(messages[m]!.body as Uint8Array, 64 + m * step);
    return scratch.subarray(0, size);
  };
  const raw: number[] = [];
  const floor: number[] = [];
  for (let r = 0; r < o.rounds; r++) {
    const steps = [async () => raw.push(await rawAppend(rawFile, encoded, o.appendBatches)), async () => floor.push(await rawAppend(rawFile, encoded, o.appendBatches, copyThen))];
    if (r % 2 === 1) steps.reverse();
    for (const step of steps) {
      quiet();
      await step();
    }
  }
  const ratioRounds = floor.map((seconds, i) => raw[i]! / seconds);
  emit({
    name: 'append',
    api: 'floor: copy the bodies, then fs.write + fdatasync',
    bodyBytes,
    bodies: 'random',
    mode: 'sequential',
    inFlight: 1,
    batchMessages: batches[0]!.length,
    batches: o.appendBatches * o.rounds,
    raw_batchesPerSec: sig((o.appendBatches * o.rounds) / raw.reduce((a, b) => a + b, 0)),
    floor_batchesPerSec: sig((o.appendBatches * o.rounds) / floor.reduce((a, b) => a + b, 0)),
    ratio_vs_raw: sig(median(ratioRounds), 3),
    ratio_rounds: ratioRounds.map((x) => sig(x, 3)),
  });
}

/**
 * store.appendBatch of batches encoded beforehand (what the server does with an SDK-built
 * batch): checksum check, patch, index, write, fdatasync — no encoding. Splits the append
 * cost into encoding and storing. Random bodies, lz4 on (it never wins on them).
 */
async function appendBatchLines(o: Options, root: string, rawFile: string, bodyBytes: number): Promise<void> {
  const pool = messagePool(new BodySource('random'), bodyBytes, o.batchMessages);
  // appendBatch patches a batch in place; a pool twice the window keeps in-flight batches apart.
  const poolSize = Math.max(16, 2 * o.inFlight);
  const encoded = Array.from({ length: poolSize }, (_, i) => encodeBatch(pool.batches[i % pool.batches.length]!, { codec: lz4Codec }).batch);
  const batchBytes = encoded.reduce((n, b) => n + b.length, 0) / encoded.length;
  progress(`appendBatch ${bodyBytes} B random bodies: ${o.rounds} rounds × ${o.appendBatches} batches`);
  const engine = (inFlight: number): Promise<EngineRun> =>
    timedAppends(o, path.join(root, 'store'), true, inFlight, (store, i) => store.appendBatch('bench', 0, encoded[i % encoded.length]!));
  await engine(1);
  const { raw, seq, par } = await alternatingRounds(o, rawFile, encoded, engine);
  const total = o.appendBatches * o.rounds;
  const rawBatchesPerSec = total / raw.reduce((a, b) => a + b, 0);
  for (const [mode, runs, inFlight] of [
    ['sequential', seq, 1],
    ['in-flight', par, o.inFlight],
  ] as const) {
    const batchesPerSec = total / runs.reduce((a, r) => a + r.seconds, 0);
    const ratio = median(runs.map((run, i) => raw[i]! / run.seconds));
    const met = mode === 'sequential' ? goal(`append ${bodyBytes} B, store.appendBatch (SDK-encoded: the broker's produce path), sequential, ratio vs raw`, ratio, '>= 0.7', ratio >= 0.7) : {};
    emit({
      name: 'append',
      api: 'store.appendBatch (pre-encoded)',
      bodyBytes,
      bodies: 'random',
      compression: true,
      sync: 'batch',
      mode,
      inFlight,
      batchMessages: o.batchMessages,
      batches: total,
      msgPerSec: sig(batchesPerSec * o.batchMessages),
      storedMBps: sig((batchesPerSec * batchBytes) / 1e6),
      storedBatchBytes: Math.round(batchBytes),
      raw_batchesPerSec: sig(rawBatchesPerSec),
      raw_MBps: sig((rawBatchesPerSec * batchBytes) / 1e6),
      ratio_vs_raw: sig(ratio, 3),
      ratio_rounds: runs.map((run, i) => sig(raw[i]! / run.seconds, 3)),
      ...latencySummary(runs.flatMap((run) => run.latencies), 'ms'),
      ...met,
    });
  }
}

interface EngineRun {
  seconds: number;
  latencies: number[];
  storedBytes: number;
}

/** `o.appendBatches` appends with `inFlight` in flight into a fresh one-channel store, timed; the store is removed after. */
async function timedAppends(o: Options, storeDir: string, compression: boolean, inFlight: number, append: (store: Store, i: number) => Promise<unknown>): Promise<EngineRun> {
  const store = await freshStore(storeDir, compression, 'bench');
  try {
    const t0 = now();
    const latencies = await drive(o.appendBatches, inFlight, (i) => append(store, i));
    const seconds = (now() - t0) / 1000;
    return { seconds, latencies, storedBytes: channelBytes(store, 'bench') };
  } finally {
    await store.close();
    fs.rmSync(storeDir, { recursive: true, force: true });
  }
}

/** `o.rounds` rounds of raw, engine with one in flight and with `o.inFlight`, the order reversed every other round. */
/**
 * Before every timed pass, engine and baseline alike: a full GC, and `sync`, so that the pass
 * does not start while the kernel still writes back or frees (discards, on this disk) the
 * tens of MB the pass before it wrote and deleted. Without it the first appends of a pass
 * took 5-15 ms instead of 0.6 (session 18, a /tmp probe).
 */
function quiet(): void {
  settle();
  quiesceDisk();
}

async function alternatingRounds(o: Options, rawFile: string, encoded: Uint8Array[], engine: (inFlight: number) => Promise<EngineRun>): Promise<{ raw: number[]; seq: EngineRun[]; par: EngineRun[] }> {
  const raw: number[] = [];
  const seq: EngineRun[] = [];
  const par: EngineRun[] = [];
  for (let r = 0; r < o.rounds; r++) {
    const steps = [async () => raw.push(await rawAppend(rawFile, encoded, o.appendBatches)), async () => seq.push(await engine(1)), async () => par.push(await engine(o.inFlight))];
    if (r % 2 === 1) steps.reverse();
    for (const step of steps) {
      quiet();
      await step();
    }
  }
  return { raw, seq, par };
}
