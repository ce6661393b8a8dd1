/**
 * Where the engine's CPU goes, per 1,000-message batch: the pieces of the append, lookup and
 * read paths timed one by one (`node dist/bench/engine-costs.js [--batches N]`). A companion
 * of bench/engine.ts: that one measures the whole paths against raw file I/O, this one
 * explains its ratios. JSON lines on stdout, `machine` first.
 *
 * Each figure is the mean over N calls after a warm-up, in µs per batch of 1,000 messages
 * with keys (`user-<n>`) and random bodies of 100 B or 1 KiB.
 */
import * as crypto from 'node:crypto';
import { lz4Codec } from '../engine/codec';
import { loadChecksum, xxh32Range, xxh32Wasm, xxh64 } from '../engine/format/checksum';
import { forEachRecordKeys, IndexKind } from '../engine/format/index-keys';
import { MsgIdGenerator, msgIdToHex } from '../engine/format/msg-id';
import { checksumHolds, decodeRecords, encodeBatch, probeHeader, recordsSection, validateBatch, type BatchHeader, type MessageInput } from '../engine/format/record-batch';
import { KeyIndexBuilder } from '../engine/index/key-index';
import { limits } from '../engine/limits';
import { emit, machineLine, sig } from './common';

function time(path: string, piece: string, bodyBytes: number, count: number, fn: () => void): number {
  for (let i = 0; i < Math.min(50, count); i++) fn();
  const t0 = performance.now();
  for (let i = 0; i < count; i++) fn();
  const us = ((performance.now() - t0) / count) * 1000;
  emit({ name: 'cost', path, piece, bodyBytes, usPerBatch: sig(us, 3), nsPerMessage: sig(us, 3) });
  return us;
}

function header(batch: Uint8Array): BatchHeader {
  const probe = probeHeader(batch, 0);
  if (probe.kind !== 'ok') throw new Error(`probe: ${probe.kind}`);
  return probe.header;
}

async function main(): Promise<void> {
  const at = process.argv.indexOf('--batches');
  const batches = at >= 0 ? Number(process.argv[at + 1]) : 300;
  if (!Number.isSafeInteger(batches) || batches < 1) {
    process.stderr.write('engine-costs: --batches must be a whole number ≥ 1\n');
    process.exit(2);
  }
  await loadChecksum();
  emit(machineLine('machine', { bench: 'engine-costs', batches }));
  const pool = crypto.randomBytes(1 << 24);
  for (const bodyBytes of [100, 1024]) {
    const n = bodyBytes >= 1024 ? Math.max(1, Math.floor(batches / 3)) : batches;
    const messages: MessageInput[] = Array.from({ length: 1000 }, () => {
      const from = crypto.randomInt(pool.length - bodyBytes);
      return { key: `user-${crypto.randomInt(1_000_000)}`, body: pool.subarray(from, from + bodyBytes) };
    });
    const plain = encodeBatch(messages, { codec: null }).batch;
    const packed = encodeBatch(messages, { codec: lz4Codec });
    const section = plain.subarray(64);
    const plainHeader = header(plain);
    const packedHeader = header(packed.batch);
    emit({ name: 'lz4', bodyBytes, recordsBytes: section.length, storedBytes: packed.batch.length - 64, stored_vs_raw: sig((packed.batch.length - 64) / section.length, 3) });

    // store.append: encode (msgIds, keys, varints, checksum, lz4 attempt), then the result's hex ids.
    time('store.append', 'encodeBatch, lz4 on (the default)', bodyBytes, n, () => encodeBatch(messages, { codec: lz4Codec }));
    time('store.append', 'encodeBatch, lz4 off', bodyBytes, n, () => encodeBatch(messages, { codec: null }));
    const ids = new MsgIdGenerator();
    time('store.append', '  in it: 1000 × MsgIdGenerator.next', bodyBytes, n, () => {
      for (let i = 0; i < 1000; i++) ids.next();
    });
    const encoder = new TextEncoder();
    time('store.append', '  in it: 1000 × TextEncoder.encode(key)', bodyBytes, n, () => {
      for (const m of messages) encoder.encode(m.key as string);
    });
    time('store.append', '  (for scale: 1000 × Buffer.from(key, "latin1"))', bodyBytes, n, () => {
      for (const m of messages) Buffer.from(m.key as string, 'latin1');
    });
    time('store.append', '  in it: lz4 compress of the records section', bodyBytes, n, () => lz4Codec.compress(section));
    time('store.append', '  in it: xxh64 checksum of the batch', bodyBytes, n, () => xxh64(plain.subarray(24)));
    time('store.append', 'result: 1000 × msgIdToHex', bodyBytes, n, () => packed.msgIds.map(msgIdToHex));

    // Segment.indexBatch after the write: decompress, walk, hash, add.
    let builder = new KeyIndexBuilder(0, limits.keyIndexSlotCount);
    let entries = 0;
    const fresh = (): void => {
      if (entries > 500_000) {
        builder = new KeyIndexBuilder(0, limits.keyIndexSlotCount);
        entries = 0;
      }
    };
    time('indexBatch', 'whole: decompress + walk + xxh32 + add', bodyBytes, n, () => {
      fresh();
      const records = recordsSection(packed.batch, 0, packedHeader, lz4Codec);
      forEachRecordKeys(records, 1000, (r) => {
        builder.add(xxh32Range(records, r.msgIdAt, r.msgIdAt + 16, IndexKind.msgId), 0, entries, 0);
        if (r.keyLength >= 0) builder.add(xxh32Range(records, r.keyAt, r.keyAt + r.keyLength, IndexKind.key), 0, entries, 0);
        entries++;
      });
    });
    time('indexBatch', '  in it: lz4 decompress (recordsSection)', bodyBytes, n, () => recordsSection(packed.batch, 0, packedHeader, lz4Codec));
    time('indexBatch', '  in it: forEachRecordKeys walk alone', bodyBytes, n, () => forEachRecordKeys(section, 1000, () => undefined));
    time('indexBatch', '  in it: walk + 2000 × xxh32 (JavaScript)', bodyBytes, n, () =>
      forEachRecordKeys(section, 1000, (r) => {
        xxh32Range(section, r.msgIdAt, r.msgIdAt + 16, IndexKind.msgId);
        if (r.keyLength >= 0) xxh32Range(section, r.keyAt, r.keyAt + r.keyLength, IndexKind.key);
      }),
    );
    time('indexBatch', '  (for scale: walk + 2000 × xxh32 through xxhash-wasm)', bodyBytes, n, () =>
      forEachRecordKeys(section, 1000, (r) => {
        xxh32Wasm(section.subarray(r.msgIdAt, r.msgIdAt + 16), IndexKind.msgId);
        if (r.keyLength >= 0) xxh32Wasm(section.subarray(r.keyAt, r.keyAt + r.keyLength), IndexKind.key);
      }),
    );
    time('indexBatch', '  in it: 2000 × KeyIndexBuilder.add', bodyBytes, n, () => {
      fresh();
      for (let i = 0; i < 2000; i++) builder.add(Math.imul(i, 2654435761) >>> 0, 0, entries, 0);
      entries += 1000;
    });
    time('store.appendBatch', 'validateBatch (probe + xxh64)', bodyBytes, n, () => validateBatch(packed.batch));

    // lookup: readBatchAt confirms a hit by decoding the whole batch.
    time('lookup', 'checksum + decodeRecords of the whole batch (lz4)', bodyBytes, n, () => {
      checksumHolds(packed.batch, 0, packedHeader);
      decodeRecords(packed.batch, 0, packedHeader, lz4Codec);
    });
    time('lookup', 'decodeRecords of the whole batch (no lz4)', bodyBytes, n, () => decodeRecords(plain, 0, plainHeader, null));

    // store.read: decode, then one StoredMessage per record (store.ts toMessage).
    const decoder = new TextDecoder();
    time('store.read', 'decodeRecords + toMessage-like work per record', bodyBytes, n, () => {
      for (const r of decodeRecords(plain, 0, plainHeader, null)) {
        msgIdToHex(r.msgId);
        if (r.key) decoder.decode(r.key);
        Buffer.from(r.body);
        r.headers.map((h) => ({ name: h.name, value: Buffer.from(h.value) }));
      }
    });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`engine-costs failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
