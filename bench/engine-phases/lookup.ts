/**
 * Phase 3 of bench/engine.ts: lookups by msgId and key against one fs.read of a batch.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MsgIdGenerator, msgIdToHex, type MessageInput } from '../../engine/index';
import { BodySource, dropCaches, emit, formatBytes, latencySummary, now, progress, segmentFiles, sig, type Json } from '../common';
import { countFsReads, fill, freshStore, goal, readAt, settle, type Options } from './shared';


export async function lookupPhase(o: Options, cold: boolean): Promise<void> {
  const dir = path.join(o.dir, 'lookup');
  const topic = 'lookup';
  const bodyBytes = 100;
  const store = await freshStore(dir, true, topic);
  try {
    const bodies = new BodySource('random');
    const n = o.lookupMessages;
    const batchCount = Math.ceil(n / o.batchMessages);
    // Each key is carried by about five messages spread over the whole channel (an order id
    // with a few events), so a key lookup confirms several hits in several segments.
    const keySpace = Math.max(1, Math.floor(n / 5));
    const keyOf = (i: number): string => `order-${i % keySpace}`;
    const samples = Math.min(o.lookupSamples, n);
    const wanted = new Map<number, number[]>(); // batch → indexes within it to remember
    for (const index of pickDistinct(samples, n)) {
      const b = Math.floor(index / o.batchMessages);
      let list = wanted.get(b);
      if (!list) wanted.set(b, (list = []));
      list.push(index % o.batchMessages);
    }
    const sampled: Array<{ msgId: string; key: string }> = [];
    progress(`lookup: appending ${n} messages of ${bodyBytes} B with keys (${keySpace} distinct keys)`);
    const filled = await fill(
      store,
      topic,
      Number.MAX_SAFE_INTEGER,
      batchCount,
      o.inFlight,
      (b) => {
        const size = Math.min(o.batchMessages, n - b * o.batchMessages);
        const batch: MessageInput[] = new Array(size);
        for (let m = 0; m < size; m++) batch[m] = { key: keyOf(b * o.batchMessages + m), body: bodies.body(bodyBytes) };
        return batch;
      },
      (b, msgIds) => {
        for (const m of wanted.get(b) ?? []) sampled.push({ msgId: msgIds[m]!, key: keyOf(b * o.batchMessages + m) });
      },
    );
    shuffle(sampled);
    const channelDir = path.join(dir, 'topics', topic, '0');
    const files = segmentFiles(channelDir);
    const logBytes = files.reduce((a, f) => a + f.bytes, 0);
    const batchBytes = Math.round(logBytes / filled.batches);
    progress(`lookup: ${filled.messages} messages, ${formatBytes(logBytes)} in ${files.length} segments (appended at ${sig(filled.messages / filled.seconds, 3)} msg/s)`);

    const misses = Array.from({ length: Math.min(1000, samples) }, () => msgIdToHex(new MsgIdGenerator().next()));
    const byMsgId = async (count: number): Promise<{ latencies: number[]; found: number }> => {
      let found = 0;
      const latencies: number[] = [];
      for (let i = 0; i < count; i++) {
        const { msgId } = sampled[i % sampled.length]!;
        const t = now();
        const m = await store.lookupMsgId(topic, msgId);
        latencies.push(now() - t);
        if (m && m.msgId === msgId) found++;
      }
      return { latencies, found };
    };
    const byMiss = async (): Promise<number[]> => {
      const latencies: number[] = [];
      for (const msgId of misses) {
        const t = now();
        const m = await store.lookupMsgId(topic, msgId);
        latencies.push(now() - t);
        if (m) throw new Error(`a random msgId ${msgId} was found`);
      }
      return latencies;
    };
    const byKey = async (count: number): Promise<{ latencies: number[]; hits: number; wrong: number }> => {
      let hits = 0;
      let wrong = 0;
      const latencies: number[] = [];
      for (let i = 0; i < count; i++) {
        const { key } = sampled[i % sampled.length]!;
        const t = now();
        const found = await store.lookupKey(topic, key);
        latencies.push(now() - t);
        hits += found.length;
        for (const m of found) if (m.key !== key) wrong++;
      }
      return { latencies, hits, wrong };
    };
    // The floor of any lookup: one read of a batch at a random position of the log.
    const rawPread = async (count: number): Promise<number[]> => {
      const fds = files.map((f) => ({ fd: fs.openSync(f.file, 'r'), bytes: f.bytes }));
      const buf = Buffer.allocUnsafe(batchBytes);
      const latencies: number[] = [];
      try {
        for (let i = 0; i < count; i++) {
          const f = fds[crypto.randomInt(fds.length)]!;
          const position = crypto.randomInt(Math.max(1, f.bytes - batchBytes));
          const t = now();
          await readAt(f.fd, buf, batchBytes, position);
          latencies.push(now() - t);
        }
      } finally {
        for (const f of fds) fs.closeSync(f.fd);
      }
      return latencies;
    };

    // Warm-up (JIT, opening the sealed segments' key index files): not recorded. It doubles
    // as a diagnostic: the reads a lookup asks of the file system.
    const diagCount = Math.min(200, samples);
    const diagId = await countFsReads(() => byMsgId(diagCount));
    const diagKey = await countFsReads(() => byKey(diagCount));
    await rawPread(200);
    const perLookup = (d: { reads: number; bytes: number; syncReads: number }): Json => ({
      fsReadsPerLookup: sig(d.reads / diagCount, 3),
      fsReadBytesPerLookup: Math.round(d.bytes / diagCount),
      readSyncPerLookup: sig(d.syncReads / diagCount, 3),
    });

    const report = (cache: 'warm' | 'cold', id: { latencies: number[]; found: number }, key: { latencies: number[]; hits: number; wrong: number } | null, miss: number[] | null, raw: number[]): void => {
      const rawSummary = latencySummary(raw, 'us');
      const baseline = { raw_pread_bytes: batchBytes, raw_pread_p50_us: rawSummary.p50_us, raw_pread_p99_us: rawSummary.p99_us };
      const common = { cache, messages: filled.messages, segments: files.length, logBytes };
      const idSummary = latencySummary(id.latencies, 'us');
      const p99 = idSummary.p99_us as number;
      emit({
        name: 'lookup',
        by: 'msgId',
        ...common,
        ...idSummary,
        found: id.found,
        ...perLookup(diagId),
        ...baseline,
        p99_vs_raw_pread_p99: sig(p99 / (rawSummary.p99_us as number), 3),
        ...goal(`lookupMsgId p99 (${cache}), µs`, p99, '< 1000', p99 < 1000),
      });
      if (miss) emit({ name: 'lookup', by: 'msgId (absent)', ...common, ...latencySummary(miss, 'us'), ...baseline });
      if (key) {
        emit({
          name: 'lookup',
          by: 'key',
          ...common,
          distinctKeys: keySpace,
          ...latencySummary(key.latencies, 'us'),
          hitsPerLookup: sig(key.hits / key.latencies.length, 3),
          wrongHits: key.wrong,
          ...perLookup(diagKey),
          ...baseline,
        });
      }
    };

    progress(`lookup: ${samples} msgId lookups, ${samples} key lookups, ${misses.length} absent msgIds (warm)`);
    settle();
    const rawWarm = await rawPread(samples);
    settle();
    const idWarm = await byMsgId(samples);
    settle();
    const keyWarm = await byKey(samples);
    settle();
    const missWarm = await byMiss();
    report('warm', idWarm, keyWarm, missWarm, rawWarm);
    if (cold) {
      // Cold: the page cache is dropped first, then a short run (it warms up as it goes).
      const count = Math.min(1000, samples);
      progress(`lookup: ${count} msgId lookups after dropping the page cache`);
      dropCaches();
      const rawCold = await rawPread(count);
      dropCaches();
      const idCold = await byMsgId(count);
      report('cold', idCold, null, null, rawCold);
    }
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function pickDistinct(count: number, below: number): number[] {
  const picked = new Set<number>();
  while (picked.size < count) picked.add(crypto.randomInt(below));
  return [...picked];
}

function shuffle<T>(list: T[]): void {
  for (let i = list.length - 1; i > 0; i--) {
    const j = crypto.randomInt(i + 1);
    [list[i], list[j]] = [list[j]!, list[i]!];
  }
}
