import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openStore, encodeBatch, decodeRecords, lz4Codec, validateBatch, type Store, type StoreOptions, type SyncMode } from '../engine/index';
import { ProducerStates } from '../engine/log/producer-state';
import { limits } from '../engine/limits';
import { TailCache } from '../engine/log/tail-cache';
import { segmentFileName } from '../engine/log/segment';
import { ChannelLog, type ChannelOptions } from '../engine/log/channel-log';
import { IoSlots } from '../engine/log/io-slots';
import { StoreClock } from '../engine/clock';
import { KeyIndexBuilder } from '../engine/index/key-index';
import { BatchBuffers } from '../engine/batch-buffers';
import { loadChecksum, xxh32 } from '../engine/format/checksum';
import { batchLayout, bodyFor, flipByte, rejection, removeTempDirs, segmentFiles, tempDir } from './helpers';
import { dumpPath, repairStore, verifyStore } from '../engine/inspect/index';

const variants: Array<{ sync: SyncMode; compression: boolean }> = [];
for (const sync of ['batch', 'interval', 'none'] as const) for (const compression of [false, true]) variants.push({ sync, compression });

after(removeTempDirs);

// One behaviour, every implementation: the same store tests across sync modes × compression.
for (const variant of variants) {
  describe(`engine store (sync=${variant.sync}, compression=${variant.compression ? 'lz4' : 'off'})`, () => {
    let dir: string;
    let store: Store;
    const options: StoreOptions = { ...variant, segmentBytes: 32 * 1024, syncIntervalMs: 5 };

    beforeEach(async () => {
      dir = tempDir();
      store = await openStore(dir, options);
    });
    afterEach(() => store.close());

    it('appends and reads back every field, offsets dense from 0', async () => {
      await store.createTopic('orders', { channels: 3, owner: 'billing' });
      const first = await store.append('orders', 1, [
        { key: 'k1', body: 'one', headers: { traceid: 't-1', a: 'b' } },
        { body: Buffer.from([1, 2, 3]), deliverAt: 1_900_000_000_000 },
      ]);
      const second = await store.append('orders', 1, [{ key: 'k2', body: 'three' }]);
      assert.equal(first.baseOffset, 0);
      assert.equal(second.baseOffset, 2);
      assert.equal(first.msgIds.length, 2);
      const messages = await store.read('orders', 1, { offset: 0 });
      assert.deepEqual(messages.map((m) => m.offset), [0, 1, 2]);
      assert.equal(messages[0]!.key, 'k1');
      assert.equal(messages[0]!.body.toString(), 'one');
      assert.deepEqual(messages[0]!.headers.map((h) => `${h.name}=${h.value}`), ['traceid=t-1', 'a=b']);
      assert.equal(messages[0]!.msgId, first.msgIds[0]);
      assert.deepEqual([...messages[1]!.body], [1, 2, 3]);
      assert.equal(messages[1]!.deliverAt, 1_900_000_000_000);
      assert.equal(messages[2]!.body.toString(), 'three');
      assert.ok(messages[2]!.brokerTimestamp >= messages[0]!.brokerTimestamp);
      assert.deepEqual(await store.read('orders', 0, { offset: 0 }), [], 'other channels are untouched');
      assert.equal(store.describeTopic('orders').owner, 'billing');
    });

    it('rolls segments by size and reads across them after a reopen', async () => {
      await store.createTopic('t', { channels: 1 });
      for (let b = 0; b < 40; b++) {
        await store.append('t', 0, Array.from({ length: 10 }, (_, i) => ({ key: `k${b * 10 + i}`, body: bodyFor('roll', b * 10 + i) })));
      }
      const info = store.describeTopic('t').channelInfo[0]!;
      assert.ok(info.segments > 2, `expected several segments, got ${info.segments}`);
      await store.close();
      store = await openStore(dir, options);
      assert.deepEqual(store.recoveryReport, []);
      const all = await store.read('t', 0, { offset: 0, maxMessages: 1000, maxBytes: 16 * 1024 * 1024 });
      assert.equal(all.length, 400);
      all.forEach((m, i) => {
        assert.equal(m.offset, i);
        assert.ok(m.body.equals(bodyFor('roll', i)), `body ${i}`);
      });
      const mid = await store.read('t', 0, { offset: 237, maxMessages: 5 });
      assert.deepEqual(mid.map((m) => m.offset), [237, 238, 239, 240, 241]);
      assert.equal((await store.lookupKey('t', 'k5'))[0]!.offset, 5);
      assert.equal((await store.lookupKey('t', 'k399'))[0]!.offset, 399);
    });

    it('finds messages by msgId, key and traceid, confirmed against the record', async () => {
      await store.createTopic('t', { channels: 2 });
      const sent: Array<{ id: string; channel: number; offset: number }> = [];
      for (let b = 0; b < 30; b++) {
        const channel = b % 2;
        const r = await store.append('t', channel, Array.from({ length: 5 }, (_, i) => ({ key: `user-${(b * 5 + i) % 7}`, body: `m${b * 5 + i}`, headers: { traceid: `trace-${b}` } })));
        r.msgIds.forEach((id, i) => sent.push({ id, channel, offset: r.baseOffset + i }));
      }
      for (const s of [sent[0]!, sent[77]!, sent[149]!]) {
        const m = await store.lookupMsgId('t', s.id);
        assert.ok(m, `msgId ${s.id}`);
        assert.equal(m.channel, s.channel);
        assert.equal(m.offset, s.offset);
        assert.equal(m.msgId, s.id);
      }
      assert.equal(await store.lookupMsgId('t', '0'.repeat(32)), null);
      const byKey = await store.lookupKey('t', 'user-3');
      assert.equal(byKey.length, Math.ceil((150 - 3) / 7));
      assert.ok(byKey.every((m) => m.key === 'user-3'));
      for (let i = 1; i < byKey.length; i++) assert.ok(byKey[i - 1]!.brokerTimestamp >= byKey[i]!.brokerTimestamp, 'newest first');
      assert.equal((await store.lookupKey('t', 'user-3', { limit: 2 })).length, 2);
      assert.deepEqual(await store.lookupKey('t', 'nobody'), []);
      const traced = await store.lookupTraceId('t', 'trace-11');
      assert.equal(traced.length, 5);
      assert.ok(traced.every((m) => m.channel === 1));
      const future = Date.now() + 3_600_000;
      assert.deepEqual(await store.lookupKey('t', 'user-3', { timeFrom: future }), [], 'time range filters');
      assert.equal((await rejection(store.lookupKey('t', 'k'.repeat(limits.keyBytesMax + 1)))).code, 'KEY_TOO_LARGE', 'a key no message can have');
      assert.equal((await rejection(store.lookupMsgId('t', 'nothex'))).code, 'INVALID_ARGUMENT');
    });

    it('answers a retried producer sequence with the original offsets', async () => {
      await store.createTopic('t', { channels: 1 });
      const a = await store.append('t', 0, [{ body: 'a' }, { body: 'b' }], { producerId: 9, producerSequence: 0 });
      const again = await store.append('t', 0, [{ body: 'a' }, { body: 'b' }], { producerId: 9, producerSequence: 0 });
      assert.equal(again.duplicate, true);
      assert.equal(again.baseOffset, a.baseOffset);
      assert.deepEqual(again.msgIds, a.msgIds, 'the ids that were stored, not the ones encoded for the retry');
      assert.equal(again.brokerTimestamp, a.brokerTimestamp);
      assert.equal((await store.lookupMsgId('t', again.msgIds[1]!))?.offset, 1);
      const next = await store.append('t', 0, [{ body: 'c' }], { producerId: 9, producerSequence: 2 });
      assert.equal(next.baseOffset, 2);
      const old = await rejection(store.append('t', 0, [{ body: 'z' }], { producerId: 9, producerSequence: 1 }));
      assert.equal(old.code, 'DUPLICATE_SEQUENCE');
      assert.equal(store.channelState('t', 0).highWatermark, 3, 'nothing appended twice');
      await store.close();
      store = await openStore(dir, options);
      const afterRestart = await store.append('t', 0, [{ body: 'c' }], { producerId: 9, producerSequence: 2 });
      assert.equal(afterRestart.duplicate, true, 'producer state survives a restart');
      assert.deepEqual(afterRestart.msgIds, next.msgIds);
      assert.equal(store.channelState('t', 0).highWatermark, 3);
    });

    it('readBatches returns whole batches, one larger than maxBytes included, with or without a caller buffer', async () => {
      await store.createTopic('t', { channels: 1 });
      for (let b = 0; b < 6; b++) await store.append('t', 0, Array.from({ length: 3 }, (_, i) => ({ body: bodyFor('big', b * 3 + i, 30_000) })));
      for (const buffer of [undefined, Buffer.alloc(1 << 20)]) {
        let offset = 0;
        let batches = 0;
        while (offset < 18) {
          const read = await store.readBatches('t', 0, { offset, maxBytes: 8 * 1024, buffer });
          assert.ok(read.batchCount >= 1);
          const dv = new DataView(read.bytes.buffer, read.bytes.byteOffset, read.bytes.byteLength);
          assert.equal(Number(dv.getBigInt64(0, true)), offset, 'starts at the asked batch');
          assert.equal(validateBatch(read.bytes.subarray(0, dv.getUint32(28, true))).recordCount, 3, 'a whole, sound batch');
          offset = read.nextOffset;
          batches += read.batchCount;
        }
        assert.equal(batches, 6);
      }
      // From the middle of a batch: the batch holding the offset comes back whole.
      const mid = await store.readBatches('t', 0, { offset: 7, maxBytes: 8 * 1024 });
      assert.equal(new DataView(mid.bytes.buffer, mid.bytes.byteOffset).getBigInt64(0, true), 6n);
    });

    it('readBatches with maxMessages ends before the first later batch reaching offset + maxMessages, from the file and from memory, and reads no more than it returns', async () => {
      await store.close();
      store = await openStore(dir, { ...options, tailCacheBytes: 1024 * 1024 });
      await store.createTopic('t', { channels: 1 });
      // Batches of 10 incompressible 600-byte bodies: each over indexIntervalBytes, so every
      // batch start is in the offset index and the bounded read can end exactly.
      const stop = store.watch('t', 0, () => undefined); // the tail cache holds what is appended from now on
      for (let b = 0; b < 12; b++) await store.append('t', 0, Array.from({ length: 10 }, () => ({ body: randomBytes(600) })));
      const mutable = require('node:fs') as { read: (fd: number, buf: Buffer, off: number, len: number, pos: number, cb: (...a: unknown[]) => void) => void };
      const realRead = mutable.read;
      let fsBytes = 0;
      mutable.read = (fd, buf, off, len, pos, cb) => {
        fsBytes += len;
        realRead(fd, buf, off, len, pos, cb);
      };
      const batchesOf = (bytes: Buffer): Array<{ base: number; next: number }> => {
        const out: Array<{ base: number; next: number }> = [];
        for (let at = 0; at < bytes.length; ) {
          const length = bytes.readUInt32LE(at + 28);
          const base = Number(bytes.readBigInt64LE(at));
          out.push({ base, next: base + validateBatch(bytes.subarray(at, at + length)).recordCount });
          at += length;
        }
        return out;
      };
      const cases: Array<[offset: number, maxMessages: number]> = [];
      for (const offset of [0, 9, 10, 15, 47, 110]) for (const maxMessages of [1, 5, 10, 11, 20, 25, 35, 1000]) cases.push([offset, maxMessages]);
      const readAll = async (where: 'memory' | 'file'): Promise<void> => {
        for (const [offset, maxMessages] of cases) {
          fsBytes = 0;
          const whole = await store.readBatches('t', 0, { offset, maxBytes: 1024 * 1024 });
          const wholeBatches = batchesOf(whole.bytes);
          fsBytes = 0;
          const read = await store.readBatches('t', 0, { offset, maxBytes: 1024 * 1024, maxMessages, buffer: offset % 2 ? Buffer.alloc(1024 * 1024) : undefined });
          const got = batchesOf(read.bytes);
          // The longest prefix of the unbounded read whose batches after the first end by offset + maxMessages.
          let expected = 1;
          while (expected < wholeBatches.length && wholeBatches[expected]!.next <= offset + maxMessages) expected++;
          assert.deepEqual(got, wholeBatches.slice(0, expected), `${where}: offset ${offset} maxMessages ${maxMessages}`);
          assert.ok(got[0]!.base <= offset && offset < got[0]!.next, 'the first batch holds the offset');
          assert.equal(read.nextOffset, got[got.length - 1]!.next);
          assert.equal(fsBytes, where === 'memory' ? 0 : read.bytes.length, `${where}: bytes read from the file for offset ${offset} maxMessages ${maxMessages}`);
        }
      };
      for (const bad of [0, -1, 1.5, Number.NaN]) assert.equal((await rejection(store.readBatches('t', 0, { offset: 0, maxMessages: bad }))).code, 'INVALID_ARGUMENT', `maxMessages ${bad}`);
      try {
        await readAll('memory');
        stop(); // the last watcher gone: the cache is dropped and every read goes to the file
        await readAll('file');
      } finally {
        mutable.read = realRead;
      }
    });

    it('a watched channel serves tail reads from memory, byte for byte what the files hold', async () => {
      await store.close();
      store = await openStore(dir, { ...options, tailCacheBytes: 8 * 1024 });
      await store.createTopic('t', { channels: 1 });
      const stop = store.watch('t', 0, () => undefined);
      // Batches of 1–5 messages of 50–1,500 B: the newest ~8 KiB stay cached, the rest are read from the file.
      for (let b = 0; b < 40; b++) await store.append('t', 0, Array.from({ length: 1 + (b % 5) }, (_, i) => ({ key: `k${b}`, body: bodyFor('tail', b * 5 + i, 50 + ((b * 337) % 1450)) })));
      const hwm = store.describeTopic('t').channelInfo[0]!.highWatermark;
      // Each read: whole, sound, consecutive batches from the one holding the offset (how many
      // may differ between memory and file: both stop near maxBytes). Compared by each batch's digest.
      const readAll = async (): Promise<string[]> => {
        const seen: string[] = [];
        for (let offset = 0; offset < hwm; offset++) {
          for (const maxBytes of [1, 3000, 64 * 1024]) {
            const read = await store.readBatches('t', 0, { offset, maxBytes, buffer: offset % 2 ? Buffer.alloc(16 * 1024) : undefined });
            let at = 0;
            let next = -1;
            for (let b = 0; b < read.batchCount; b++) {
              const length = read.bytes.readUInt32LE(at + 28);
              const batch = read.bytes.subarray(at, at + length);
              const base = Number(batch.readBigInt64LE(0));
              if (b === 0) assert.ok(base <= offset && offset < base + validateBatch(batch).recordCount, `offset ${offset} is in the first batch`);
              else assert.equal(base, next, 'batches are consecutive');
              next = base + validateBatch(batch).recordCount;
              seen.push(`${base}: ${createHash('sha256').update(batch).digest('hex').slice(0, 16)}`);
              at += length;
            }
            assert.equal(at, read.bytes.length, 'whole batches only');
            assert.equal(read.nextOffset, next);
          }
        }
        return [...new Set(seen)].sort();
      };
      const whileWatched = await readAll();
      // Proof the newest batch comes from memory: rot its last byte on disk; the watched read is still sound.
      const file = segmentFiles(path.join(dir, 'topics', 't', '0')).pop()!;
      const fd = fs.openSync(file, 'r+');
      const size = batchLayout(fs.readFileSync(file)).end; // the last batch's end (the file may run on with the zeroed tail)
      const original = Buffer.alloc(1);
      fs.readSync(fd, original, 0, 1, size - 1);
      fs.writeSync(fd, Buffer.from([original[0]! ^ 0xff]), 0, 1, size - 1);
      const fromMemory = await store.readBatches('t', 0, { offset: hwm - 1, maxBytes: 1 });
      assert.equal(validateBatch(fromMemory.bytes).recordCount >= 1, true);
      stop(); // the last watcher gone: the cache is dropped and every read goes to the file
      const fromFile = await store.readBatches('t', 0, { offset: hwm - 1, maxBytes: 1 });
      assert.throws(() => validateBatch(fromFile.bytes), /checksum/);
      fs.writeSync(fd, original, 0, 1, size - 1);
      fs.closeSync(fd);
      assert.deepEqual(whileWatched, await readAll());
    });

    it('finds offsets by broker time', async () => {
      await store.createTopic('t', { channels: 1 });
      const r1 = await store.append('t', 0, [{ body: 'a' }]);
      let r2 = await store.append('t', 0, [{ body: 'b' }]);
      while (r2.brokerTimestamp === r1.brokerTimestamp) r2 = await store.append('t', 0, [{ body: 'b' }]);
      assert.equal(await store.offsetForTime('t', 0, 0), 0);
      assert.equal(await store.offsetForTime('t', 0, r2.brokerTimestamp), r2.baseOffset);
      assert.equal(await store.offsetForTime('t', 0, r2.brokerTimestamp + 1), store.channelState('t', 0).highWatermark);
    });
  });
}

// Found by a review (helper-27): time-tick packs and seeks by time over a clock that steps
// back, a failed channel, and a retention pass.
describe('engine store: broker time, stable time and offsetForTime', () => {
  let dir: string;
  let store: Store;
  const realNow = Date.now;
  beforeEach(async () => {
    dir = tempDir();
    store = await openStore(dir, { segmentBytes: 64 * 1024, onFault: () => undefined });
  });
  afterEach(async () => {
    Date.now = realNow;
    await store.close();
  });

  it('no broker time given out after a stable time is at or below it, though the system clock steps back', async () => {
    const frozen = realNow();
    Date.now = () => frozen;
    await store.createTopic('t', { channels: 2 });
    Date.now = () => frozen + 100;
    const stable = store.stableTimestamp('t', 1); // a pack over the idle channel 1 may close here
    Date.now = () => frozen - 5000; // the system clock steps back 5 s
    const appended = await store.append('t', 1, [{ body: 'after the step' }]);
    assert.ok(appended.brokerTimestamp > stable, `stamped ${appended.brokerTimestamp}, after the stable time ${stable} a pack may have closed at`);
  });

  it('a failed channel\'s stable time follows the clock (it stayed at its failed batch, and packs over the topic stopped)', async () => {
    await store.createTopic('t', { channels: 2, segmentBytes: 4096 });
    await store.append('t', 0, [{ body: randomBytes(3000) }]);
    // The next segment's file cannot be made (a folder holds its name): the roll fails the channel with the batch in flight.
    fs.mkdirSync(path.join(dir, 'topics', 't', '0', `${'1'.padStart(20, '0')}.log`));
    const failed = await rejection(store.append('t', 0, [{ body: randomBytes(3000) }]));
    assert.equal(failed.code, 'STORAGE_FAILED');
    const later = realNow() + 10_000;
    assert.equal(store.stableTimestamp('t', 0, later), later - 1);
  });

  it('offsetForTime racing a retention pass that deletes the segment it searches answers from the new log start', async () => {
    const base = realNow() - 120_000;
    Date.now = () => base;
    await store.createTopic('t', { channels: 1, retentionMs: 60_000 });
    for (let i = 0; i < 200; i++) await store.append('t', 0, [{ body: randomBytes(400) }]); // ~92 KB at one time: the first segment and part of the second
    Date.now = () => base + 1000;
    for (let i = 0; i < 100; i++) await store.append('t', 0, [{ body: randomBytes(400) }]);
    await store.settled();
    assert.equal(await store.offsetForTime('t', 0, base), 0);
    // The search starts as the first segment's log is unlinked (the removal comes after the
    // checkpoint with its intent is written): it reads a segment deleted under it.
    let search: Promise<number> | null = null;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeFs = require('node:fs') as { unlinkSync: typeof fs.unlinkSync };
    const unlinkSync = nodeFs.unlinkSync;
    nodeFs.unlinkSync = (file: fs.PathLike): void => {
      if (search === null && String(file).endsWith(`${'0'.repeat(20)}.log`)) search = store.offsetForTime('t', 0, base);
      unlinkSync(file);
    };
    try {
      assert.ok((await store.applyRetention(base + 60_001)) >= 1, 'the first segment is deleted under it');
    } finally {
      nodeFs.unlinkSync = unlinkSync;
    }
    assert.ok(search !== null, 'the search started as the log went');
    const logStart = store.channelState('t', 0).logStartOffset;
    assert.ok(logStart > 0 && logStart < 200);
    assert.equal(await search, logStart, 'the first message at or after the time that is still there');
  });
});

describe('engine store: errors change nothing', () => {
  let dir: string;
  let store: Store;
  beforeEach(async () => {
    dir = tempDir();
    store = await openStore(dir);
    await store.createTopic('t', { channels: 2 });
    await store.append('t', 0, [{ body: 'kept' }]);
  });
  afterEach(() => store.close());

  it('answers bad input with typed errors', async () => {
    assert.equal((await rejection(store.append('nope', 0, [{ body: 'x' }]))).code, 'TOPIC_NOT_FOUND');
    assert.equal((await rejection(store.append('t', 2, [{ body: 'x' }]))).code, 'CHANNEL_NOT_FOUND');
    assert.equal((await rejection(store.append('t', -1, [{ body: 'x' }]))).code, 'CHANNEL_NOT_FOUND');
    assert.equal((await rejection(store.read('t', 0, { offset: 5 }))).code, 'OFFSET_OUT_OF_RANGE');
    assert.equal((await rejection(store.read('t', 0, { offset: -1 }))).code, 'OFFSET_OUT_OF_RANGE');
    assert.equal((await rejection(store.createTopic('t', { channels: 1 }))).code, 'TOPIC_EXISTS');
    assert.equal((await rejection(store.createTopic('bad/name', { channels: 1 }))).code, 'INVALID_NAME');
    assert.equal((await rejection(store.createTopic('..', { channels: 1 }))).code, 'INVALID_NAME');
    assert.equal((await rejection(store.createTopic('__trace', { channels: 1 }))).code, 'INVALID_NAME');
    assert.equal((await rejection(store.createTopic('many', { channels: 100_000 }))).code, 'TOO_MANY_CHANNELS');
    assert.equal((await rejection(store.createTopic('neg', { channels: 1, retentionMs: -5 }))).code, 'INVALID_ARGUMENT');
    // A key index entry keeps its time as u32 ms since its segment's first: key lookups with a time range missed records past 2^32 ms.
    assert.equal((await rejection(store.createTopic('long', { channels: 1, segmentMs: 2 ** 32 }))).code, 'INVALID_ARGUMENT');
    assert.equal((await rejection(openStore(tempDir(), { segmentMs: 2 ** 32 }))).code, 'INVALID_ARGUMENT');
    assert.equal((await rejection(store.append('t', 0, [{ body: Buffer.alloc(9 * 1024 * 1024) }]))).code, 'MESSAGE_TOO_LARGE');
    assert.equal((await rejection(store.lookupMsgId('t', 'not-hex'))).code, 'INVALID_ARGUMENT');
    assert.deepEqual(store.listTopics().map((t) => t.name), ['t']);
    assert.equal(store.channelState('t', 0).highWatermark, 1);
    assert.equal((await store.read('t', 0, { offset: 0 }))[0]!.body.toString(), 'kept');
  });

  it('refuses a raw batch whose checksum fails and appends a sound one as it is', async () => {
    const { batch } = encodeBatch([{ body: 'from the sdk', key: 'sdk' }]);
    const bad = batch.slice();
    bad[bad.length - 2]! ^= 0x10;
    assert.equal((await rejection(store.appendBatch('t', 0, bad))).code, 'CORRUPT_BATCH');
    assert.equal((await rejection(store.appendBatch('t', 0, batch.subarray(0, 40)))).code, 'CORRUPT_BATCH');
    assert.equal(store.channelState('t', 0).highWatermark, 1, 'nothing appended');
    const outcome = await store.appendBatch('t', 0, batch);
    assert.equal(outcome.baseOffset, 1);
    const raw = await store.readBatches('t', 0, { offset: 1 });
    assert.equal(raw.batchCount, 1);
    assert.ok(raw.bytes.subarray(24).equals(Buffer.from(batch.subarray(24))), 'stored bytes are the sent bytes past the patched fields');
    assert.equal((await store.lookupKey('t', 'sdk'))[0]!.body.toString(), 'from the sdk');
  });

  it('a checkpoint that cannot be written after a roll fails that channel (sticky), not the process', async () => {
    await store.createTopic('small', { channels: 2, segmentBytes: 4096 });
    // A directory where the checkpoint's temp file goes: its next write fails for real (EISDIR).
    fs.mkdirSync(path.join(dir, 'topics', 'small', '0', 'checkpoint.json.tmp'));
    let refused: { code?: string } | null = null;
    for (let i = 0; i < 200 && !refused; i++) {
      refused = await store.append('small', 0, [{ body: 'x'.repeat(200) }]).then(
        () => null,
        (err: { code?: string }) => err,
      );
    }
    assert.equal(refused?.code, 'STORAGE_FAILED', 'the channel refuses appends once its roll could not be recorded');
    assert.equal((await rejection(store.append('small', 0, [{ body: 'still refused' }]))).code, 'STORAGE_FAILED');
    await store.append('small', 1, [{ body: 'other channels still work' }]);
    fs.rmdirSync(path.join(dir, 'topics', 'small', '0', 'checkpoint.json.tmp'));
  });

  it('StickyWriteError: a failed write refuses every later append until reopened', async () => {
    // Close the active segment's descriptor behind the engine's back: the next write fails for real (EBADF).
    const channel = (store as unknown as { topics: Map<string, { channels: Array<{ segments: Array<{ fd: number }> }> }> }).topics.get('t')!.channels[0]!;
    const active = channel.segments[channel.segments.length - 1]!;
    const realFd = active.fd;
    const spare = fs.openSync(path.join(dir, 'spare'), 'w');
    fs.closeSync(spare);
    fs.closeSync(realFd);
    const first = await rejection(store.append('t', 0, [{ body: 'lost' }]));
    assert.equal(first.code, 'STORAGE_FAILED');
    const second = await rejection(store.append('t', 0, [{ body: 'also refused' }]));
    assert.equal(second.code, 'STORAGE_FAILED');
    assert.equal(store.channelState('t', 0).highWatermark, 1, 'nothing unwritten was acknowledged');
    await store.append('t', 1, [{ body: 'other channels still work' }]);
    // Give the segment a live descriptor again so close() can finish cleanly.
    (active as { fd: number }).fd = fs.openSync(segmentFiles(path.join(dir, 'topics', 't', '0'))[0]!, 'r');
  });
});

describe('engine store: topics and retention', () => {
  it('deletes a topic with its files, and a crash mid-create leaves no trace', async () => {
    const dir = tempDir();
    let store = await openStore(dir);
    await store.createTopic('gone', { channels: 2 });
    await store.append('gone', 1, [{ body: 'x' }]);
    await store.deleteTopic('gone');
    assert.equal(fs.existsSync(path.join(dir, 'topics', 'gone')), false);
    assert.equal((await rejection(store.read('gone', 0, { offset: 0 }))).code, 'TOPIC_NOT_FOUND');
    await store.close();
    fs.mkdirSync(path.join(dir, 'topics', '.creating-half'));
    store = await openStore(dir);
    assert.deepEqual(store.listTopics(), []);
    assert.equal(fs.existsSync(path.join(dir, 'topics', '.creating-half')), false);
    await store.close();
  });

  it('a retention pass writes its intent first: as each log is unlinked the checkpoint on disk says removingBefore past it; after the pass, 0', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { compression: false });
    await store.createTopic('r', { channels: 1, segmentBytes: 4096, retentionBytes: 4096 });
    for (let i = 0; i < 5; i++) await store.append('r', 0, [{ body: Buffer.alloc(3000, i) }]);
    await store.settled();
    const channel = path.join(dir, 'topics', 'r', '0');
    const readCheckpoint = (): { removingBefore: number; segments: Array<{ baseOffset: number; nextOffset: number }> } => JSON.parse(fs.readFileSync(path.join(channel, 'checkpoint.json'), 'utf8'));
    const seen: Array<{ log: number; nextOffset: number; removingBefore: number }> = [];
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeFs = require('node:fs') as { unlinkSync: typeof fs.unlinkSync };
    const unlinkSync = nodeFs.unlinkSync;
    nodeFs.unlinkSync = (file: fs.PathLike): void => {
      if (String(file).startsWith(channel) && String(file).endsWith('.log')) {
        const cp = readCheckpoint();
        const log = Number(path.basename(String(file), '.log'));
        seen.push({ log, nextOffset: cp.segments.find((m) => m.baseOffset === log)!.nextOffset, removingBefore: cp.removingBefore });
      }
      unlinkSync(file);
    };
    try {
      assert.ok((await store.applyRetention()) >= 2);
    } finally {
      nodeFs.unlinkSync = unlinkSync;
    }
    assert.ok(seen.length >= 2, JSON.stringify(seen));
    for (const s of seen) assert.ok(s.removingBefore >= s.nextOffset, `the intent covered segment ${s.log} before it went: ${JSON.stringify(seen)}`);
    assert.equal(readCheckpoint().removingBefore, 0, 'lifted once the pass is done');
    await store.close();
    assert.equal((await verifyStore(dir)).ok, true);
  });

  it('a retention pass while a seal\'s checkpoint is written through the thread pool writes its own after it, never alongside: one writer of the temp file at a time', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { compression: false });
    await store.createTopic('r', { channels: 1, segmentBytes: 4096, retentionBytes: 4096 });
    const checkpointFile = path.join(dir, 'topics', 'r', '0', 'checkpoint.json');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeFs = require('node:fs') as { renameSync: typeof fs.renameSync; rename: typeof fs.rename };
    const realRenameSync = nodeFs.renameSync;
    const realRename = nodeFs.rename;
    let hold = false;
    let release: (() => void) | null = null;
    let reached!: () => void;
    const held = new Promise<void>((resolve) => (reached = resolve));
    let writesWhileHeld = 0;
    let writesAfter = 0;
    let released = false;
    nodeFs.rename = ((from: fs.PathLike, to: fs.PathLike, callback: (err: NodeJS.ErrnoException | null) => void): void => {
      if (hold && String(to) === checkpointFile) {
        if (!release) {
          release = () => realRename(from, to, callback);
          reached();
          return;
        }
        if (released) writesAfter++;
        else writesWhileHeld++;
      }
      realRename(from, to, callback);
    }) as typeof fs.rename;
    nodeFs.renameSync = (from: fs.PathLike, to: fs.PathLike): void => {
      if (release && !released && String(to) === checkpointFile) writesWhileHeld++;
      realRenameSync(from, to);
    };
    try {
      for (let i = 0; i < 3; i++) await store.append('r', 0, [{ body: Buffer.alloc(3000, i) }]); // a roll at each append after the first
      await store.settled();
      hold = true;
      await store.append('r', 0, [{ body: Buffer.alloc(3000, 3) }]); // rolls: its seal's checkpoint write is held at the rename
      await held;
      const segmentsBefore = store.describeTopic('r').channelInfo[0]!.segments;
      let passDone = false;
      const pass = store.applyRetention().then((removed) => ((passDone = true), removed));
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(passDone, false, 'its checkpoint (the intent, first) waits for the seal\'s write');
      assert.equal(store.describeTopic('r').channelInfo[0]!.segments, segmentsBefore, 'and nothing is removed before the intent is written');
      assert.equal(writesWhileHeld, 0, 'nor is it written while the seal is writing it');
      released = true;
      release!();
      assert.ok((await pass) >= 1, 'the pass succeeded: its writes did not run into the seal\'s (the same temp file)');
      assert.ok(store.describeTopic('r').channelInfo[0]!.segments < segmentsBefore, 'the pass removed old segments');
      assert.equal(writesAfter, 2, 'the pass wrote its two checkpoints (the intent, then the one without the segments) after the seal\'s');
    } finally {
      nodeFs.rename = realRename;
      nodeFs.renameSync = realRenameSync;
    }
    const listed = (JSON.parse(fs.readFileSync(checkpointFile, 'utf8')) as { segments: Array<{ baseOffset: number }> }).segments.map((m) => m.baseOffset);
    const logs = segmentFiles(path.join(dir, 'topics', 'r', '0')).map((f) => Number(path.basename(f, '.log')));
    assert.deepEqual(listed, logs.slice(0, -1), 'the checkpoint lists exactly the sealed segments left');
    await store.append('r', 0, [{ body: 'after' }]); // the channel did not fail
    await store.close();
    assert.equal((await verifyStore(dir)).ok, true);
  });

  it('the files retention and a topic delete remove are freed off the event loop: the last close of a removed log and the topic folder\'s removal go through the thread pool', async () => {
    // Freeing a file's blocks is the slow part of deleting it (20–22 ms per 64 MiB segment on
    // the bench machine): it happens at the last close of an unlinked file, or at the unlink
    // of one nobody holds open.
    const dir = tempDir();
    const store = await openStore(dir, { compression: false });
    await store.createTopic('r', { channels: 1, segmentBytes: 4096, retentionBytes: 4096 });
    for (let i = 0; i < 6; i++) await store.append('r', 0, [{ body: Buffer.alloc(3000, i) }]);
    await store.settled();
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeFs = require('node:fs') as typeof fs;
    const { closeSync, close, rmSync } = nodeFs;
    const { rm } = nodeFs.promises;
    const channelDir = path.join(dir, 'topics', 'r', '0');
    const isSegmentLog = (fd: number): boolean => {
      try {
        const target = fs.readlinkSync(`/proc/self/fd/${fd}`);
        return target.startsWith(channelDir) && /\.log( \(deleted\))?$/.test(target);
      } catch {
        return false;
      }
    };
    const closedSync: number[] = [];
    const closedInPool: number[] = [];
    const removedInPool: string[] = [];
    const removedSync: string[] = [];
    nodeFs.closeSync = (fd: number): void => {
      if (isSegmentLog(fd)) closedSync.push(fd);
      closeSync(fd);
    };
    nodeFs.close = ((fd: number, callback: (err: NodeJS.ErrnoException | null) => void): void => {
      if (isSegmentLog(fd)) closedInPool.push(fd);
      close(fd, callback);
    }) as typeof fs.close;
    nodeFs.rmSync = (target: fs.PathLike, options?: fs.RmOptions): void => {
      removedSync.push(String(target));
      rmSync(target, options);
    };
    nodeFs.promises.rm = async (target: fs.PathLike, options?: fs.RmOptions): Promise<void> => {
      removedInPool.push(String(target));
      return rm(target, options);
    };
    try {
      const segmentsBefore = store.describeTopic('r').channelInfo[0]!.segments;
      const removed = await store.applyRetention();
      assert.ok(removed >= 2 && removed === segmentsBefore - store.describeTopic('r').channelInfo[0]!.segments, `removed ${removed}`);
      assert.equal(closedInPool.length, removed, 'each removed log closed through the thread pool');
      assert.deepEqual(closedSync, [], 'none closed on the event loop');
      await store.deleteTopic('r');
      assert.equal(removedInPool.length, 1);
      assert.match(removedInPool[0]!, /\.deleted-r-/);
      assert.deepEqual(removedSync.filter((f) => f.includes('.deleted-r-')), []);
      assert.equal(fs.existsSync(removedInPool[0]!), false, 'the deleted topic\'s folder is gone');
    } finally {
      Object.assign(nodeFs, { closeSync, close, rmSync });
      nodeFs.promises.rm = rm;
    }
    await store.close();
  });

  it('a deleted topic\'s folder left by a crash is removed after open, through the thread pool, while the store serves; close stops it and the next open goes on', async () => {
    const dir = tempDir();
    let store = await openStore(dir);
    await store.createTopic('keep', { channels: 1 });
    await store.createTopic('gone', { channels: 2 });
    for (let i = 0; i < 20; i++) await store.append('gone', i % 2, [{ body: bodyFor('g', i, 4000) }]);
    await store.close();
    // A crash right after deleteTopic's rename: the folder is renamed away, its files still there.
    const topicsDir = path.join(dir, 'topics');
    const leftover = path.join(topicsDir, '.deleted-gone-1700000000000');
    fs.renameSync(path.join(topicsDir, 'gone'), leftover);
    fs.mkdirSync(path.join(topicsDir, '.creating-half')); // an interrupted create
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeFs = require('node:fs') as typeof fs;
    const { rmSync } = nodeFs;
    const removedSync: string[] = [];
    nodeFs.rmSync = (target: fs.PathLike, options?: fs.RmOptions): void => {
      removedSync.push(String(target));
      rmSync(target, options);
    };
    try {
      store = await openStore(dir);
      // Closed at once: nothing of the leftover removed yet, nor after the close.
      await store.close();
      assert.ok(fs.existsSync(path.join(leftover, '0')) && fs.existsSync(path.join(leftover, '1')), 'close stopped the removal before its first file');
      assert.equal(fs.existsSync(path.join(topicsDir, '.creating-half')), false, 'an interrupted create is removed at open');
      store = await openStore(dir);
      assert.deepEqual(store.listTopics().map((t) => t.name), ['keep']);
      await store.createTopic('gone', { channels: 1 }); // the name is free while the old files go
      await store.append('gone', 0, [{ body: new TextEncoder().encode('new') }]);
      await store.settled();
      assert.equal(fs.existsSync(leftover), false, 'the leftover folder is gone once the store has settled');
      assert.deepEqual(removedSync.filter((f) => f.includes('.deleted-')), [], 'not removed on the event loop');
      assert.equal(new TextDecoder().decode((await store.read('gone', 0, { offset: 0 }))[0]!.body), 'new');
    } finally {
      nodeFs.rmSync = rmSync;
    }
    await store.close();
  });

  it('deletes whole old segments by total bytes and by age, the active one only by age', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { segmentBytes: 8 * 1024 });
    await store.createTopic('bytes', { channels: 1, retentionBytes: 40 * 1024 });
    await store.createTopic('age', { channels: 1, retentionMs: 60_000 });
    for (let i = 0; i < 60; i++) {
      await store.append('bytes', 0, [{ body: bodyFor('r', i, 2000) }, { body: bodyFor('s', i, 2000) }]);
      await store.append('age', 0, [{ body: bodyFor('r', i, 2000) }]);
    }
    await store.settled(); // retention deletes only sealed segments; the last roll's seal runs in the background
    const before = store.describeTopic('bytes').channelInfo[0]!;
    assert.ok(before.bytes > 40 * 1024);
    assert.ok((await store.applyRetention(Date.now())) > 0);
    const after = store.describeTopic('bytes').channelInfo[0]!;
    assert.ok(after.bytes <= 40 * 1024 + 8 * 1024, `bytes ${after.bytes}`);
    assert.ok(after.logStartOffset > 0);
    assert.equal(after.highWatermark, before.highWatermark);
    const first = await store.read('bytes', 0, { offset: after.logStartOffset, maxMessages: 1 });
    assert.equal(first[0]!.offset, after.logStartOffset);
    assert.equal((await rejection(store.read('bytes', 0, { offset: 0 }))).code, 'OFFSET_OUT_OF_RANGE');
    const ageBefore = store.describeTopic('age').channelInfo[0]!;
    assert.equal(store.describeTopic('age').channelInfo[0]!.logStartOffset, 0, 'young segments stay');
    await store.applyRetention(Date.now() + 3_600_000);
    const ageAfter = store.describeTopic('age').channelInfo[0]!;
    assert.equal(ageAfter.segments, 1, 'only a new, empty active segment is left');
    assert.equal(ageAfter.highWatermark, ageBefore.highWatermark);
    assert.equal(store.describeTopic('bytes').channelInfo[0]!.highWatermark, before.highWatermark, 'size bound alone: the active segment stays');
    await store.close();
    const reopened = await openStore(dir, { segmentBytes: 8 * 1024 });
    assert.equal(reopened.describeTopic('bytes').channelInfo[0]!.logStartOffset, after.logStartOffset);
    await reopened.close();
  });
});

describe('engine store: concurrency', () => {
  it('many concurrent appenders on several channels get dense, ordered offsets', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { segmentBytes: 64 * 1024 });
    const channels = 3;
    await store.createTopic('c', { channels });
    const appenders = 12;
    const rounds = 40;
    const seen: Array<Array<{ appender: number; round: number; baseOffset: number; count: number }>> = Array.from({ length: channels }, () => []);
    await Promise.all(
      Array.from({ length: appenders }, async (_, a) => {
        for (let round = 0; round < rounds; round++) {
          const channel = (a + round) % channels;
          const count = 1 + ((a * 7 + round) % 5);
          const messages = Array.from({ length: count }, (_, i) => ({ body: `${a}:${round}:${i}` }));
          const r = await store.append('c', channel, messages);
          seen[channel]!.push({ appender: a, round, baseOffset: r.baseOffset, count });
        }
      }),
    );
    for (let c = 0; c < channels; c++) {
      const list = seen[c]!.sort((x, y) => x.baseOffset - y.baseOffset);
      let expected = 0;
      for (const s of list) {
        assert.equal(s.baseOffset, expected, `channel ${c} offsets are dense`);
        expected += s.count;
      }
      const stored = await store.read('c', c, { offset: 0, maxMessages: 100_000, maxBytes: 64 * 1024 * 1024 });
      assert.equal(stored.length, expected);
      for (const s of list) {
        for (let i = 0; i < s.count; i++) assert.equal(stored[s.baseOffset + i]!.body.toString(), `${s.appender}:${s.round}:${i}`);
      }
      // Each appender's own appends land in the order it made them.
      for (let a = 0; a < appenders; a++) {
        const mine = list.filter((s) => s.appender === a).map((s) => s.round);
        assert.deepEqual(mine, [...mine].sort((x, y) => x - y));
      }
    }
    await store.close();
  });
});

describe('engine tail cache', () => {
  it('holds at most its byte bound, only contiguous batches, and misses outside them', () => {
    const cache = new TailCache(1000);
    const batch = (n: number): Uint8Array => new Uint8Array(n).fill(n & 0xff);
    cache.add(batch(400), 0, 4);
    cache.add(batch(400), 4, 8);
    assert.equal(cache.heldBytes, 800);
    cache.add(batch(300), 8, 9); // 1,100 > 1,000: the oldest goes
    assert.equal(cache.heldBytes, 700);
    assert.equal(cache.read(3, 1), null, 'evicted offsets miss');
    const r = cache.read(5, 1)!; // maxBytes below one batch: still one whole batch
    assert.deepEqual([r.batchCount, r.nextOffset, r.bytes.length, r.bytes[0]], [1, 8, 400, 400 & 0xff]);
    const both = cache.read(4, 10_000)!;
    assert.deepEqual([both.batchCount, both.nextOffset, both.bytes.length], [2, 9, 700]);
    assert.equal(cache.read(9, 1), null, 'past the end misses');
    cache.add(batch(10), 20, 21); // a gap: start over rather than serve around it
    assert.equal(cache.read(8, 1), null);
    assert.equal(cache.heldBytes, 10);
    cache.add(batch(2000), 21, 22); // larger than the bound: nothing held
    assert.equal(cache.heldBytes, 0);
    assert.equal(cache.read(21, 1), null);
  });

  it('in its ring, never hands out bytes another batch overwrote: 20,000 random batches checked against a plain list', () => {
    const bound = 1000;
    const cache = new TailCache(bound);
    const all: Array<{ base: number; bytes: Buffer }> = [];
    let next = 0;
    let seed = 7;
    const random = (n: number): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
    for (let i = 0; i < 20_000; i++) {
      const bytes = Buffer.alloc(1 + random(i % 100 === 0 ? 1200 : 400), i & 0xff);
      if (bytes.length >= 4) bytes.writeUInt32LE(i, 0); // a per-batch stamp where it fits
      const count = 1 + random(3);
      cache.add(bytes, next, next + count);
      all.push({ base: next, bytes });
      next += count;
      assert.ok(cache.heldBytes <= bound, `held ${cache.heldBytes} bytes`);
      if (bytes.length <= bound) assert.ok(cache.read(next - 1, 1), 'the newest batch is always held when it fits');
      // Every offset the cache answers for comes back as exactly the batches the list holds.
      for (let k = all.length - 1; k >= 0 && k >= all.length - 12; k--) {
        const got = cache.read(all[k]!.base, 1);
        if (!got) break;
        assert.ok(Buffer.from(got.bytes).equals(all[k]!.bytes), `batch ${k} read back after batch ${i}`);
      }
    }
  });
});

// helper-35: the offset index is sparse (an entry per 4 KiB of log or more), and a read ran to
// the next batch start it knows, returning every whole batch on the way: 14 batches for a
// maxBytes of 300 (read() then 28 messages).
describe('engine reads: maxBytes', () => {
  it('readBatches and read stop at maxBytes after the first batch (always one whole batch); a maxBytes that is not a whole number ≥ 1 is refused', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { compression: false });
    try {
      await store.createTopic('t', { channels: 1 });
      for (let b = 0; b < 100; b++) await store.append('t', 0, [{ body: Buffer.alloc(100, b) }, { body: Buffer.alloc(100, b + 1) }]); // batches of one size
      const one = await store.readBatches('t', 0, { offset: 0, maxBytes: 300 });
      const batchBytes = one.bytes.readUInt32LE(28);
      assert.ok(batchBytes > 200 && batchBytes < 400, `a batch of two 100-byte bodies is ${batchBytes} bytes`);
      assert.deepEqual([one.batchCount, one.bytes.length, one.nextOffset], [1, batchBytes, 2], 'one batch: the first is always whole');
      for (const maxBytes of [1000, 2500, 4000]) {
        // Up to maxBytes (or less: up to a batch start the offset index knows within it).
        const read = await store.readBatches('t', 0, { offset: 10, maxBytes });
        assert.ok(read.batchCount >= 1 && read.bytes.length <= maxBytes, `maxBytes ${maxBytes}: ${read.batchCount} batches, ${read.bytes.length} bytes`);
      }
      assert.equal((await store.read('t', 0, { offset: 0, maxBytes: 300 })).length, 2, 'read: one batch');
      for (const bad of [Number.NaN, 0, -5, 1.5]) assert.equal((await rejection(store.readBatches('t', 0, { offset: 0, maxBytes: bad }))).code, 'INVALID_ARGUMENT', String(bad));
    } finally {
      await store.close();
    }
  });
});

// helper-35 (from reading the code): a segment's key index cap was checked only at the first
// batch of each write of a group commit, so one group of many small keyed records took a key
// index far past its 1,000,000 entries (memory, and a file that size).
describe('engine key index cap within one group commit', () => {
  it('a group commit that would take the key index past its cap rolls the segment part-way; every key is found after', async function () {
    this.timeout(120_000);
    const dir = tempDir();
    const store = await openStore(dir, { compression: false });
    try {
      await store.createTopic('t', { channels: 1 });
      const batches = Array.from({ length: 40 }, (_, b) =>
        encodeBatch(Array.from({ length: 10_000 }, (_, i) => ({ key: `k${b}-${i}`, headers: { traceid: `t${b}` }, body: '' })), { codec: null }).batch,
      );
      await store.appendBatch('t', 0, batches[0]!.slice()); // the first write: the group after it holds the rest
      await Promise.all(batches.slice(1).map((batch) => store.appendBatch('t', 0, batch)));
      for (const key of ['k0-0', 'k17-5000', 'k39-9999']) assert.equal((await store.lookupKey('t', key)).length, 1, key);
    } finally {
      await store.close();
    }
    // Every segment's key index written (a clean close writes the active one's too).
    const kix = segmentFiles(path.join(dir, 'topics', 't', '0'), 'kix');
    const entries = kix.map((file) => fs.readFileSync(file).readUInt32LE(28));
    assert.ok(kix.length >= 2, `rolled: ${kix.length} key index files`);
    for (const count of entries) assert.ok(count <= limits.keyIndexEntryCountMax, `a key index of ${count} entries`);
    assert.equal(entries.reduce((a, b) => a + b, 0), 40 * 10_000 * 3, 'msgId, key and traceid of every record');
  });
});

describe('engine producer state', () => {
  it('forgets the least recently used producer past the limit; a producer that keeps appending is never the one forgotten', () => {
    const states = new ProducerStates();
    const max = limits.producerStateCountMax;
    states.record(0, 0, 1, 0); // the busy one: first in, then used again and again
    for (let id = 1; id < max; id++) states.record(id, 0, 1, id);
    for (let seq = 1; seq <= 3; seq++) states.record(0, seq, 1, max + seq); // recorded last several times in a row
    states.record(max, 0, 1, 2 * max); // one more producer: the least recently used (1) goes
    const ids = new Set(states.entries().map((e) => e[0]));
    assert.equal(ids.size, max);
    assert.ok(ids.has(0), 'the busy producer is kept');
    assert.ok(!ids.has(1), 'the least recently used is forgotten');
    assert.ok(ids.has(2) && ids.has(max));
    assert.equal(states.check({ producerId: 0, producerSequence: 2, recordCount: 1 } as never).kind, 'duplicate');
    assert.equal(states.check({ producerId: 0, producerSequence: 4, recordCount: 1 } as never).kind, 'new');
  });


  // helper-34: a resend from a producer evicted meanwhile (its reply lost while more than
  // 10,000 others wrote to the channel) was taken for a new producer's first batch and stored twice.
  it('an evicted producer\'s resend is refused as a duplicate sequence (not stored again); its next sequence is a new batch', () => {
    const states = new ProducerStates();
    const max = limits.producerStateCountMax;
    states.record(1, 0, 3, 0); // sequences 0..2
    for (let id = 2; id <= max + 1; id++) states.record(id, 0, 1, id); // 1 is the least recently used: evicted
    assert.ok(!states.entries().some((e) => e[0] === 1), 'evicted');
    assert.deepEqual(states.check({ producerId: 1, producerSequence: 0, recordCount: 3 } as never), { kind: 'stale', lastSeq: 2 });
    assert.equal(states.check({ producerId: 1, producerSequence: 2, recordCount: 1 } as never).kind, 'stale');
    assert.equal(states.check({ producerId: 1, producerSequence: 3, recordCount: 1 } as never).kind, 'new');
    assert.equal(states.check({ producerId: max + 5, producerSequence: 0, recordCount: 1 } as never).kind, 'new', 'a producer never seen is new');
  });

  it('through the store: the resend of an evicted producer fails with DUPLICATE_SEQUENCE and appends nothing; a retry of a known one is answered with its broker time', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    try {
      await store.createTopic('t', { channels: 1 });
      const first = encodeBatch([{ body: 'x' }], { producerId: 1, producerSequence: 0 }).batch;
      const stored = await store.appendBatch('t', 0, first.slice());
      const again = await store.appendBatch('t', 0, first.slice());
      assert.deepEqual([again.duplicate, again.baseOffset, again.brokerTimestamp], [true, stored.baseOffset, stored.brokerTimestamp], 'the original broker time, not 0');
      const others = Array.from({ length: limits.producerStateCountMax }, (_, i) => store.appendBatch('t', 0, encodeBatch([{ body: 'o' }], { producerId: 2 + i, producerSequence: 0 }).batch));
      await Promise.all(others);
      const highWatermark = store.channelState('t', 0).highWatermark;
      assert.equal((await rejection(store.appendBatch('t', 0, first.slice()))).code, 'DUPLICATE_SEQUENCE');
      assert.equal(store.channelState('t', 0).highWatermark, highWatermark, 'nothing appended');
      assert.equal((await store.appendBatch('t', 0, encodeBatch([{ body: 'y' }], { producerId: 1, producerSequence: 1 }).batch)).duplicate, false, 'its next sequence is stored');
    } finally {
      await store.close();
    }
  });

  it('the checkpoint lists only durable batches of a producer, never one still being written', async () => {
    const states = new ProducerStates();
    states.record(7, 0, 10, 100); // recovered from the log: durable
    let finish!: () => void;
    const written = new Promise<void>((resolve) => (finish = resolve));
    states.record(7, 10, 10, 110, written);
    assert.deepEqual(states.entries(), [[7, 0, 9, 100, 10]], 'the batch being written is not vouched for');
    finish();
    await written; // durable: the states learn it as the promise resolves
    assert.deepEqual(states.entries(), [
      [7, 0, 9, 100, 10],
      [7, 10, 19, 110, 10],
    ]);
  });
});

describe('engine key index: slots grow with the entries', () => {
  it('a builder that doubled its slots writes exactly the file of one made with the final slot count, and finds every key', () => {
    const growing = new KeyIndexBuilder(0, limits.keyIndexSlotCountMin, 1 << 13);
    const hashes = Array.from({ length: 5000 }, (_, i) => xxh32(Buffer.from(`key-${i % 1700}`), 2));
    hashes.forEach((hash, i) => growing.add(hash, i * 10, i, 1000 + i));
    assert.equal(growing.slotCount, 4096, 'doubled from 64 each time entries passed two a slot');
    const capped = new KeyIndexBuilder(0, limits.keyIndexSlotCountMin, 1024);
    hashes.forEach((hash, i) => capped.add(hash, i * 10, i, 1000 + i));
    assert.equal(capped.slotCount, 1024, 'never past its maximum');
    const fixed = new KeyIndexBuilder(0, growing.slotCount);
    hashes.forEach((hash, i) => fixed.add(hash, i * 10, i, 1000 + i));
    assert.ok(growing.encode(4096).equals(fixed.encode(4096)), 'same bytes');
    for (const i of [0, 1, 1699, 1700, 4999]) {
      const offsets = growing.lookup(hashes[i]!, {}, 10).map((h) => h.offset);
      const expected = [...Array(5000).keys()].filter((n) => n % 1700 === i % 1700).reverse();
      assert.deepEqual(offsets.filter((o) => expected.includes(o)), expected, `key-${i % 1700}, newest first`);
    }
  });

  it('addHashed (the encoder\'s hashes, a batch at a time) builds exactly what add() one entry at a time does, through doublings, the cap and chunk ends', async () => {
    await loadChecksum();
    for (const max of [1 << 13, 256]) {
      const one = new KeyIndexBuilder(1000, limits.keyIndexSlotCountMin, max);
      const batched = new KeyIndexBuilder(1000, limits.keyIndexSlotCountMin, max);
      let offset = 1000;
      let position = 0;
      // Entries per batch: totals land exactly on two a slot (128, 256, 512, 1,024, 2,048 —
      // where add() does not double yet), cross 4,096-entry chunk ends mid-batch, and one batch has none.
      for (const [b, entries] of [1, 0, 127, 128, 256, 1, 511, 1024, 4096, 3000, 5].entries()) {
        const pairs: number[] = [];
        for (let k = 0; k < entries; k++) pairs.push(k >> 1, xxh32(Buffer.from(`${k & 1 ? 'key' : 'id'}-${(offset + (k >> 1)) % 977}`), 1 + (k & 1)));
        const timestamp = 5_000 + b * 7;
        for (let p = 0; p < pairs.length; p += 2) one.add(pairs[p + 1]!, position, offset + pairs[p]!, timestamp);
        batched.addHashed(Uint32Array.from(pairs), pairs.length / 2, position, offset, timestamp);
        offset += (entries + 1) >> 1;
        position += 100 + entries;
        assert.equal(batched.entryCount, one.entryCount);
        assert.equal(batched.slotCount, one.slotCount, `slots after ${one.entryCount} entries (max ${max})`);
        assert.ok(batched.encode(position).equals(one.encode(position)), `same bytes after ${one.entryCount} entries (max ${max})`);
      }
    }
  });

  it('a rolled segment\'s key index is hashed a slice at a time, other work running between, into the same file as one go', async () => {
    await loadChecksum();
    const builder = new KeyIndexBuilder(7, limits.keyIndexSlotCountMin, 1 << 13);
    for (let i = 0; i < 20_000; i++) builder.add(xxh32(Buffer.from(`id-${i}`), 1), i * 3, 7 + i, 9_000 + i);
    const whole = builder.encode(60_000);
    const parts = builder.parts(60_000);
    assert.equal(parts.pieces.reduce((n, p) => n + p.length, 0), whole.length);
    let turns = 0;
    let hashing = true;
    const other = (): void => {
      turns++;
      if (hashing) setImmediate(other);
    };
    setImmediate(other);
    const sliceBytes = 64 * 1024;
    await parts.checksumInSlices(sliceBytes);
    hashing = false;
    assert.ok(turns >= Math.floor(whole.length / sliceBytes) - 1, `other work ran between slices (${turns} turns for ${whole.length} bytes)`);
    assert.ok(Buffer.concat(parts.pieces).equals(whole), 'the same bytes, checksum included');
    assert.notEqual(whole.readBigUInt64LE(32), 0n);
  });

  it('a segment that rolled full hands its slot count on to the next one; one that rolled by age does not; verify agrees', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { compression: false });
    await store.createTopic('full', { channels: 1, segmentBytes: 64 * 1024 });
    await store.createTopic('aged', { channels: 1, segmentMs: 1 });
    const channelDir = (topic: string): string => path.join(dir, 'topics', topic, '0');
    const keyed = (n: number, from: number): Array<{ key: string; body: Buffer }> => Array.from({ length: n }, (_, i) => ({ key: `k-${from + i}`, body: bodyFor('slots', from + i, 100) }));
    let sent = 0;
    while (segmentFiles(channelDir('full')).length < 2) {
      await store.append('full', 0, keyed(100, sent));
      sent += 100;
    }
    await store.append('full', 0, keyed(3, sent)); // the new segment: three messages, six entries
    // 'aged': one batch that grows its key index, then single messages until the age rolls it
    // (segmentMs 1: the next append a millisecond or more later).
    await store.append('aged', 0, keyed(400, 0));
    for (let i = 0; segmentFiles(channelDir('aged')).length < 2; i++) await store.append('aged', 0, keyed(1, 400 + i));
    await store.close();
    const slotCount = (file: string): number => fs.readFileSync(file).readUInt32LE(24);
    const [fullFirst, fullNext] = segmentFiles(channelDir('full'), 'kix').map(slotCount);
    assert.ok(fullFirst! > limits.keyIndexSlotCountMin, `the full segment's index grew (${fullFirst} slots)`);
    assert.equal(fullNext, fullFirst, 'the next segment started at the slots the full one grew to');
    const [agedFirst, agedNext] = segmentFiles(channelDir('aged'), 'kix').map(slotCount);
    assert.ok(agedFirst! > limits.keyIndexSlotCountMin, `the aged segment's index grew (${agedFirst} slots)`);
    assert.equal(agedNext, limits.keyIndexSlotCountMin, 'a segment after a roll by age starts small');
    const report = await verifyStore(dir);
    assert.equal(report.ok, true, JSON.stringify(report.faults));
    const again = await openStore(dir);
    assert.equal((await again.lookupKey('full', `k-${sent + 2}`))[0]?.offset, sent + 2, 'the pre-sized index finds its keys');
    assert.equal((await again.lookupKey('full', 'k-0'))[0]?.offset, 0);
    await again.close();
  });

  it('a segment with a few messages gets a small .kix, and a 64-channel topic does not cost 64 MiB of index', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('wide', { channels: 64 });
    for (let c = 0; c < 64; c++) await store.append('wide', c, [{ key: `k${c}`, body: 'x' }]);
    await store.close();
    const kix = path.join(dir, 'topics', 'wide', '5', '00000000000000000000.kix');
    assert.equal(fs.statSync(kix).size, 64 + limits.keyIndexSlotCountMin * 4 + 2 * 20, 'header, the first slots, two entries (msgId and key)');
    const again = await openStore(dir);
    assert.equal((await again.lookupKey('wide', 'k5'))[0]?.channel, 5);
    await again.close();
  });
});

describe('engine store: the folder itself', () => {
  it('a second open in the same process is refused and says so; store.json that is not ours is refused before anything is read', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    const twice = await rejection(openStore(dir));
    assert.equal(twice.code, 'STORE_LOCKED');
    assert.match(twice.message, /this process \(pid \d+\): it is already open here/);
    await store.close();
    const files = (): string[] => fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
    for (const text of ['{bad', '{"format":"kafka","version":2}', '{"format":"waymark","version":5}']) {
      fs.writeFileSync(path.join(dir, 'store.json'), text);
      const before = files();
      // open, verify, repair and dump alike: a format this build does not know would be misread
      // (a build of format 3 dumped a format-4 store and called each segment's end damage: helper-56).
      for (const [what, attempt] of [['open', () => openStore(dir)], ['verify', () => verifyStore(dir)], ['repair', () => repairStore(dir)], ['dump', () => dumpPath(dir, {}, () => undefined)]] as const) {
        const err = await rejection(attempt());
        assert.equal(err.code, 'CORRUPT_FILE', `${what}: ${text}`);
        assert.match(err.message, /store\.json/);
      }
      assert.deepEqual(files(), before, 'nothing written');
      assert.equal(fs.readFileSync(path.join(dir, 'store.json'), 'utf8'), text);
    }
    fs.rmSync(path.join(dir, 'store.json'));
    await (await openStore(dir)).close();
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'store.json'), 'utf8')), { format: 'waymark', version: 4 }, 'written again');
  });

  it('a damaged store.json or topic.json is quoted printably: one line, no control bytes, no raw invalid UTF-8 (helper-44)', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1 });
    await store.close();
    const unprintable = /[\u0000-\u001f\u007f-\u009f\ufffd]/;
    fs.writeFileSync(path.join(dir, 'topics', 't', 'topic.json'), 'hello world\n\u001b[31m');
    const faults = (await verifyStore(dir)).faults.filter((f) => f.file.endsWith('topic.json'));
    assert.equal(faults.length, 1);
    assert.match(faults[0]!.what, /hello world\\u000a\\u001b/);
    assert.doesNotMatch(faults[0]!.what, unprintable);
    fs.writeFileSync(path.join(dir, 'store.json'), Buffer.from([0xff, 0xfe, 0x0a, 0x00, 0x1b, 0x41]));
    for (const attempt of [() => openStore(dir), () => verifyStore(dir)]) {
      const err = await rejection(attempt());
      assert.equal(err.code, 'CORRUPT_FILE');
      assert.match(err.message, /store\.json: .*\\ufffd/);
      assert.doesNotMatch(err.message, unprintable);
    }
  });

  for (const version of [1, 2]) {
    it(`a store of format ${version} (${version === 1 ? 'no zeroed tails' : 'no end marks'}) is read, and marked 4 at open before anything is written`, async () => {
      const dir = tempDir();
      let store = await openStore(dir);
      await store.createTopic('t', { channels: 1 });
      await store.append('t', 0, [{ body: 'one' }]);
      await store.close();
      fs.writeFileSync(path.join(dir, 'store.json'), `{"format":"waymark","version":${version}}`);
      store = await openStore(dir);
      try {
        assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'store.json'), 'utf8')), { format: 'waymark', version: 4 });
        assert.deepEqual((await store.read('t', 0, { offset: 0 })).map((m) => m.body.toString()), ['one']);
      } finally {
        await store.close();
      }
    });
  }

  it('repair of a store of format 2 marks it 4 before it writes the end marks of format 4 (a build of format 2 would take them for damage)', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1, segmentBytes: 4096 });
    for (let i = 0; i < 6; i++) await store.append('t', 0, [{ body: bodyFor('f2', i, 1500) }]);
    await store.close();
    // What a format-2 build leaves: the same files without end marks.
    const logs = segmentFiles(path.join(dir, 'topics', 't', '0'));
    assert.ok(logs.length >= 2, 'sealed segments and an active one');
    for (const log of logs) {
      const bytes = fs.readFileSync(log);
      assert.equal(bytes.subarray(bytes.length - 8).toString('latin1'), 'WaymEnd!');
      fs.truncateSync(log, bytes.length - 16);
    }
    fs.writeFileSync(path.join(dir, 'store.json'), '{"format":"waymark","version":2}');
    const report = await repairStore(dir);
    assert.deepEqual(report.storeMarked, { from: 2, to: 4 });
    assert.deepEqual(report.dropped, []);
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'store.json'), 'utf8')), { format: 'waymark', version: 4 });
    assert.equal((await verifyStore(dir)).ok, true);
    const again = await repairStore(dir);
    assert.equal(again.storeMarked, null, 'a store of this format is not marked again');
    const reopened = await openStore(dir);
    try {
      assert.deepEqual(reopened.recoveryReport, []);
      assert.equal((await reopened.read('t', 0, { offset: 0 })).length, 6);
    } finally {
      await reopened.close();
    }
  });
});

describe('engine store: a topic re-created while its namesake is being deleted', () => {
  it('gets nothing of the deleted one: its appends in flight rolled segments into the new topic\'s folder', async () => {
    const dir = tempDir();
    let store = await openStore(dir);
    await store.createTopic('t', { channels: 1, segmentBytes: 4096 });
    const old = Array.from({ length: 20 }, (_, i) => store.append('t', 0, [{ body: Buffer.concat([Buffer.from('OLD '), bodyFor('old', i, 1000)]) }]).catch((err: { code?: string }) => err.code));
    const deleted = store.deleteTopic('t');
    await store.createTopic('t', { channels: 1 });
    await deleted;
    await Promise.all(old);
    for (let i = 0; i < 10; i++) assert.equal((await store.append('t', 0, [{ body: `NEW ${i}` }])).baseOffset, i);
    await store.close();
    const findings: string[] = [];
    store = await openStore(dir, { onRecovery: (f) => findings.push(f.reason) });
    assert.deepEqual(findings, [], 'nothing to recover');
    assert.equal(store.channelState('t', 0).highWatermark, 10);
    assert.deepEqual((await store.read('t', 0, { offset: 0, maxMessages: 100 })).map((m) => m.body.toString()), Array.from({ length: 10 }, (_, i) => `NEW ${i}`));
    await store.close();
  });
});

describe('engine store: key lookups are bounded by bytes too', () => {
  it('maxBytes keeps the newest messages that fit (the first always); a hundred 8 MiB messages under one key were read whole, synchronously', async () => {
    const store = await openStore(tempDir());
    await store.createTopic('k', { channels: 2 });
    // One channel: newest first is by broker time, then offset (two channels' appends can share a millisecond).
    for (let i = 0; i < 5; i++) await store.append('k', 0, [{ key: 'same', body: Buffer.alloc(1024, i) }]);
    const all = await store.lookupKey('k', 'same');
    assert.deepEqual(all.map((m) => m.body[0]), [4, 3, 2, 1, 0], 'newest first');
    assert.deepEqual((await store.lookupKey('k', 'same', { maxBytes: 2500 })).map((m) => m.body[0]), [4, 3]);
    assert.deepEqual((await store.lookupKey('k', 'same', { maxBytes: 10 })).map((m) => m.body[0]), [4], 'at least one');
    assert.equal((await rejection(store.lookupKey('k', 'same', { maxBytes: 0 }))).code, 'INVALID_ARGUMENT');
    await store.close();
  });
});

describe('engine store: progress of open and close', () => {
  it('onProgress counts topics opened and channels closed, ending with done = total (a large store said nothing for 40 s)', async () => {
    const dir = tempDir();
    const first = await openStore(dir);
    for (const name of ['a', 'b', 'c']) await first.createTopic(name, { channels: 2 });
    await first.close();
    const seen: string[] = [];
    const store = await openStore(dir, { onProgress: (p) => seen.push(`${p.phase} ${p.done}/${p.total}`) });
    assert.deepEqual(seen, ['open 0/3', 'open 1/3', 'open 2/3', 'open 3/3']);
    seen.length = 0;
    await store.close();
    assert.deepEqual(seen, ['close 0/6', 'close 1/6', 'close 2/6', 'close 3/6', 'close 4/6', 'close 5/6', 'close 6/6']);
  });
});

describe('engine store: read options', () => {
  it('reads from the log start when no offset is given, and refuses maxMessages or maxBytes below 1', async () => {
    const store = await openStore(tempDir());
    try {
      await store.createTopic('t', { channels: 1 });
      await store.append('t', 0, [{ body: 'a' }, { body: 'b' }]);
      assert.deepEqual((await store.read('t', 0)).map((m) => m.body.toString()), ['a', 'b']);
      assert.equal((await rejection(store.read('t', 0, { maxMessages: 0 }))).code, 'INVALID_ARGUMENT');
      assert.equal((await rejection(store.read('t', 0, { maxBytes: 0 }))).code, 'INVALID_ARGUMENT');
      assert.equal((await rejection(store.read('t', 0, { offset: -1 }))).code, 'OFFSET_OUT_OF_RANGE');
    } finally {
      await store.close();
    }
  });
});

describe('engine store: retention of an idle channel', () => {
  for (const sync of ['batch', 'interval', 'none'] as const) {
    it(`an active segment whose every record is past retentionMs is rolled and deleted; offsets go on from the high watermark (sync=${sync})`, async () => {
      const dir = tempDir();
      const channelDir = path.join(dir, 'topics', 'idle', '0');
      let store = await openStore(dir, { sync });
      await store.createTopic('idle', { channels: 2, retentionMs: 60_000 });
      await store.append('idle', 0, [{ body: 'a' }, { body: 'b' }]);
      await store.append('idle', 0, [{ body: 'c' }]);
      await store.close();
      // Reopened after a clean close: the active segment has index files on disk too.
      store = await openStore(dir, { sync });
      try {
        assert.equal(await store.applyRetention(Date.now()), 0, 'within retentionMs: kept');
        const later = Date.now() + 3_600_000;
        assert.equal(await store.applyRetention(later), 1);
        const [idle, empty] = store.describeTopic('idle').channelInfo;
        assert.deepEqual(idle, { channel: 0, logStartOffset: 3, highWatermark: 3, bytes: 0, segments: 1 });
        assert.deepEqual(empty, { channel: 1, logStartOffset: 0, highWatermark: 0, bytes: 0, segments: 1 }, 'an empty channel is left as it is');
        assert.deepEqual(fs.readdirSync(channelDir).filter((f) => !f.startsWith('checkpoint')), ['00000000000000000003.log'], 'every file of the old segment is gone');
        assert.equal((await rejection(store.read('idle', 0, { offset: 0 }))).code, 'OFFSET_OUT_OF_RANGE');
        assert.deepEqual(await store.read('idle', 0), []);
        assert.equal(await store.applyRetention(later), 0, 'an empty active segment stays');
        assert.equal((await store.append('idle', 0, [{ body: 'd' }])).baseOffset, 3);
      } finally {
        await store.close();
      }
      store = await openStore(dir, { sync });
      assert.deepEqual(store.channelState('idle', 0), { logStartOffset: 3, highWatermark: 4 });
      assert.deepEqual((await store.read('idle', 0)).map((m) => [m.offset, m.body.toString()]), [[3, 'd']]);
      await store.close();
    });
  }
});

describe('engine store: retention of sealed segments and the active one together', () => {
  // helper-49: with every segment expired, the first pass removed the sealed ones and left the
  // active one for the next pass (30 s later): the checkpoint intent's cut asked whether the
  // active segment was the last one left before the others had gone.
  it('one pass removes every expired segment, the active one included', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { segmentBytes: 4096, compression: false });
    try {
      await store.createTopic('old', { channels: 1, retentionMs: 60_000 });
      for (let i = 0; i < 5; i++) await store.append('old', 0, [{ body: Buffer.alloc(3000, i) }]); // a roll at each append after the first
      await store.settled();
      assert.ok(store.describeTopic('old').channelInfo[0]!.segments >= 5);
      assert.ok((await store.applyRetention(Date.now() + 3_600_000)) >= 5);
      assert.deepEqual(store.describeTopic('old').channelInfo[0], { channel: 0, logStartOffset: 5, highWatermark: 5, bytes: 0, segments: 1 });
    } finally {
      await store.close();
    }
  });
});

describe('engine store: out of file descriptors', () => {
  it('a topic that cannot open all its channels is not left half made: STORAGE_FAILED says why, nothing stays on disk, the name can be created again', () => {
    const dir = tempDir();
    const engine = path.join(__dirname, '..', 'engine', 'index.js');
    // A child under `ulimit -n 64` asks for a 200-channel topic (one open segment per channel), then a 4-channel one of the same name.
    const script = `
      const { openStore } = require(${JSON.stringify(engine)});
      (async () => {
        const store = await openStore(${JSON.stringify(dir)});
        const first = await store.createTopic('wide', { channels: 200 }).then(() => 'created', (e) => e.code + ': ' + e.message);
        const left = require('fs').readdirSync(${JSON.stringify(path.join(dir, 'topics'))});
        const second = await store.createTopic('wide', { channels: 4 }).then(() => 'created', (e) => e.code);
        await store.append('wide', 3, [{ body: 'x' }]);
        await store.close();
        console.log(JSON.stringify({ first, left, second }));
      })();`;
    const run = spawnSync('bash', ['-c', `ulimit -n 64 && exec "${process.execPath}" -e "$SCRIPT"`], { env: { ...process.env, SCRIPT: script }, encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const out = JSON.parse(run.stdout) as { first: string; left: string[]; second: string };
    assert.match(out.first, /^STORAGE_FAILED: opening topic wide: too many open files \(EMFILE\); every segment file is kept open/);
    assert.deepEqual(out.left, [], 'no half-made topic folder');
    assert.equal(out.second, 'created');
    assert.equal(JSON.parse(fs.readFileSync(path.join(dir, 'topics', 'wide', 'topic.json'), 'utf8')).channels, 4);
  });
});

describe('engine store: deleteSegmentsBefore and settled() under a steady roll', () => {
  // Found by a review (helper-25): deleteSegmentsBefore waited while any seal ran, and with
  // segments rolling back to back there always was one: the __groups compaction stalled while
  // __groups grew. Both now wait for the work started before the call, not for a quiet moment.
  it('return while appends that roll at every batch go on', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { segmentBytes: 4096, compression: false });
    try {
      await store.createTopic('t', { channels: 1 });
      for (let i = 0; i < 4; i++) await store.append('t', 0, [{ body: randomBytes(3000) }]);
      const cap = 400; // appends per writer: reached only if the calls wait for the load to stop
      let stop = false;
      let appended = 0;
      const writer = async (): Promise<void> => {
        for (let i = 0; i < cap && !stop; i++, appended++) await store.append('t', 0, [{ body: randomBytes(3000) }]); // one segment each
      };
      const writers = Array.from({ length: 8 }, writer);
      const removed = await store.deleteSegmentsBefore('t', 0, 2);
      await store.settled();
      stop = true;
      await Promise.all(writers);
      assert.ok(removed >= 1, `removed ${removed}`);
      assert.ok(appended < 8 * cap, 'returned while the writers were still appending');
      assert.equal(store.channelState('t', 0).logStartOffset, 2);
    } finally {
      await store.close();
    }
  });
});

describe('engine store: seals keep up with rolls', () => {
  // helper-47: 4 KiB segments under a steady load rolled faster than they were sealed (index
  // files and a checkpoint each): 11,000 segments in 12 s, 10,600 open files, then EMFILE
  // failed the channel. A roll now waits while limits.sealsPendingMax seals are behind.
  it('no more than limits.sealsPendingMax rolled segments wait for their seal, however fast appends roll', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { segmentBytes: 4096, compression: false });
    try {
      await store.createTopic('t', { channels: 1 });
      const channel = path.join(dir, 'topics', 't', '0');
      let most = 0;
      const writer = async (): Promise<void> => {
        for (let i = 0; i < 40; i++) {
          await store.append('t', 0, [{ body: randomBytes(3000) }]); // one segment each
          const names = fs.readdirSync(channel);
          const unsealed = names.filter((n) => n.endsWith('.log')).length - 1 - names.filter((n) => n.endsWith('.kix')).length;
          most = Math.max(most, unsealed);
        }
      };
      await Promise.all(Array.from({ length: 8 }, writer));
      assert.ok(most <= limits.sealsPendingMax, `${most} segments waited for their seal at once`);
      await store.settled();
      const checkpoint = JSON.parse(fs.readFileSync(path.join(channel, 'checkpoint.json'), 'utf8')) as { segments: unknown[] };
      assert.equal(checkpoint.segments.length, segmentFiles(channel).length - 1, 'once settled, the checkpoint lists every sealed segment');
    } finally {
      await store.close();
    }
    assert.equal((await verifyStore(dir)).ok, true);
  });
});

describe('engine channel: seals, retention turns and settled() (helper-48)', () => {
  const options = (retentionBytes: number): ChannelOptions => ({ sync: 'batch', syncIntervalMs: 1000, segmentBytes: 4096, segmentMs: 3600e3, retentionMs: 0, retentionBytes, tailCacheBytes: 0, clock: new StoreClock() });
  const appender = (channel: ChannelLog) => (): Promise<unknown> => {
    const { batch } = encodeBatch([{ body: Buffer.alloc(3000, 7) }]); // one segment each
    return channel.append(batch, validateBatch(batch));
  };

  it('appends that roll go on while a retention pass waits for a thread-pool slot (they waited for the whole pass)', async function () {
    this.timeout(20_000); // without the fix the appends below wait for the slot: a hang
    await loadChecksum();
    const dir = tempDir();
    const channel = ChannelLog.open(dir, options(1), []);
    const append = appender(channel);
    let release: (() => void) | null = null;
    try {
      for (let i = 0; i < 3; i++) await append();
      await channel.settled();
      const slots = new IoSlots(1);
      release = await slots.acquire(); // another channel's checkpoint write holds the pass's only slot
      let retentionDone = false;
      const retention = channel.applyRetention(Date.now(), slots).finally(() => (retentionDone = true));
      for (let i = 0; i < 2 * limits.sealsPendingMax + 2; i++) await append(); // each rolls; seals queue behind the retention turn when it has joined the chain
      assert.equal(retentionDone, false, 'the pass still waits for its slot');
      release();
      release = null;
      assert.ok((await retention) >= 1);
    } finally {
      release?.();
      await channel.close();
    }
  });

  it('settled(): every segment sealed before it resolves is in the checkpoint, though a roll after its call queued a seal behind', async () => {
    await loadChecksum();
    const dir = tempDir();
    const channel = ChannelLog.open(dir, options(0), []);
    const append = appender(channel);
    try {
      await append();
      await append(); // rolls: segment 0 is being sealed
      const settled = channel.settled();
      await new Promise((resolve) => setImmediate(resolve));
      const later = append(); // a roll after settled()'s snapshot queues a seal behind segment 0's
      await settled;
      const listed = (JSON.parse(fs.readFileSync(path.join(dir, 'checkpoint.json'), 'utf8')) as { segments: Array<{ baseOffset: number }> }).segments.map((m) => m.baseOffset);
      assert.ok(listed.includes(0), `segment 0 listed: ${JSON.stringify(listed)}`);
      await later;
    } finally {
      await channel.close();
    }
  });
});

describe('engine store: retention never passes the high watermark', () => {
  // Found while checking the seal backpressure: a group commit that rolls part-way leaves a
  // sealed segment holding batches not acknowledged yet; retention removed it, and the log
  // start passed the high watermark (1200751 > 1199581 under load).
  it('a segment sealed while the rest of its group commit is still being written is kept: the log start stays at or below the high watermark', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { segmentBytes: 4096, compression: false });
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeFs = require('node:fs') as { writev: typeof fs.writev; rename: typeof fs.rename };
    const { writev, rename } = nodeFs;
    // Writes to these logs wait until released: the first append's (so that the next two
    // queue up and go out as one group commit), and the group's second batch's, in segment 2.
    const holds = new Map<string, { released: Promise<void>; release: () => void }>();
    const hold = (log: string): void => {
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      holds.set(log, { released, release });
    };
    try {
      await store.createTopic('t', { channels: 1, retentionBytes: 1 });
      const channel = path.join(dir, 'topics', 't', '0');
      const [first, third] = [0, 2].map((base) => path.join(channel, segmentFileName(base, 'log')));
      hold(first!);
      hold(third!);
      let sealed!: () => void;
      const segmentOneListed = new Promise<void>((resolve) => (sealed = resolve));
      nodeFs.writev = ((fd: number, buffers: NodeJS.ArrayBufferView[], position: number, callback: (err: NodeJS.ErrnoException | null, written: number) => void): void => {
        const held = holds.get(fs.readlinkSync(`/proc/self/fd/${fd}`));
        if (held) void held.released.then(() => writev(fd, buffers, position, callback));
        else writev(fd, buffers, position, callback);
      }) as typeof fs.writev;
      nodeFs.rename = ((from: fs.PathLike, to: fs.PathLike, callback: (err: NodeJS.ErrnoException | null) => void): void => {
        rename(from, to, (err) => {
          const listed = !err && String(to).endsWith('checkpoint.json') && (JSON.parse(fs.readFileSync(String(to), 'utf8')) as { segments: Array<{ baseOffset: number }> }).segments.some((m) => m.baseOffset === 1);
          callback(err);
          if (listed) sealed();
        });
      }) as typeof fs.rename;
      const one = store.append('t', 0, [{ body: Buffer.alloc(3000, 1) }]); // segment 0; its write waits
      const group = Promise.all([store.append('t', 0, [{ body: Buffer.alloc(3000, 2) }]), store.append('t', 0, [{ body: Buffer.alloc(3000, 3) }])]); // queued behind it
      holds.get(first!)!.release();
      await one;
      // The group: batch 2 rolls into segment 1 and is written; batch 3 rolls into segment 2,
      // whose write waits. Segment 1 is sealed and listed, its batch not acknowledged.
      await segmentOneListed;
      assert.deepEqual(store.channelState('t', 0), { logStartOffset: 0, highWatermark: 1 });
      await store.applyRetention();
      const { logStartOffset, highWatermark } = store.channelState('t', 0);
      assert.ok(logStartOffset <= highWatermark, `log start ${logStartOffset}, high watermark ${highWatermark}`);
      assert.equal(logStartOffset, 1, 'segment 0 went; segment 1, whose batch is not acknowledged, stays');
      holds.get(third!)!.release();
      await group;
      assert.deepEqual(store.channelState('t', 0), { logStartOffset: 1, highWatermark: 3 });
    } finally {
      for (const { release } of holds.values()) release();
      nodeFs.writev = writev;
      nodeFs.rename = rename;
      await store.close();
    }
  });
});

describe('engine store: a segment deleted under a read', () => {
  it('keeps its file open until the read in flight is done: the read returns the bytes it asked for, never EBADF', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { segmentBytes: 4 * 1024 });
    try {
      await store.createTopic('t', { channels: 1, retentionBytes: 1 }); // everything sealed may go
      for (let b = 0; b < 30; b++) await store.append('t', 0, [{ body: bodyFor('del', b, 400) }]);
      await store.settled(); // the rolled segments sealed: retention may delete them
      const reading = store.readBatches('t', 0, { offset: 0, maxBytes: 64 * 1024 }); // its fs.read is in the thread pool now
      assert.ok((await store.applyRetention()) > 0, 'retention deleted the segment being read');
      const read = await reading;
      assert.ok(read.batchCount > 0);
      const first = decodeFirstBody(read.bytes);
      assert.ok(first.equals(bodyFor('del', 0, 400)), 'the bytes of the deleted segment, not another file');
      assert.ok(store.channelState('t', 0).logStartOffset > 0);
    } finally {
      await store.close();
    }
  });
});

/** The body of the first record of the first batch in `bytes` (uncompressed: the 400-byte bodies are random). */
function decodeFirstBody(bytes: Buffer): Buffer {
  const [record] = decodeRecords(bytes, 0, validateBatch(bytes.subarray(0, bytes.readUInt32LE(28))), lz4Codec);
  return Buffer.from(record!.body);
}

describe('engine batch buffers (what store.append encodes into)', () => {
  it('lends views of reused buffers, takes back only its own and each once, and keeps at most its bounds idle', () => {
    const buffers = new BatchBuffers(1024, 2, 1024 * 1024);
    const small = buffers.take(100);
    assert.equal(small.length, 100);
    buffers.give(small);
    assert.deepEqual(buffers.idleStats, { count: 0, bytes: 0 }, 'below pooledBytesMin: a plain array, not pooled');

    const a = buffers.take(5000);
    assert.equal(a.length, 5000);
    a.fill(7);
    buffers.give(a);
    buffers.give(a);
    buffers.give(new Uint8Array(5000));
    assert.equal(buffers.idleStats.count, 1, 'a second give and a stranger are ignored');
    const b = buffers.take(4000);
    assert.equal(b.buffer, a.buffer, 'the idle buffer is lent again');
    assert.equal(b.length, 4000);
    assert.equal(b[0], 7, 'as it was: stale bytes are the caller\'s to overwrite');
    assert.deepEqual(buffers.idleStats, { count: 0, bytes: 0 });
    const c = buffers.take(4000);
    assert.notEqual(c.buffer, b.buffer, 'one lent is not lent twice');
    const big = buffers.take(200_000);
    assert.ok(big.buffer.byteLength >= 200_000);
    const tooBig = buffers.take(2 * 1024 * 1024);
    for (const v of [b, c, big, tooBig]) buffers.give(v);
    const idle = buffers.idleStats;
    assert.equal(idle.count, 2, 'at most idleCountMax idle');
    assert.ok(idle.bytes <= 1024 * 1024, 'at most idleBytesMax idle');
    assert.equal(buffers.take(150_000).buffer, big.buffer, 'the larger ones are the ones kept');
  });

  it('store.append reuses them under load and every message reads back as sent: 8 channels, 6 appends in flight each, segments rolling', async () => {
    await loadChecksum();
    const dir = tempDir();
    const store = await openStore(dir, { segmentBytes: 256 * 1024, compression: true });
    const channels = 8;
    await store.createTopic('t', { channels });
    const sent: Array<Map<number, string>> = Array.from({ length: channels }, () => new Map());
    const watched = store.watch('t', 3, () => undefined); // the tail cache copies channel 3's batches
    let reused = 0;
    const seenBuffers = new Set<ArrayBufferLike>();
    const take = (store as unknown as { batchBuffers: BatchBuffers }).batchBuffers.take;
    (store as unknown as { batchBuffers: { take: (n: number) => Uint8Array } }).batchBuffers.take = (bytes: number) => {
      const view = take(bytes);
      if (seenBuffers.has(view.buffer)) reused++;
      seenBuffers.add(view.buffer);
      return view;
    };
    await Promise.all(
      Array.from({ length: channels * 6 }, async (_, lane) => {
        const channel = lane % channels;
        for (let round = 0; round < 12; round++) {
          const count = 40 + ((lane * 13 + round * 7) % 60);
          const messages = Array.from({ length: count }, (_, i) => ({ key: `k${lane}-${round}-${i}`, body: `${lane}:${round}:${i}:${randomBytes(150 + (i % 200)).toString('hex')}` }));
          const r = await store.append('t', channel, messages);
          messages.forEach((m, i) => sent[channel]!.set(r.baseOffset + i, m.body));
        }
      }),
    );
    watched();
    assert.ok(reused > 100, `buffers were lent again (${reused} times)`);
    for (let c = 0; c < channels; c++) {
      const stored = await store.read('t', c, { offset: 0, maxMessages: 100_000, maxBytes: 64 * 1024 * 1024 });
      assert.equal(stored.length, sent[c]!.size);
      for (const m of stored) assert.equal(m.body.toString(), sent[c]!.get(m.offset), `channel ${c} offset ${m.offset}`);
    }
    await store.close();
    const reopened = await openStore(dir);
    assert.deepEqual(reopened.recoveryReport, [], "reopened with nothing to recover");
    await reopened.close();
  });
});

describe('engine store: a lookup that meets a damaged batch', () => {
  // helper-46: one damaged batch under a key made every lookup of that key fail with
  // CORRUPT_FILE (HTTP 500), though the other messages under it were sound.
  it('passes over it: a key lookup answers the sound messages and says the damage once; a msgId in the damage is CORRUPT_FILE, not "none"', async () => {
    const dir = tempDir();
    let store = await openStore(dir, { compression: false });
    await store.createTopic('t', { channels: 1 });
    const ids: string[] = [];
    for (let b = 0; b < 3; b++) ids.push(...(await store.append('t', 0, [{ key: 'k', body: `body ${b}` }])).msgIds);
    await store.close();
    const log = segmentFiles(path.join(dir, 'topics', 't', '0'))[0]!;
    const starts = batchLayout(fs.readFileSync(log)).starts;
    flipByte(log, starts[2]! - 1); // the last byte of the middle batch's body: its checksum fails
    const faults: Array<{ kind: string; code: string; message: string }> = [];
    store = await openStore(dir, { onFault: (f) => faults.push(f) });
    try {
      for (let i = 0; i < 2; i++) {
        const found = await store.lookupKey('t', 'k');
        assert.deepEqual(found.map((m) => m.body.toString()), ['body 2', 'body 0']);
      }
      assert.deepEqual(faults.map((f) => [f.kind, f.code]), [['damaged', 'CORRUPT_FILE']], 'said once');
      assert.match(faults[0]!.message, new RegExp(`passed over a damaged batch: .*${path.basename(log)} at position ${starts[1]}: checksum mismatch`));
      assert.equal((await store.lookupMsgId('t', ids[0]!))?.body.toString(), 'body 0');
      assert.equal((await rejection(store.lookupMsgId('t', ids[1]!))).code, 'CORRUPT_FILE', 'the one sought may be in the damage');
    } finally {
      await store.close();
    }
  });
});
