import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { encodeBatch, loadChecksum, BatchOffset } from '../engine/format/index';
import { decodeFrame, encodeFrame, encodeProduceFrame, encodePushFrame, type Frame, type FrameInit } from '../protocol/frames';
import { protocolLimits } from '../protocol/limits';
import { connect } from '../sdk/index';
import { BrokerProcess, httpJson, RawClient } from './broker-helpers';
import { removeTempDirs, tempDir } from './helpers';

after(removeTempDirs);

const errorName = (f: Frame): string | undefined => f.error?.name ?? undefined;

describe('protocol: the produce frame written around its batch', () => {
  it('is byte for byte what the generated encoder makes, at every varint width', () => {
    const ids = [0, 1, 127, 128, 16_383, 16_384, 2_097_152, 2 ** 31 - 1, 2 ** 32 - 1];
    const topics = ['', 't', 'orders.eu-1', 'ü-topic-ßπ', 'x'.repeat(200)];
    const channels = [0, 1, 127, 128, 255];
    const sizes = [0, 1, 100, 127, 128, 16_384, 2_097_152];
    let cases = 0;
    for (const id of ids)
      for (const topic of topics)
        for (const channel of channels)
          for (const size of [sizes[(id + channel + topic.length) % sizes.length]!, 100]) {
            const batch = randomBytes(size);
            const topicCreatedAt = [0, 1, 1_763_726_400_000, Number.MAX_SAFE_INTEGER][(id + channel) % 4]!;
            const mine = encodeProduceFrame(id, topic, channel, batch, topicCreatedAt);
            const theirs = encodeFrame({ id, produce: { topic, channel, batch, topicCreatedAt } });
            assert.ok(Buffer.from(mine).equals(Buffer.from(theirs)), `id ${id} topic ${topic} channel ${channel} batch ${size} topicCreatedAt ${topicCreatedAt}`);
            const back = decodeFrame(mine);
            assert.deepEqual(
              [back.id, back.produce!.topic, back.produce!.channel, Buffer.from(back.produce!.batch!).equals(batch), Number(back.produce!.topicCreatedAt ?? 0)],
              [id, topic, channel, true, topicCreatedAt],
            );
            cases++;
          }
    assert.equal(cases, ids.length * topics.length * channels.length * 2);
  });
});

describe('protocol: the push frame written around its batches', () => {
  it('is byte for byte what the generated encoder makes, at every varint width, in a reused buffer or not', () => {
    const small = [0, 1, 127, 128, 16_383, 16_384, 2 ** 32 - 1];
    const offsets = [0, 1, 127, 128, 2 ** 32 - 1, 2 ** 32, 2 ** 35 + 17, Number.MAX_SAFE_INTEGER];
    const sizes = [0, 1, 127, 128, 16_384, 1_048_576];
    const scratch = Buffer.alloc(protocolLimits.pushBytesMax + 64, 0xee);
    let cases = 0;
    for (let i = 0; i < 400; i++) {
      const pick = <T>(xs: readonly T[], salt: number): T => xs[(i * 7 + salt * 13 + Math.floor(i / xs.length)) % xs.length]!;
      const fields = { subscription: pick(small, 1), channel: pick([0, 1, 127, 128, 255], 2), startOffset: pick(offsets, 3), nextOffset: pick(offsets, 4), highWatermark: pick(offsets, 5), epoch: pick(small, 6) };
      const batches = randomBytes(pick(sizes, 7));
      const theirs = Buffer.from(encodeFrame({ id: 0, push: { ...fields, batches } }));
      for (const into of [undefined, scratch]) {
        const mine = encodePushFrame(fields, batches, into);
        assert.ok(Buffer.from(mine).equals(theirs), `case ${i} ${JSON.stringify(fields)} batches ${batches.length}`);
        if (into) assert.equal(mine.buffer, scratch.buffer, 'written into the buffer given');
        const back = decodeFrame(mine).push!;
        assert.deepEqual(
          [back.subscription, back.channel, Number(back.startOffset), Number(back.nextOffset), Number(back.highWatermark), back.epoch, Buffer.from(back.batches!).equals(batches)],
          [fields.subscription, fields.channel, fields.startOffset, fields.nextOffset, fields.highWatermark, fields.epoch, true],
        );
        cases++;
      }
    }
    assert.equal(cases, 800);
  });
});

describe('protocol: bad input gets an error and changes nothing', function () {
  this.timeout(60_000);
  const broker = new BrokerProcess(tempDir());
  before(async () => {
    await loadChecksum();
    await broker.start();
  });
  after(() => broker.stop());

  it('answers each malformed or out-of-order frame, and the connection keeps working', async () => {
    const raw = await RawClient.open(broker.url, false);
    // Before hello: refused.
    assert.equal(errorName(await raw.request({ listTopics: {} })), 'NOT_READY');
    assert.equal(errorName(await raw.request({ hello: { client: 'x', protocolVersion: 99 } })), 'UNSUPPORTED_VERSION');
    assert.equal(errorName(await raw.request({ hello: { client: 'x', protocolVersion: 1 } })), undefined);
    // Garbage, truncated and text frames: an Error with id 0.
    raw.sendRaw(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f]));
    assert.equal(errorName(await raw.nextUnsolicited()), 'BAD_REQUEST');
    const good = encodeFrame({ id: 77, createTopic: { topic: 'half', channels: 1 } });
    raw.sendRaw(good.subarray(0, good.length - 3));
    assert.equal(errorName(await raw.nextUnsolicited()), 'BAD_REQUEST');
    raw.sendRaw('{"hello": "json"}');
    assert.equal(errorName(await raw.nextUnsolicited()), 'BAD_REQUEST');
    // A reply or push kind sent by a client, an empty frame, id 0.
    assert.equal(errorName(await raw.request({ produceOk: { appends: [] } })), 'BAD_REQUEST');
    assert.equal(errorName(await raw.request({ push: { subscription: 1 } })), 'BAD_REQUEST');
    assert.equal(errorName(await raw.request({})), 'BAD_REQUEST');
    raw.sendRaw(encodeFrame({ id: 0, listTopics: {} }));
    assert.equal(errorName(await raw.nextUnsolicited()), 'BAD_REQUEST');
    // Unknown topics, bad channels and offsets, bad batches.
    const { batch } = encodeBatch([{ body: 'x' }]);
    assert.equal(errorName(await raw.request({ produce: { topic: 'nope', channel: 0, batch } })), 'TOPIC_NOT_FOUND');
    assert.equal(errorName(await raw.request({ createTopic: { topic: 'strict', channels: 2 } })), undefined);
    assert.equal(errorName(await raw.request({ produce: { topic: 'strict', channel: 9, batch } })), 'CHANNEL_NOT_FOUND');
    assert.equal(errorName(await raw.request({ fetch: { topic: 'strict', channel: 0, offset: 5 } })), 'OFFSET_OUT_OF_RANGE');
    const flipped = batch.slice();
    flipped[flipped.length - 1]! ^= 1;
    assert.equal(errorName(await raw.request({ produce: { topic: 'strict', channel: 0, batch: flipped } })), 'CORRUPT_BATCH');
    assert.equal(errorName(await raw.request({ produce: { topic: 'strict', channel: 0, batch: batch.subarray(0, 30) } })), 'CORRUPT_BATCH');
    assert.equal(errorName(await raw.request({ produce: { topic: 'strict', channel: 0, batch: new Uint8Array(0) } })), 'CORRUPT_BATCH');
    const control = batch.slice();
    control[BatchOffset.flags] = 0x08; // the control bit (checksum now fails too: either way refused)
    assert.ok(['CORRUPT_BATCH', 'BAD_REQUEST'].includes(errorName(await raw.request({ produce: { topic: 'strict', channel: 0, batch: control } }))!));
    assert.equal(errorName(await raw.request({ produce: { topic: '__groups', channel: 0, batch } })), 'INVALID_NAME');
    assert.equal(errorName(await raw.request({ credit: { subscription: 99, messages: 1, bytes: 1 } })), 'SUBSCRIPTION_NOT_FOUND');
    assert.equal(errorName(await raw.request({ subscribe: { topic: 'strict', group: 'g' } })), 'INVALID_ARGUMENT', 'a subscription id is required');
    assert.equal(errorName(await raw.request({ subscribe: { topic: 'strict', group: 'bad group!', subscription: 1 } })), 'INVALID_NAME');
    assert.equal(errorName(await raw.request({ subscribe: { topic: 'strict', group: 'g', subscription: 1, start: 'sideways' } })), 'INVALID_ARGUMENT');
    assert.equal(errorName(await raw.request({ deleteTopic: { topic: '__groups' } })), 'INVALID_NAME');
    // Nothing was appended, and the connection still serves.
    const described = await raw.request({ describeTopic: { topic: 'strict' } });
    assert.deepEqual(described.topicInfo!.channelStates!.map((c) => c.highWatermark), [0, 0]);
    const ok = await raw.request({ produce: { topic: 'strict', channel: 1, batch } });
    assert.equal(ok.produceOk!.appends![0]!.baseOffset, 0);
    await raw.close();
  });

  it('closes the connection on an oversized frame, with a reason, and serves everyone else', async () => {
    const big = await RawClient.open(broker.url);
    const other = await RawClient.open(broker.url);
    big.sendRaw(new Uint8Array(protocolLimits.frameBytesMax + 1));
    await big.whenClosed();
    assert.equal(big.closeCode, 1009, `close code ${big.closeCode} ${big.closeReason}`);
    const reply = await other.request({ listTopics: {} });
    assert.ok(reply.topicList);
    await other.close();
  });

  it('never sends past the credit; asks for more when one batch is larger than what is left', async () => {
    const raw = await RawClient.open(broker.url);
    await raw.request({ createTopic: { topic: 'credit', channels: 1 } });
    for (let i = 0; i < 20; i++) {
      const r = await raw.request({ produce: { topic: 'credit', channel: 0, batch: encodeBatch([{ body: `m${i}` }]).batch } });
      assert.ok(r.produceOk);
    }
    const pushed = (): number => raw.pushes.reduce((n, f) => n + (f.push?.batches?.length ? countRecordsIn(f.push.batches) : 0), 0);
    const arrived = (count: number): Promise<void> =>
      new Promise((resolve) => {
        const check = (): void => (pushed() >= count ? resolve() : void (raw.onFrame = check));
        check();
      });
    const sub = await raw.request({ subscribe: { topic: 'credit', group: 'g', start: 'earliest', subscription: 1, creditMessages: 5, creditBytes: 1 << 20 } });
    assert.ok(sub.subscribeOk);
    await arrived(5);
    // A zero grant runs the pump once more; its reply comes after the pump found no credit.
    await raw.request({ credit: { subscription: 1, messages: 0, bytes: 0 } });
    assert.equal(pushed(), 5, 'exactly the granted 5 messages');
    await raw.request({ credit: { subscription: 1, messages: 7, bytes: 0 } });
    await arrived(12);
    await raw.request({ credit: { subscription: 1, messages: 0, bytes: 0 } });
    assert.equal(pushed(), 12);
    // A 10-record batch with 8 left in the channel and credit for 3 more only.
    await raw.request({ credit: { subscription: 1, messages: 3, bytes: 0 } });
    await arrived(15);
    await raw.request({ produce: { topic: 'credit', channel: 0, batch: encodeBatch(Array.from({ length: 10 }, (_, i) => ({ body: `big${i}` }))).batch } });
    await raw.request({ credit: { subscription: 1, messages: 8, bytes: 0 } }); // the 5 single batches left, then 3 spare
    await arrived(20);
    const need = await new Promise<Frame>((resolve) => {
      const find = (): void => {
        const f = raw.pushes.find((p) => (p.push?.needMessages ?? 0) > 0);
        if (f) resolve(f);
        else raw.onFrame = find;
      };
      find();
    });
    assert.equal(need.push!.needMessages, 7, 'the broker asks for exactly what the next batch lacks (10 records, 3 credits left)');
    assert.equal(pushed(), 20, 'the batch is not split and not sent past the credit');
    await raw.request({ credit: { subscription: 1, messages: 7, bytes: 0 } });
    await arrived(30);
    await raw.close();
  });
});

function countRecordsIn(bytes: Uint8Array): number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let n = 0;
  for (let pos = 0; pos + 64 <= bytes.length; pos += dv.getUint32(pos + 28, true)) n += dv.getUint32(pos + 44, true);
  return n;
}

describe('protocol: fuzz', function () {
  this.timeout(300_000);

  it('100,000 random and mutated frames: the broker stays up and a well-behaved client is served throughout', async () => {
    await loadChecksum();
    const broker = new BrokerProcess(tempDir());
    await broker.start();
    const client = await connect(broker.url, { reconnect: false });
    await client.admin.createTopic('good', { channels: 2 });
    const producer = await client.producer({ topic: 'good' });
    const seeds: FrameInit[] = [
      { hello: { client: 'fuzz', protocolVersion: 1 } },
      { createTopic: { topic: 'fuzz-a', channels: 3, retentionMs: 1000 } },
      { produce: { topic: 'fuzz-a', channel: 1, batch: encodeBatch([{ body: 'seed', key: 'k' }, { body: 'two' }], { producerId: 5, producerSequence: 1 }).batch } },
      { fetch: { topic: 'fuzz-a', channel: 0, offset: 0, maxBytes: 4096 } },
      { subscribe: { topic: 'fuzz-a', group: 'fz', subscription: 3, creditMessages: 10, creditBytes: 4096, packs: true, tickIntervalMs: 10 } },
      { credit: { subscription: 3, messages: 5, bytes: 100 } },
      { seek: { subscription: 3, to: 'earliest', epoch: 1 } },
      { commit: { topic: 'fuzz-a', group: 'fz', positions: [{ channel: 0, offset: 0 }] } },
      { getPositions: { topic: 'fuzz-a', group: 'fz' } },
      { describeTopic: { topic: 'fuzz-a' } },
      { listTopics: {} },
      { unsubscribe: { subscription: 3 } },
    ];
    const seedBytes = seeds.map((s, i) => encodeFrame({ id: i + 1, ...s }));
    const fuzzer = await RawClient.open(broker.url);
    let sent = 0;
    let goodChecks = 0;
    const total = 100_000;
    while (sent < total) {
      for (let i = 0; i < 2000 && sent < total; i++, sent++) fuzzer.sendRaw(mutate(seedBytes[sent % seedBytes.length]!, sent));
      // Sync point: the fuzzer's own connection still answers (bounds what is in flight)…
      const sync = await fuzzer.request({ listTopics: {} }, 0x7ffffff0);
      assert.ok(sync.topicList || sync.error, 'the fuzzed connection still answers');
      // …and the well-behaved client is served, correctly.
      const r = await producer.send({ key: `g${sent}`, body: `good ${sent}` });
      const read = await httpJson(`${broker.http}/v1/topics/good/messages?channel=${r.channel}&offset=${r.offset}&max=1`);
      assert.equal(read.body.messages[0].body, `good ${sent}`);
      goodChecks++;
    }
    assert.equal(goodChecks, total / 2000);
    assert.equal((await httpJson(`${broker.http}/healthz`)).body.status, 'ok');
    client.close();
    await fuzzer.close();
    assert.equal(await broker.stop('SIGTERM'), 0, 'the broker shuts down cleanly after the fuzz');
  });
});

/** A mutation of a valid frame: flips, truncation, garbage tails, random ids, or pure noise. */
function mutate(seed: Uint8Array, n: number): Uint8Array {
  const kind = n % 7;
  if (kind === 0) return randomBytes(1 + (n % 200));
  const out = Buffer.from(seed);
  if (kind === 1) out[n % out.length] ^= 1 << (n % 8);
  if (kind === 2) return out.subarray(0, n % out.length);
  if (kind === 3) return Buffer.concat([out, randomBytes(1 + (n % 50))]);
  if (kind === 4) for (let i = 0; i < 4; i++) out[(n * 31 + i * 17) % out.length] = (n * 7 + i) & 0xff;
  if (kind === 5) out[1] = n & 0x7f; // the request id's varint
  return out;
}

describe('durability: the broker killed with SIGKILL under load', function () {
  this.timeout(300_000);

  it('every message acknowledged in sync mode "batch" is read back after a restart', async () => {
    await loadChecksum();
    const broker = new BrokerProcess(tempDir());
    await broker.start();
    const setup = await connect(broker.url, { reconnect: false });
    await setup.admin.createTopic('durable', { channels: 3 });
    setup.close();
    const acked = new Map<string, string>();
    for (let round = 0; round < 3; round++) {
      const client = await connect(broker.url, { reconnect: false });
      const producers = await Promise.all([0, 1].map(() => client.producer({ topic: 'durable', lingerMs: 1 })));
      const killAfter = 200 + Math.floor(Math.random() * 2000);
      let stop = false;
      const loops = producers.map(async (producer, p) => {
        for (let i = 0; !stop; i++) {
          const body = `r${round}-p${p}-${i}`;
          producer.send({ key: body, body }).then(
            (r) => {
              acked.set(r.msgId, body);
              if (acked.size >= killAfter * (round + 1) && !stop) {
                stop = true;
                void broker.stop('SIGKILL');
              }
            },
            () => undefined, // unacknowledged: allowed to be lost
          );
          if (i % 200 === 199) await new Promise((resolve) => setImmediate(resolve));
        }
      });
      await Promise.all(loops);
      await broker.stop('SIGKILL');
      client.close();
      await broker.start();
    }
    const reader = await connect(broker.url, { reconnect: false });
    const consumer = await reader.consumer({ topic: 'durable', group: 'audit', start: 'earliest', autoCommitIntervalMs: 0 });
    const described = await reader.admin.describeTopic('durable');
    const stored = described.channelStates.reduce((n, c) => n + c.highWatermark, 0);
    const found = new Map<string, string>();
    for (let i = 0; i < stored; i++) {
      const r = await consumer.next();
      found.set(r.value!.msgId, Buffer.from(r.value!.body).toString());
    }
    for (const [msgId, body] of acked) assert.equal(found.get(msgId), body, `acknowledged ${body} survived`);
    assert.ok(acked.size > 600, `acknowledged ${acked.size}`);
    await consumer.close();
    reader.close();
    await broker.stop();
  });
});
