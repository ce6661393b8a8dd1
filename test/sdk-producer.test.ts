/** The SDK producer at its edges: options, batch sizes, sequence numbers, a connection that goes silent, msgStream packs. */
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { encodeBatch } from '../engine/format/record-batch';
import type { Connection } from '../sdk/client';
import { connect, type Client, type OutgoingMessage, type Producer } from '../sdk/index';
import { brokerForSuite, take, text } from './broker-helpers';
import { rejection } from './helpers';

/** Every message of a topic's channel, as text, through a throwaway group. */
async function readChannel(client: Client, topic: string, channel: number, count: number): Promise<string[]> {
  const consumer = await client.consumer({ topic, group: `read-${Math.random()}`, start: 'earliest', channels: [channel], autoCommitIntervalMs: 0 });
  const messages = await take(consumer, count);
  await consumer.close();
  return messages.map(text);
}

/** The producer's per-channel state (white-box: a sequence of 2^31 takes two billion messages to reach). */
function channelState(producer: Producer, channel: number): { producerId: number; sequence: number } {
  return (producer as unknown as { channels: Array<{ producerId: number; sequence: number }> }).channels[channel]!;
}

/** Everything of a topic's channel 0 from offset 0, as text. */
async function readAll(client: Client, topic: string, count: number): Promise<string[]> {
  const consumer = await client.consumer({ topic, group: `read-${Math.random()}`, start: 'earliest', autoCommitIntervalMs: 0 });
  const messages = await take(consumer, count);
  await consumer.close();
  return messages.map(text);
}

describe('sdk producer: options, sizes and sequences', function () {
  this.timeout(60_000);
  const { client: opened } = brokerForSuite();

  it('refuses options that would leave sends pending for ever or resends refused: in-flight 0, NaN or over 16, negative linger, a batch of 0', async () => {
    const client = opened();
    await client.admin.createTopic('opts', { channels: 1 });
    const bad: Array<Record<string, unknown>> = [
      { inflightBatchesMax: 0 },
      { inflightBatchesMax: Number.NaN },
      // The broker remembers a producer's last 16 batches per channel: a 17th in flight, resent
      // after a reconnect, was refused with DUPLICATE_SEQUENCE although it was stored.
      { inflightBatchesMax: 17 },
      { lingerMs: -1 },
      { batchMessagesMax: 0 },
      { batchBytesMax: 1.5 },
      { bufferedBytesMax: -5 },
      { compression: 'yes' },
    ];
    for (const options of bad) {
      const err = await rejection(client.producer({ topic: 'opts', ...options }));
      assert.equal(err.code, 'INVALID_ARGUMENT', JSON.stringify(options));
    }
    const fine = await client.producer({ topic: 'opts', inflightBatchesMax: 16, lingerMs: 0 });
    assert.equal((await fine.send({ body: 'ok' })).offset, 0);
    await fine.close();
  });

  // Found by a black-box run (helper-50): createTopic handed its options to protobuf as they
  // were: retentionMs '1h' became 1 ms (retention then deleted every message), channels 2.5
  // became 2, 4294967297 became 1, and a misspelt `chanels` made a one-channel topic.
  it('createTopic refuses options it would have coerced, and makes nothing; a channel that is not a whole number is INVALID_ARGUMENT', async () => {
    const client = opened();
    const bad: Array<[unknown, string]> = [
      [{ retentionMs: '1h' }, 'INVALID_ARGUMENT'],
      [{ retentionMs: 1.7 }, 'INVALID_ARGUMENT'],
      [{ retentionBytes: -1 }, 'INVALID_ARGUMENT'],
      [{ channels: 2.5 }, 'INVALID_ARGUMENT'],
      [{ channels: '2' }, 'INVALID_ARGUMENT'],
      [{ channels: 0 }, 'INVALID_ARGUMENT'],
      [{ channels: 4294967297 }, 'TOO_MANY_CHANNELS'],
      [{ chanels: 3 }, 'INVALID_ARGUMENT'],
      [{ owner: 5 }, 'INVALID_ARGUMENT'],
      [null, 'INVALID_ARGUMENT'],
    ];
    for (const [options, code] of bad) {
      const err = await rejection(client.admin.createTopic('coerced', options as never));
      assert.equal(err.code, code, JSON.stringify(options));
    }
    assert.equal((await rejection(client.admin.createTopic(5 as unknown as string))).code, 'INVALID_ARGUMENT');
    assert.match((await rejection(client.admin.createTopic('coerced', { channels: '2' as unknown as number }))).message, /not "2"$/, 'a string is quoted');
    assert.equal((await rejection(client.admin.positions('coerced', 5 as unknown as string))).code, 'INVALID_ARGUMENT');
    assert.ok(!(await client.admin.listTopics()).some((t) => t.name === 'coerced'), 'no topic was made');
    const made = await client.admin.createTopic('coerced', { channels: 2, retentionMs: 3_600_000 });
    assert.deepEqual([made.channels, made.retentionMs], [2, 3_600_000]);
    const producer = await client.producer({ topic: 'coerced' });
    for (const channel of ['1', -1, 1.5]) assert.equal((await rejection(producer.send({ channel: channel as number, body: 'x' }))).code, 'INVALID_ARGUMENT', `channel ${JSON.stringify(channel)}`);
    assert.equal((await rejection(producer.send({ channel: 2, body: 'x' }))).code, 'CHANNEL_NOT_FOUND');
    assert.equal((await rejection(client.producer({ topic: 'coerced', channel: '0' as unknown as number }))).code, 'INVALID_ARGUMENT');
    await producer.close();
  });

  it('a message with deliverAt or delayMs is refused with UNSUPPORTED, as HTTP refuses it, and nothing is stored (from JavaScript it was stored at once; helper-44)', async () => {
    const client = opened();
    await client.admin.createTopic('later', { channels: 1 });
    const producer = await client.producer({ topic: 'later' });
    for (const extra of [{ deliverAt: Date.now() + 60_000 }, { delayMs: 1000 }]) {
      const message = { body: 'later', ...extra } as unknown as OutgoingMessage;
      assert.equal((await rejection(producer.send(message))).code, 'UNSUPPORTED', JSON.stringify(extra));
      assert.equal((await rejection(producer.sendBatch([{ body: 'now' }, message]))).code, 'UNSUPPORTED');
    }
    assert.equal((await producer.send({ body: 'now', deliverAt: null } as unknown as OutgoingMessage)).offset, 0, 'nothing before it was stored');
    await producer.close();
  });

  it('fills batches by UTF-8 size: messages with long non-ASCII header names, 8 MiB batches, all stored (they failed together with BATCH_TOO_LARGE)', async () => {
    const client = opened();
    await client.admin.createTopic('wide', { channels: 1 });
    const producer = await client.producer({ topic: 'wide', batchBytesMax: 8 * 1024 * 1024 });
    const name = '中'.repeat(21_000); // 63,000 bytes of UTF-8 (under the 64 KiB of headers), counted as 21,000 before
    const results = await producer.sendBatch(Array.from({ length: 400 }, (_, i) => ({ body: `m${i}`, headers: { [name]: 'v' } })));
    assert.deepEqual(results.map((r) => r.offset), Array.from({ length: 400 }, (_, i) => i));
    await producer.close();
  });

  it('a channel whose sequence would pass 2^31 − 1 takes a new producer id: resends are still answered as duplicates, and sends go on past 2^32', async () => {
    const client = opened();
    await client.admin.createTopic('wrap', { channels: 1 });
    const producer = await client.producer({ topic: 'wrap' });
    const state = channelState(producer, 0);
    const connection = (producer as unknown as { connection: { produce(topic: string, channel: number, batch: Uint8Array): Promise<{ produceOk?: { appends?: Array<{ baseOffset?: number; duplicate?: boolean }> } }> } }).connection;
    const produce = connection.produce.bind(connection);
    /** Sends `body`, then the same batch bytes once more, as a resend after a lost reply is. */
    const sendAndResend = async (body: string): Promise<{ offset: number; resent: { baseOffset?: number; duplicate?: boolean } }> => {
      let bytes: Uint8Array | null = null;
      connection.produce = (topic, channel, batch) => {
        bytes = batch.slice();
        return produce(topic, channel, batch);
      };
      const { offset } = await producer.send({ body });
      connection.produce = produce;
      const reply = await produce('wrap', 0, bytes!);
      return { offset, resent: reply.produceOk!.appends![0]! };
    };
    const first = await sendAndResend('a');
    assert.deepEqual([first.offset, first.resent.baseOffset, first.resent.duplicate], [0, 0, true]);
    const id = state.producerId;
    state.sequence = 2 ** 31 - 1; // one message fits, the next batch of one does not
    const last = await sendAndResend('b');
    assert.deepEqual([last.offset, last.resent.baseOffset, last.resent.duplicate], [1, 1, true]);
    assert.equal(state.producerId, id, 'sequence 2^31 − 1 is still the same id');
    // Before: sequence 2^31 went out as −2^31, taken for "no sequence": the resend was stored again.
    const past = await sendAndResend('c');
    assert.deepEqual([past.offset, past.resent.baseOffset, past.resent.duplicate], [2, 2, true]);
    assert.notEqual(state.producerId, id, 'a new id');
    assert.equal(state.sequence, 1);
    // Before: 2^32 + 7 went out as 7, below the stored sequences: every send refused, DUPLICATE_SEQUENCE.
    state.sequence = 2 ** 32 + 7;
    assert.equal((await producer.send({ body: 'd' })).offset, 3);
    assert.equal((await producer.send({ body: 'e' })).offset, 4);
    assert.deepEqual(await readAll(client, 'wrap', 5), ['a', 'b', 'c', 'd', 'e'], 'each message once');
    await producer.close();
  });

  it('msgStream.produce checks the whole pack before queuing any (a bad message stored the others), and gives results in the pack\'s order with a repack function', async () => {
    const client = opened();
    await client.admin.createTopic('pack', { channels: 2 });
    const stream = client.msgStream();
    await stream.asProducer('pack');
    const err = await rejection(stream.produce({ msgs: [{ channel: 0, body: 'a' }, { channel: 0, body: 'b', key: 'x'.repeat(5000) }, { channel: 0, body: 'c' }] }));
    assert.equal(err.code, 'KEY_TOO_LARGE');
    stream.setRepackFunc((msgs) => new Map([[0, [...msgs].reverse()]])); // everything to channel 0, last first
    const ids = ['01', '02', '03'].map((end) => '0'.repeat(30) + end);
    const results = await stream.produce({ msgs: ids.map((msgId, i) => ({ msgId, body: `p${i}` })) });
    assert.deepEqual(results.map((r) => r.msgId), ids, 'in the pack\'s order');
    assert.deepEqual(results.map((r) => r.offset), [2, 1, 0], 'stored in the repack\'s order, from offset 0: nothing of the refused pack');
    await stream.close();
  });
});

// helper-32: a broadcast went as one request with no producer id and was not resent, so a
// broker crash could leave it on some channels only (the caller's retry then doubled it on
// the others); it skipped the queue of sends made before it; a pack with a bad message stored
// the good ones on every channel.
describe('sdk producer: broadcasts', function () {
  this.timeout(60_000);
  const { broker, client: opened } = brokerForSuite();

  it('lands after every message sent before it and before every message sent after it, on every channel, with no await in between', async () => {
    const client = opened();
    await client.admin.createTopic('bcast-order', { channels: 3 });
    const producer = await client.producer({ topic: 'bcast-order', lingerMs: 20 }); // sends linger: the broadcast must not overtake them
    const sends: Array<Promise<unknown>> = [];
    for (let c = 0; c < 3; c++) sends.push(producer.send({ channel: c, body: `before-${c}` }));
    sends.push(producer.broadcast({ body: 'tick-1' }));
    for (let c = 0; c < 3; c++) sends.push(producer.send({ channel: c, body: `after-${c}` }));
    sends.push(producer.broadcast({ body: 'tick-2' }));
    for (let c = 0; c < 3; c++) sends.push(producer.send({ channel: c, body: `last-${c}` }));
    await Promise.all(sends);
    for (let c = 0; c < 3; c++) assert.deepEqual(await readChannel(client, 'bcast-order', c, 5), [`before-${c}`, 'tick-1', `after-${c}`, 'tick-2', `last-${c}`], `channel ${c}`);
    await producer.close();
  });

  it('msgStream.broadcast checks the whole pack first: a bad message (named by its index) sends none; a good pack gives per message one result per channel', async () => {
    const client = opened();
    await client.admin.createTopic('bcast-check', { channels: 2 });
    const stream = client.msgStream();
    await stream.asProducer('bcast-check');
    const err = await rejection(stream.broadcast({ msgs: [{ body: 'ok' }, { body: 'big', key: 'x'.repeat(5000) }] }));
    assert.equal(err.code, 'KEY_TOO_LARGE');
    assert.match(err.message, /message 1/);
    const results = await stream.broadcast({ msgs: [{ body: 'one' }, { body: 'two' }] });
    assert.deepEqual(results.map((perChannel) => perChannel.map((r) => [r.channel, r.offset])), [[[0, 0], [1, 0]], [[0, 1], [1, 1]]], 'offsets from 0: nothing of the refused pack was stored');
    assert.equal(results[0]![0]!.msgId, results[0]![1]!.msgId, 'one msgId per message, on every channel');
    await stream.close();
  });

  it('a broadcast whose reply is lost is resent on reconnect and answered as stored: once on every channel', async () => {
    const proxy = await silentProxy(broker.port);
    try {
      const client = await connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, { requestTimeoutMs: 300, reconnectDelayMs: 20, heartbeatMs: 0 });
      await client.admin.createTopic('bcast-lost', { channels: 3 });
      const producer = await client.producer({ topic: 'bcast-lost' });
      const reconnected = new Promise<void>((resolve) => client.on('reconnect', () => resolve()));
      proxy.mute('replies'); // the broadcast reaches the broker and is stored; its reply is lost
      const results = await producer.broadcast({ body: 'tick' }); // failed with TIMEOUT before, and a retry doubled it
      await reconnected;
      assert.deepEqual(results.map((r) => [r.channel, r.offset, r.duplicate]), [[0, 0, true], [1, 0, true], [2, 0, true]]);
      assert.equal((await producer.send({ channel: 1, body: 'after' })).offset, 1);
      for (let c = 0; c < 3; c++) assert.deepEqual(await readChannel(opened(), 'bcast-lost', c, c === 1 ? 2 : 1), c === 1 ? ['tick', 'after'] : ['tick']);
      await producer.close();
      client.close();
    } finally {
      proxy.close();
    }
  });

  it('a broadcast the broker refuses fails alone: the sends queued behind it go on (they do not wait for it for ever)', async () => {
    const client = opened();
    await client.admin.createTopic('bcast-refused', { channels: 2 });
    const producer = await client.producer({ topic: 'bcast-refused' });
    await producer.send({ body: 'first' });
    await client.admin.deleteTopic('bcast-refused');
    const broadcast = producer.broadcast({ body: 'tick' });
    const after = producer.send({ channel: 0, body: 'after' });
    assert.equal((await rejection(broadcast)).code, 'TOPIC_NOT_FOUND');
    assert.equal((await rejection(after)).code, 'TOPIC_NOT_FOUND', 'sent once the broadcast was done, and answered');
    await producer.flush(); // idle: nothing left waiting
  });

  // helper-32: a producer made before its topic was deleted and made again wrote into the new
  // topic, while consumers and commits of the old one were refused.
  it('a producer of a topic deleted and made again meanwhile is refused (TOPIC_NOT_FOUND) and stores nothing in the new one; a new producer writes', async () => {
    const client = opened();
    await client.admin.createTopic('again-p', { channels: 2 });
    const producer = await client.producer({ topic: 'again-p' });
    assert.equal((await producer.send({ channel: 0, body: 'old' })).offset, 0);
    await client.admin.deleteTopic('again-p');
    await client.admin.createTopic('again-p', { channels: 2 });
    const err = await rejection(producer.send({ channel: 0, body: 'stale' }));
    assert.equal(err.code, 'TOPIC_NOT_FOUND');
    assert.match(err.message, /was deleted and made again/);
    assert.equal((await rejection(producer.broadcast({ body: 'stale tick' }))).code, 'TOPIC_NOT_FOUND');
    const fresh = await client.producer({ topic: 'again-p' });
    assert.equal((await fresh.send({ channel: 0, body: 'new' })).offset, 0, 'nothing of the old producer was stored');
    assert.deepEqual(await readChannel(client, 'again-p', 0, 1), ['new']);
    await fresh.close();
  });

  it('the broker completes a broadcast cut short (stored on some channels) when it comes again: duplicate where it was, stored where it was not', async () => {
    const client = opened();
    await client.admin.createTopic('bcast-partial', { channels: 3 });
    const connection = (client as unknown as { connection: Connection }).connection;
    const { batch } = encodeBatch([{ body: 'tick' }], { producerId: 4242, producerSequence: 0 });
    // What a crash between the channels' appends leaves: the batch on channel 1 only.
    await connection.produce('bcast-partial', 1, batch.slice());
    const reply = await connection.request({ produce: { topic: 'bcast-partial', channel: 0, batch: batch.slice(), broadcast: true } });
    assert.deepEqual(reply.produceOk?.appends?.map((a) => [a.channel, a.baseOffset ?? 0, !!a.duplicate]), [[0, 0, false], [1, 0, true], [2, 0, false]]);
    for (let c = 0; c < 3; c++) assert.deepEqual(await readChannel(client, 'bcast-partial', c, 1), ['tick']);
  });
});

/**
 * A TCP proxy in front of the broker whose current connections can go silent (a middlebox
 * that forgot the flow, a host gone: no FIN, no RST); connections made after pass.
 * `mute('replies')` drops only the broker's bytes (requests arrive, replies never come back).
 */
async function silentProxy(port: number): Promise<{ port: number; mute(what: 'all' | 'replies'): void; close(): void }> {
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket; mutedUp: boolean; mutedDown: boolean }>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    const pair = { client, upstream, mutedUp: false, mutedDown: false };
    pairs.add(pair);
    client.on('data', (chunk: Buffer) => void (pair.mutedUp || upstream.write(chunk)));
    upstream.on('data', (chunk: Buffer) => void (pair.mutedDown || client.write(chunk)));
    const end = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on('close', end);
      socket.on('error', end);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    mute(what) {
      for (const pair of pairs) {
        pair.mutedDown = true;
        if (what === 'all') pair.mutedUp = true;
      }
    },
    close() {
      server.close();
      for (const pair of pairs) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
    },
  };
}

describe('sdk producer: a connection that goes silent', function () {
  this.timeout(60_000);
  const { broker, client: opened } = brokerForSuite();

  it('a request that times out drops the connection and makes a new one: the send is resent and answered as stored once (every send failed with TIMEOUT until the OS gave up, ~15 min)', async () => {
    const proxy = await silentProxy(broker.port);
    try {
      const client = await connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, { requestTimeoutMs: 300, reconnectDelayMs: 20, heartbeatMs: 0 });
      await client.admin.createTopic('silent', { channels: 1 });
      const producer = await client.producer({ topic: 'silent' });
      assert.equal((await producer.send({ body: 'before' })).offset, 0);
      const reconnected = new Promise<void>((resolve) => client.on('reconnect', () => resolve()));
      proxy.mute('replies'); // the batch reaches the broker, its reply is lost
      const during = await producer.send({ body: 'during' });
      await reconnected;
      assert.deepEqual([during.offset, during.duplicate], [1, true], 'the resend was answered with the first append\'s offset');
      assert.equal((await producer.send({ body: 'after' })).offset, 2);
      assert.deepEqual(await readAll(opened(), 'silent', 3), ['before', 'during', 'after']);
      await producer.close();
      client.close();
    } finally {
      proxy.close();
    }
  });

  it('an idle connection that goes silent is found by a ping without a pong, and made again (Node)', async () => {
    const proxy = await silentProxy(broker.port);
    try {
      const client = await connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, { heartbeatMs: 50, reconnectDelayMs: 20 });
      await client.admin.createTopic('idle', { channels: 1 });
      const consumer = await client.consumer({ topic: 'idle', group: 'g', start: 'earliest' });
      const lost = new Promise<void>((resolve) => client.on('disconnect', () => resolve()));
      const reconnected = new Promise<void>((resolve) => client.on('reconnect', () => resolve()));
      proxy.mute('all');
      await lost; // no request was waiting: only the heartbeat could tell
      await reconnected;
      // The consumer subscribed again on the new connection: a message produced now reaches it.
      const producer = await opened().producer({ topic: 'idle' });
      await producer.send({ body: 'after the silence' });
      assert.equal(text((await take(consumer, 1))[0]!), 'after the silence');
      await producer.close();
      await consumer.close();
      client.close();
    } finally {
      proxy.close();
    }
  });

  it('a msgStream refuses a tickIntervalMs longer than a timer can wait (the broker ticked every millisecond)', async () => {
    const client = opened();
    await client.admin.createTopic('ticks', { channels: 1 });
    const err = await rejection(client.msgStream().asConsumer('ticks', 'g', { tickIntervalMs: 2 ** 31 }));
    assert.equal(err.code, 'INVALID_ARGUMENT');
  });

  it('refuses connection options that are not a number of ms', async () => {
    for (const options of [{ heartbeatMs: -1 }, { requestTimeoutMs: 0 }, { reconnectDelayMs: Number.NaN }, { connectTimeoutMs: 2 ** 31 }]) {
      const err = await rejection(connect(broker.url, options));
      assert.equal(err.code, 'INVALID_ARGUMENT', JSON.stringify(options));
    }
  });
});
