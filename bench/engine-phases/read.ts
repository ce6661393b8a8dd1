/**
 * Phase 2 of bench/engine.ts: reads from offset 0 against fs.read of the same segment files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { limits, type Store } from '../../engine/index';
import { BodySource, dropCaches, emit, formatBytes, median, now, progress, segmentFiles, sig } from '../common';
import { channelBytes, countFsReads, fill, freshStore, goal, messagePool, rawReadFiles, settle, type Options } from './shared';


async function readBatchesAll(store: Store, topic: string, maxBytes: number): Promise<{ seconds: number; bytes: number; calls: number }> {
  const { logStartOffset, highWatermark } = store.channelState(topic, 0);
  let offset = logStartOffset;
  let bytes = 0;
  let calls = 0;
  // One buffer reused for every call, as the raw baseline does and as a broker's push path
  // can (it copies each chunk into a frame before the next read).
  const buffer = Buffer.allocUnsafe(Math.max(maxBytes, limits.batchBytesMax)); // room for one whole batch larger than maxBytes
  const t0 = now();
  while (offset < highWatermark) {
    const chunk = await store.readBatches(topic, 0, { offset, maxBytes, buffer });
    if (chunk.batchCount === 0) throw new Error(`readBatches returned nothing at offset ${offset} (high watermark ${highWatermark})`);
    bytes += chunk.bytes.length;
    offset = chunk.nextOffset;
    calls++;
  }
  return { seconds: (now() - t0) / 1000, bytes, calls };
}

async function readAll(store: Store, topic: string, maxBytes: number, maxMessages: number | undefined, untilOffset: number): Promise<{ seconds: number; messages: number; calls: number }> {
  const { logStartOffset } = store.channelState(topic, 0);
  let offset = logStartOffset;
  let messages = 0;
  let calls = 0;
  const t0 = now();
  while (offset < untilOffset) {
    const batch = await store.read(topic, 0, maxMessages === undefined ? { offset, maxBytes } : { offset, maxBytes, maxMessages });
    if (batch.length === 0) throw new Error(`read returned nothing at offset ${offset}`);
    messages += batch.length;
    offset = batch[batch.length - 1]!.offset + 1;
    calls++;
  }
  return { seconds: (now() - t0) / 1000, messages, calls };
}

export async function readPhase(o: Options, cold: boolean): Promise<void> {
  for (const bodyBytes of o.bodySizes) {
    const dir = path.join(o.dir, `read-${bodyBytes}`);
    const topic = 'read';
    const store = await freshStore(dir, true, topic);
    try {
      const pool = messagePool(new BodySource('random'), bodyBytes, o.batchMessages);
      progress(`read ${bodyBytes} B: filling ${formatBytes(o.readBytes)}`);
      const filled = await fill(store, topic, o.readBytes, Number.MAX_SAFE_INTEGER, o.inFlight, (i) => pool.batches[i % pool.batches.length]!);
      const channelDir = path.join(dir, 'topics', topic, '0');
      const files = segmentFiles(channelDir).map((f) => f.file);
      const logBytes = channelBytes(store, topic);
      const { highWatermark } = store.channelState(topic, 0);
      // store.read is measured over the first decodeBytes of the channel (all of it by default).
      const decodeUntil = Math.min(highWatermark, Math.ceil((highWatermark * o.decodeBytes) / logBytes));
      const decodedBytes = Math.min(logBytes, o.decodeBytes);
      progress(`read ${bodyBytes} B: ${formatBytes(logBytes)} in ${files.length} segments, ${highWatermark} messages (filled at ${sig(filled.messages / filled.seconds, 3)} msg/s)`);

      // The first pass over the channel is apart: it is the first use of every sealed segment,
      // which loads (and checks) that segment's index files. It doubles as a diagnostic: how
      // many bytes the engine reads from the files per byte it returns.
      settle();
      const diag = await countFsReads(() => readBatchesAll(store, topic, o.readChunkBytes));
      if (diag.result.bytes !== logBytes) throw new Error(`readBatches returned ${diag.result.bytes} bytes, the log has ${logBytes}`);
      const diagBytes = Math.min(logBytes, 64 * 1024 ** 2);
      const diagUntil = Math.ceil((highWatermark * diagBytes) / logBytes);
      const diagRead = await countFsReads(() => readAll(store, topic, o.readChunkBytes, limits.readMessagesMax, diagUntil));
      const diagReadDefault = await countFsReads(() => readAll(store, topic, o.readChunkBytes, undefined, diagUntil));

      const measure = async (cache: 'warm' | 'cold'): Promise<void> => {
        const rounds = o.rounds;
        const raw: number[] = [];
        const rawFresh: number[] = [];
        const batches: number[] = [];
        const decoded: number[] = [];
        const decodedDefault: number[] = [];
        let calls = 0;
        let messages = 0;
        let messagesDefault = 0;
        const prep = (): void => {
          if (cache === 'cold') {
            const why = dropCaches();
            if (why) throw new Error(`drop_caches failed: ${why}`);
          }
        };
        // Two blocks of rounds: the I/O-bound passes (raw, raw fresh, readBatches), then the
        // CPU-bound decoding passes, so the garbage of decoding is not charged to the others.
        for (let r = 0; r < rounds; r++) {
          const steps = [
            async () => {
              prep();
              const run = await rawReadFiles(files, o.readChunkBytes, false);
              if (run.bytes !== logBytes) throw new Error(`raw read ${run.bytes} bytes, the log has ${logBytes}`);
              raw.push(run.seconds);
            },
            async () => {
              prep();
              rawFresh.push((await rawReadFiles(files, o.readChunkBytes, true)).seconds);
            },
            async () => {
              prep();
              const run = await readBatchesAll(store, topic, o.readChunkBytes);
              if (run.bytes !== logBytes) throw new Error(`readBatches returned ${run.bytes} bytes, the log has ${logBytes}`);
              batches.push(run.seconds);
              calls = run.calls;
            },
          ];
          if (r % 2 === 1) steps.reverse();
          for (const step of steps) {
            settle();
            await step();
          }
        }
        for (let r = 0; r < rounds; r++) {
          const steps = [
            async () => {
              prep();
              const run = await readAll(store, topic, o.readChunkBytes, limits.readMessagesMax, decodeUntil);
              decoded.push(run.seconds);
              messages = run.messages;
            },
            async () => {
              prep();
              const run = await readAll(store, topic, o.readChunkBytes, undefined, decodeUntil);
              decodedDefault.push(run.seconds);
              messagesDefault = run.messages;
            },
          ];
          if (r % 2 === 1) steps.reverse();
          for (const step of steps) {
            settle();
            await step();
          }
        }
        const rawMBps = (logBytes * rounds) / raw.reduce((a, b) => a + b, 0) / 1e6;
        const rawFreshMBps = (logBytes * rounds) / rawFresh.reduce((a, b) => a + b, 0) / 1e6;
        const batchesMBps = (logBytes * rounds) / batches.reduce((a, b) => a + b, 0) / 1e6;
        // Each round pairs engine and baseline passes run back to back; the median over rounds
        // keeps one disturbed pass (the machine is shared) from setting the figure.
        const ratioRounds = batches.map((s, i) => raw[i]! / s);
        const ratio = median(ratioRounds);
        const common = { bodyBytes, cache, logBytes, segments: files.length, maxBytes: o.readChunkBytes, raw_MBps: sig(rawMBps), rounds };
        emit({
          name: 'read',
          api: 'store.readBatches',
          ...common,
          MBps: sig(batchesMBps),
          msgPerSec: sig((highWatermark * rounds) / batches.reduce((a, b) => a + b, 0)),
          ratio_vs_raw: sig(ratio, 3),
          ratio_rounds: ratioRounds.map((r) => sig(r, 3)),
          raw_fresh_MBps: sig(rawFreshMBps),
          ratio_vs_raw_fresh: sig(median(batches.map((s, i) => rawFresh[i]! / s)), 3),
          calls,
          firstPass_MBps: sig(logBytes / diag.result.seconds / 1e6),
          firstPass_indexBytesRead: diag.syncBytes,
          fsReadsPerCall: sig(diag.reads / diag.result.calls, 3),
          fsBytesPerByteReturned: sig(diag.bytes / diag.result.bytes, 3),
          ...goal(`readBatches ${bodyBytes} B msgs, ${cache}, ratio vs raw`, ratio, '>= 0.7', ratio >= 0.7),
        });
        for (const [label, runs, count, maxMessages, d] of [
          ['store.read', decoded, messages, limits.readMessagesMax, diagRead],
          ['store.read (default maxMessages)', decodedDefault, messagesDefault, 1000, diagReadDefault],
        ] as const) {
          const seconds = runs.reduce((a, b) => a + b, 0);
          const MBps = (decodedBytes * rounds) / seconds / 1e6;
          emit({
            name: 'read',
            api: label,
            ...common,
            maxMessages,
            decodedBytes,
            MBps: sig(MBps),
            msgPerSec: sig((count * rounds) / seconds),
            ratio_vs_raw: sig(median(runs.map((s, i) => ((decodedBytes / s) * raw[i]!) / logBytes)), 3),
            ratio_rounds: runs.map((s, i) => sig(((decodedBytes / s) * raw[i]!) / logBytes, 3)),
            fsReadsPerCall: sig(d.reads / d.result.calls, 3),
            fsBytesPerByteDecoded: sig(d.bytes / diagBytes, 3),
          });
        }
      };
      progress(`read ${bodyBytes} B: warm rounds (the data was just written: the page cache holds it)`);
      await measure('warm');
      if (cold) {
        progress(`read ${bodyBytes} B: cold rounds (page cache dropped before each pass)`);
        await measure('cold');
      }
    } finally {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}
