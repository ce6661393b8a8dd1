/** Coverage of capabilities the other suites do not reach: msgStream, producer options, HTTP details, dump text, the in-flight cap. */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { connect, channelForKey, WaymarkError, type Client, type Message, type MsgPack, type MsgStream, type SendResult } from '../sdk/index';
import { loadChecksum } from '../engine/format/index';
import type { Frame } from '../protocol/frames';
import { BrokerProcess, brokerForSuite, httpJson, RawClient, take, text } from './broker-helpers';
import { rejection, removeTempDirs, tempDir } from './helpers';

after(removeTempDirs);

const where = (m: Message): string => `${m.channel}:${m.offset}`;

/** Packs from a stream until they hold `count` messages (next() directly: no loop to leave). */
async function packs(stream: MsgStream, count: number): Promise<{ msgs: Message[]; packs: MsgPack[] }> {
  const out = { msgs: [] as Message[], packs: [] as MsgPack[] };
  while (out.msgs.length < count) {
    const r = await stream.next();
    if (r.done) throw new Error(`stream ended after ${out.msgs.length} of ${count} messages`);
    out.packs.push(r.value);
    out.msgs.push(...r.value.msgs);
  }
  return out;
}

const byPosition = (a: Message, b: Message): number => a.channel - b.channel || a.offset - b.offset;

/** The value of one sample line of /metrics (0 when absent). */
async function metric(http: string, line: string): Promise<number> {
  const body = await (await fetch(`${http}/metrics`)).text();
  const found = body.split('\n').find((l) => l.startsWith(`${line} `));
  return found ? Number(found.slice(line.length + 1)) : 0;
}

describe('coverage: SDK and HTTP against a real broker', function () {
  this.timeout(60_000);
  const suite = brokerForSuite();
  const broker = suite.broker;
  let client: Client;
  before(() => (client = suite.client()));
  const highWatermarks = async (topic: string): Promise<number[]> => (await client.admin.describeTopic(topic)).channelStates.map((c) => c.highWatermark);

  it('msgStream broadcast puts each message of the pack once in every channel, under one msgId, read back through chan()', async () => {
    await client.admin.createTopic('ms-bcast', { channels: 3 });
    const stream = client.msgStream();
    await stream.asProducer('ms-bcast');
    const results = await stream.broadcast({ msgs: [{ body: 'first' }, { body: 'second', key: 'k' }] });
    assert.equal(results.length, 2);
    for (const perMessage of results) {
      assert.deepEqual(perMessage.map((r) => r.channel).sort(), [0, 1, 2]);
      assert.equal(new Set(perMessage.map((r) => r.msgId)).size, 1, 'one msgId per broadcast message');
    }
    assert.notEqual(results[0]![0]!.msgId, results[1]![0]!.msgId);
    const consumer = client.msgStream();
    await consumer.asConsumer('ms-bcast', 'reader', { start: 'earliest', tickIntervalMs: 10 });
    const got: Message[] = [];
    for await (const pack of consumer.chan()) {
      got.push(...pack.msgs);
      if (got.length >= 6) break;
    }
    got.sort(byPosition);
    assert.deepEqual(got.map((m) => `${where(m)} ${text(m)} ${m.key}`), [0, 1, 2].flatMap((c) => [`${c}:0 first null`, `${c}:1 second k`]));
    assert.deepEqual(got.map((m) => m.msgId), [0, 1, 2].flatMap(() => [results[0]![0]!.msgId, results[1]![0]!.msgId]));
    await consumer.close();
    await stream.close();
  });

  it('msgStream seek by positions and by broker time re-delivers from there', async () => {
    await client.admin.createTopic('ms-seek', { channels: 2 });
    const stream = client.msgStream();
    await stream.asProducer('ms-seek');
    const all = await stream.produce({ msgs: Array.from({ length: 6 }, (_, i) => ({ body: `e${i}`, channel: i % 2 })) });
    const earlyMax = Math.max(...all.map((r) => r.brokerTimestamp));
    let late: SendResult;
    do {
      late = (await stream.produce({ msgs: [{ body: 'late', channel: 0 }] }))[0]!; // until a later millisecond
      all.push(late);
    } while (late.brokerTimestamp <= earlyMax);
    all.push(...(await stream.produce({ msgs: [{ body: 'late', channel: 1 }] })));
    const consumer = client.msgStream();
    await consumer.asConsumer('ms-seek', 'seeker', { start: 'earliest', tickIntervalMs: 10 });
    const first = await packs(consumer, all.length);
    assert.deepEqual(first.msgs.map(where).sort(), all.map((r) => `${r.channel}:${r.offset}`).sort());

    await consumer.seek({ positions: [{ channel: 0, offset: 2 }, { channel: 1, offset: 1 }] });
    const expected = all.filter((r) => r.offset >= (r.channel === 0 ? 2 : 1)).map((r) => `${r.channel}:${r.offset}`);
    const again = await packs(consumer, expected.length);
    assert.deepEqual(again.msgs.map(where).sort(), expected.sort(), 'everything from the positions, once');
    for (const pack of again.packs) for (const m of pack.msgs) assert.ok(m.brokerTimestamp > pack.beginTs && m.brokerTimestamp <= pack.endTs, `after a seek back by positions, ${m.brokerTimestamp} in (${pack.beginTs}, ${pack.endTs}]`);

    const time = late.brokerTimestamp;
    await consumer.seek({ timestamp: time });
    const fromTime = await packs(consumer, all.filter((r) => r.brokerTimestamp >= time).length);
    assert.deepEqual(fromTime.msgs.map(where).sort(), all.filter((r) => r.brokerTimestamp >= time).map((r) => `${r.channel}:${r.offset}`).sort());
    assert.equal(fromTime.packs[0]!.beginTs, time - 1, 'the first pack after a time seek begins just before that time');
    for (const pack of fromTime.packs) for (const m of pack.msgs) assert.ok(m.brokerTimestamp > pack.beginTs && m.brokerTimestamp <= pack.endTs);

    await consumer.seek({ timestamp: 0 }); // time 0: from the earliest
    const fromZero = await packs(consumer, all.length);
    assert.deepEqual(fromZero.msgs.map(where).sort(), all.map((r) => `${r.channel}:${r.offset}`).sort());
    assert.equal(fromZero.packs[0]!.beginTs, 0);

    // 'earliest' and 'latest' as the consumer takes them; anything else a typed error, nothing moved (helper-32: a TypeError).
    await consumer.seek('earliest');
    assert.deepEqual((await packs(consumer, all.length)).msgs.map(where).sort(), all.map((r) => `${r.channel}:${r.offset}`).sort());
    for (const bad of [null, 'newest', 7, {}] as unknown[]) {
      const err = await rejection(consumer.seek(bad as 'latest'));
      assert.equal(err.code, 'INVALID_ARGUMENT', String(bad));
      assert.match(err.message, /^seek takes \{positions\}, \{timestamp\}, 'earliest' or 'latest', not /);
    }
    await consumer.seek('latest');
    const newest = await stream.produce({ msgs: [{ body: 'newest', channel: 1 }] });
    assert.deepEqual((await packs(consumer, 1)).msgs.map(where), newest.map((r) => `${r.channel}:${r.offset}`), 'only what came after the seek');
    await consumer.close();
    await stream.close();
  });

  // helper-32: positions carried no time, so a seek to a pack's endPositions (or a start at the
  // positions a group committed from them) began the next pack at 0, and a check that each
  // pack begins where the last ended (Milvus' time-tick chain) failed.
  it('msgStream: a seek to a pack\'s endPositions, or a start at the positions committed from them, goes on with a pack that begins at that pack\'s endTs', async () => {
    await client.admin.createTopic('ms-chain', { channels: 2 });
    const stream = client.msgStream();
    await stream.asProducer('ms-chain');
    const first = await stream.produce({ msgs: [{ body: 'a', channel: 0 }, { body: 'b', channel: 1 }] });
    const consumer = client.msgStream();
    await consumer.asConsumer('ms-chain', 'chain', { start: 'earliest', tickIntervalMs: 10 });
    const got = await packs(consumer, 2);
    const last = got.packs.at(-1)!;
    assert.deepEqual(last.endPositions.map((p) => p.timestamp), [last.endTs, last.endTs], 'end positions carry the pack\'s endTs');
    assert.ok(last.startPositions.every((p) => p.timestamp === last.beginTs));
    await consumer.commit(last.endPositions);
    const later = await stream.produce({ msgs: [{ body: 'c', channel: 1 }] });
    await consumer.seek({ positions: last.endPositions });
    const next = await packs(consumer, 1);
    assert.equal(next.packs[0]!.beginTs, last.endTs, 'the chain goes on from the pack sought to');
    assert.deepEqual(next.msgs.map(where), later.map((r) => `${r.channel}:${r.offset}`));
    await consumer.close();

    const resumed = client.msgStream();
    await resumed.asConsumer('ms-chain', 'chain', { start: 'committed', tickIntervalMs: 10 });
    const again = await packs(resumed, 1);
    assert.equal(again.packs[0]!.beginTs, last.endTs, 'a start at the committed positions goes on from their time');
    assert.deepEqual(again.msgs.map(where), later.map((r) => `${r.channel}:${r.offset}`));
    // Positions at different times (or none): the next pack begins at 0, as before.
    await resumed.seek({ positions: [{ channel: 0, offset: 0, timestamp: first[0]!.brokerTimestamp }, { channel: 1, offset: 0 }] });
    assert.equal((await packs(resumed, 3)).packs[0]!.beginTs, 0);
    await resumed.close();
    await stream.close();
  });

  it('msgStream: a seek the broker refuses (past the end) leaves the stream where it was: later messages come in packs chained to the last one', async () => {
    await client.admin.createTopic('ms-refused', { channels: 2 });
    const stream = client.msgStream();
    await stream.asProducer('ms-refused');
    const before = await stream.produce({ msgs: Array.from({ length: 4 }, (_, i) => ({ body: `r${i}`, channel: i % 2 })) });
    const consumer = client.msgStream();
    await consumer.asConsumer('ms-refused', 'refused', { start: 'earliest', tickIntervalMs: 10 });
    const first = await packs(consumer, before.length);
    assert.equal((await rejection(consumer.seek({ positions: [{ channel: 0, offset: 100_000 }] }))).code, 'OFFSET_OUT_OF_RANGE');
    const after = await stream.produce({ msgs: [{ body: 'later', channel: 1 }] });
    const next = await packs(consumer, 1);
    assert.deepEqual(next.msgs.map(where), after.map((r) => `${r.channel}:${r.offset}`), 'the later message, and nothing again');
    assert.equal(next.packs[0]!.beginTs, first.packs.at(-1)!.endTs, 'chained to the last pack handed out');
    await consumer.close();
    await stream.close();
  });

  it('msgStream packs after a seek to a time still ahead: a channel whose first reads are all passed over does not let another channel\'s later message into a pack (it came out of its pack\'s range, and out of order)', async () => {
    await client.admin.createTopic('ms-ahead', { channels: 2 });
    const stream = client.msgStream();
    await stream.asProducer('ms-ahead');
    const consumer = client.msgStream();
    // A window of one message and 3,000 bytes: each read of a channel takes ~1,500 bytes (3 of the messages below).
    await consumer.asConsumer('ms-ahead', 'ahead', { start: 'latest', tickIntervalMs: 10, prefetchMessages: 1, prefetchBytes: 3000 });
    const at = Date.now() + 300;
    await consumer.seek({ timestamp: at });
    // Stamped before the time sought: passed over, 4 reads' worth on channel 0.
    for (let i = 0; i < 12; i++) await stream.produce({ msgs: [{ channel: 0, body: `${'skip'.repeat(120)}${i}` }] });
    while (Date.now() <= at + 5) await new Promise((resolve) => setTimeout(resolve, at + 6 - Date.now())); // the broker's clock past the time sought
    const [a] = await stream.produce({ msgs: [{ channel: 0, body: 'A' }] });
    while (Date.now() <= a!.brokerTimestamp) await new Promise((resolve) => setImmediate(resolve)); // B in a later millisecond
    const [b] = await stream.produce({ msgs: [{ channel: 1, body: 'B' }] });
    assert.ok(a!.brokerTimestamp >= at && b!.brokerTimestamp > a!.brokerTimestamp);
    const got = await packs(consumer, 2);
    assert.deepEqual(got.msgs.map(where), [`0:${a!.offset}`, `1:${b!.offset}`], 'A then B, nothing passed over');
    for (const pack of got.packs) for (const m of pack.msgs) assert.ok(m.brokerTimestamp > pack.beginTs && m.brokerTimestamp <= pack.endTs, `${m.brokerTimestamp} in (${pack.beginTs}, ${pack.endTs}]`);
    await consumer.close();
    await stream.close();
  });

  it('msgStream packs under a small credit: a millisecond holding more than the credit is asked for and comes; packs chain, lose and repeat nothing', async () => {
    await client.admin.createTopic('ms-credit', { channels: 3 });
    const producer = await client.producer({ topic: 'ms-credit', batchMessagesMax: 1 }); // one message per batch: packs can be cut anywhere
    // Three waves, each stamped in a later millisecond than the one before (the broker stamps
    // on append, after the wave before was acknowledged): the backlog spans at least three
    // milliseconds, so the credit of 5 must split it. (Sent at once, all 45 could fall in one
    // or two milliseconds on a fast run: 2 packs, and the test failed.)
    const single: SendResult[] = [];
    for (let wave = 0; wave < 3; wave++) {
      const after = Date.now();
      while (Date.now() <= after) await new Promise((resolve) => setImmediate(resolve)); // the next millisecond
      single.push(...(await Promise.all(Array.from({ length: 15 }, (_, i) => producer.send({ body: `c${wave * 15 + i}`, channel: i % 3 })))));
    }
    const big = await client.producer({ topic: 'ms-credit' });
    const bundle = await big.sendBatch(Array.from({ length: 12 }, (_, i) => ({ body: `big${i}`, channel: 1 }))); // one batch of 12 > the credit of 5
    const stream = client.msgStream();
    await stream.asConsumer('ms-credit', 'credit', { start: 'earliest', prefetchMessages: 5, tickIntervalMs: 10 });
    const total = single.length + bundle.length;
    const got = await packs(stream, total); // stalled for good before the broker asked for what a whole millisecond needs
    assert.ok(got.packs.length >= 3, `the credit split the backlog: ${got.packs.length} packs`);
    assert.deepEqual(got.msgs.map(where).sort(), [...single, ...bundle].map((r) => `${r.channel}:${r.offset}`).sort(), 'every message once');
    for (let i = 0; i < got.packs.length; i++) {
      const pack = got.packs[i]!;
      if (i > 0) assert.equal(pack.beginTs, got.packs[i - 1]!.endTs, 'packs chain');
      for (const m of pack.msgs) assert.ok(m.brokerTimestamp > pack.beginTs && m.brokerTimestamp <= pack.endTs);
    }
    for (const channel of [0, 1, 2]) {
      const offsets = got.msgs.filter((m) => m.channel === channel).map((m) => m.offset);
      assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), `channel ${channel} in offset order`);
    }
    await stream.close();
    await producer.close();
    await big.close();
  });

  it('msgStream packs: one batch larger than the pack read budget (4 push frames) still comes, between its neighbours', async () => {
    await client.admin.createTopic('ms-huge', { channels: 2 });
    const producer = await client.producer({ topic: 'ms-huge' });
    const before = await producer.send({ body: 'before', channel: 1 });
    const huge = randomBytes(5 * 1024 * 1024); // one 5 MiB message (random: lz4 cannot shrink it): one batch past 4 × pushBytesMax
    const bigOne = await producer.send({ body: huge, channel: 0 });
    const after = await producer.send({ body: 'after', channel: 1 });
    const stream = client.msgStream();
    await stream.asConsumer('ms-huge', 'huge', { start: 'earliest', tickIntervalMs: 10 });
    const got = await packs(stream, 3); // the broker asked for credit round after round and never read further
    assert.deepEqual(got.msgs.map(where).sort(), [before, bigOne, after].map((r) => `${r.channel}:${r.offset}`).sort());
    assert.ok(Buffer.from(got.msgs.find((m) => m.channel === 0)!.body).equals(huge), 'the big message whole');
    await stream.close();
    await producer.close();
  });

  it('consumer credit: a batch larger than the window is asked for and granted once; the window then comes back to prefetch, not past it', async () => {
    await client.admin.createTopic('window', { channels: 1 });
    const producer = await client.producer({ topic: 'window' });
    const big = await producer.send({ body: randomBytes(256 * 1024) }); // past the 64 KiB window
    const small = await Promise.all(Array.from({ length: 200 }, (_, i) => producer.send({ body: `w${i}` })));
    const prefetchBytes = 64 * 1024;
    // Every credit frame sent on this connection, summed (the broker's credit = window + grants − what it pushed).
    const own = await connect(broker.url);
    const connection = (own as unknown as { connection: { request(body: { credit?: { bytes: number } }): Promise<unknown> } }).connection;
    const request = connection.request.bind(connection);
    let grantedBytes = 0;
    connection.request = (body) => {
      grantedBytes += body.credit?.bytes ?? 0;
      return request(body);
    };
    const consumer = await own.consumer({ topic: 'window', group: 'window', start: 'earliest', prefetchBytes, autoCommitIntervalMs: 0 });
    const got = await take(consumer, 1 + small.length);
    assert.equal(got[0]!.offset, big.offset);
    const pushedBytes = got.reduce((n, m) => n + m.body.length, 0); // a lower bound of the batch bytes pushed
    assert.ok(grantedBytes >= 256 * 1024 - prefetchBytes, 'the big batch was asked for and granted');
    assert.ok(prefetchBytes + grantedBytes - pushedBytes <= prefetchBytes + 200 * 80, `the broker holds about the window again, not the window plus the big batch's grant (granted ${grantedBytes}, pushed ≥ ${pushedBytes})`);
    await consumer.close();
    own.close();
    await producer.close();
  });

  it('msgStream commit: a new asConsumer of the same subName resumes at the committed positions', async () => {
    await client.admin.createTopic('ms-commit', { channels: 2 });
    const stream = client.msgStream();
    await stream.asProducer('ms-commit');
    const sent = await stream.produce({ msgs: Array.from({ length: 8 }, (_, i) => ({ body: `c${i}`, channel: i % 2 })) });
    const first = client.msgStream();
    await first.asConsumer('ms-commit', 'indexer', { start: 'earliest', tickIntervalMs: 10 });
    const read = await packs(first, 8);
    assert.deepEqual(read.packs[read.packs.length - 1]!.endPositions.sort((a, b) => a.channel - b.channel).map((p) => [p.channel, p.offset]), [[0, 4], [1, 4]]);
    const refused = await rejection(first.commit([{ channel: 0, offset: -3 }]));
    assert.equal(refused.code, 'INVALID_ARGUMENT');
    assert.doesNotMatch(refused.message, /18446744073709552000/, 'said as given, not as a wrapped 64-bit number');
    await first.commit([{ channel: 0, offset: 3 }, { channel: 1, offset: 1 }]);
    await first.close();
    assert.deepEqual((await client.admin.positions('ms-commit', 'indexer')).map((p) => [p.channel, p.offset]), [[0, 3], [1, 1]]);
    const resumed = client.msgStream();
    await resumed.asConsumer('ms-commit', 'indexer', { tickIntervalMs: 10 });
    const rest = await packs(resumed, 4);
    const expected = sent.filter((r) => r.offset >= (r.channel === 0 ? 3 : 1));
    assert.deepEqual(rest.msgs.map(where).sort(), expected.map((r) => `${r.channel}:${r.offset}`).sort());
    assert.deepEqual(rest.msgs.sort(byPosition).map(text), ['c6', 'c3', 'c5', 'c7']);
    await resumed.close();
    await stream.close();
  });

  it('consumer start options: offsets per channel, a broker time, a channel subset, fallback latest, commit(message)', async () => {
    await client.admin.createTopic('starts', { channels: 2 });
    const producer = await client.producer({ topic: 'starts' });
    const early = await producer.sendBatch(Array.from({ length: 6 }, (_, i) => ({ body: `s${i}`, channel: i % 2 })));
    let later: SendResult;
    do later = await producer.send({ body: 'later', channel: 1 }); // until a later broker millisecond
    while (later.brokerTimestamp <= Math.max(...early.map((r) => r.brokerTimestamp)));

    const byOffsets = await client.consumer({ topic: 'starts', group: 'o', start: { offsets: { 0: 2, 1: 1 } }, autoCommitIntervalMs: 0 });
    // Channel 0 from 2 (one message), channel 1 from 1 to the last 'later' (the loop above may have sent more than one).
    const expected = ['0:2', ...Array.from({ length: later.offset }, (_, i) => `1:${i + 1}`)];
    const fromOffsets = await take(byOffsets, expected.length);
    assert.deepEqual(fromOffsets.map(where).sort(), expected.sort());
    await byOffsets.close();

    const byTime = await client.consumer({ topic: 'starts', group: 't', start: { timestamp: later.brokerTimestamp }, autoCommitIntervalMs: 0 });
    assert.deepEqual(where((await byTime.next()).value as Message), `1:${later.offset}`, 'only what is at or after the time');
    await byTime.close();

    const subset = await client.consumer({ topic: 'starts', group: 'sub', channels: [1], start: 'earliest', autoCommitIntervalMs: 0 });
    const ones = await take(subset, 4);
    assert.ok(ones.every((m) => m.channel === 1), 'only channel 1');
    await subset.commit(ones[1]!); // the position after that message, on its channel
    assert.deepEqual((await client.admin.positions('starts', 'sub')).map((p) => [p.channel, p.offset]), [[1, 2]]);
    await subset.close();

    const fresh = await client.consumer({ topic: 'starts', group: 'never-committed', fallback: 'latest', autoCommitIntervalMs: 0 });
    const next = fresh.next();
    const after = await producer.send({ body: 'after', channel: 0 });
    assert.deepEqual(where((await next).value as Message), `0:${after.offset}`, 'no committed position + fallback latest: only new messages');
    await fresh.close();
    await producer.close();
  });

  it('a request made while the connection is down waits for the reconnect and is answered then', async () => {
    const own = new BrokerProcess(tempDir());
    await own.start();
    const c = await connect(own.url, { reconnectDelayMs: 20 });
    try {
      await c.admin.createTopic('while-down', { channels: 1 });
      const down = new Promise<void>((resolve) => c.on('disconnect', () => resolve()));
      await own.stop('SIGKILL');
      await down; // the client has seen its socket close: the request below waits for the next one
      const listing = c.admin.listTopics(); // asked while there is no broker
      const back = new Promise<void>((resolve) => c.on('reconnect', () => resolve()));
      await own.start();
      await back;
      assert.deepEqual((await listing).map((t) => t.name), ['while-down']);
    } finally {
      c.close();
      await own.stop();
    }
  });

  it('producer: an explicit msgId is the stored one (found over HTTP); a malformed one is refused', async () => {
    await client.admin.createTopic('with-id', { channels: 2 });
    const producer = await client.producer({ topic: 'with-id' });
    const msgId = Date.now().toString(16).padStart(12, '0') + randomBytes(10).toString('hex'); // the msgId layout: 48-bit ms time, then 80 bits
    const result = await producer.send({ body: 'named', key: 'n', msgId });
    assert.equal(result.msgId, msgId);
    const found = await httpJson(`${broker.http}/v1/messages/${msgId}?topic=with-id`);
    assert.equal(found.status, 200, JSON.stringify(found.body));
    assert.deepEqual([found.body.msgId, found.body.body, found.body.key, found.body.channel, found.body.offset], [msgId, 'named', 'n', result.channel, result.offset]);
    // An id that does not start with a time (here: one from "the future") is found as well.
    const chosen = 'ffeeddccbbaa99887766554433221100';
    const named = await producer.send({ body: 'chosen', msgId: chosen });
    const byChosen = await httpJson(`${broker.http}/v1/messages/${chosen}?topic=with-id`);
    assert.equal(byChosen.status, 200, JSON.stringify(byChosen.body));
    assert.deepEqual([byChosen.body.body, byChosen.body.offset], ['chosen', named.offset]);
    assert.equal((await httpJson(`${broker.http}/v1/messages/${'0'.repeat(31)}7?topic=with-id`)).status, 404, 'a miss is still a miss');
    const bad = await rejection(producer.send({ body: 'x', msgId: 'not-hex' }));
    assert.equal(bad.code, 'INVALID_ARGUMENT');
    assert.equal((await highWatermarks('with-id')).reduce((a, b) => a + b), 2);
  });

  it('producer: flush() sends lingering messages and resolves once every send so far is acknowledged', async () => {
    await client.admin.createTopic('flushed', { channels: 3 });
    const producer = await client.producer({ topic: 'flushed', lingerMs: 60_000 });
    const settled: SendResult[] = [];
    const sends = Array.from({ length: 30 }, (_, i) => producer.send({ key: `k${i}`, body: `f${i}` }).then((r) => (settled.push(r), r)));
    assert.deepEqual(await highWatermarks('flushed'), [0, 0, 0], 'still lingering after a round trip');
    assert.equal(settled.length, 0);
    await producer.flush();
    assert.equal(settled.length, 30, 'every send resolved before flush() did');
    assert.equal((await highWatermarks('flushed')).reduce((a, b) => a + b), 30);
    const results = await Promise.all(sends);
    results.forEach((r, i) => assert.equal(r.channel, channelForKey(`k${i}`, 3)));
    await producer.flush(); // nothing pending: resolves at once
    await producer.close();
  });

  it('producer: a small bufferedBytesMax makes sends wait for room, and all are delivered in order', async () => {
    await client.admin.createTopic('buffered', { channels: 1 });
    const framesBefore = await metric(broker.http, 'waymark_frames_total{type="produce"}');
    const producer = await client.producer({ topic: 'buffered', bufferedBytesMax: 1000 }); // a 200-byte body counts 232: four at a time
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => producer.send({ body: Buffer.alloc(200, i) })));
    assert.deepEqual(results.map((r) => r.offset), Array.from({ length: 40 }, (_, i) => i));
    const frames = (await metric(broker.http, 'waymark_frames_total{type="produce"}')) - framesBefore;
    assert.ok(frames >= 10, `at most four messages per batch: ${frames} produce frames for 40 messages`);
    const read = await httpJson(`${broker.http}/v1/topics/buffered/messages?channel=0&offset=0&max=100&encoding=base64`);
    assert.deepEqual(read.body.messages.map((m: { bodyBase64: string }) => Buffer.from(m.bodyBase64, 'base64')), Array.from({ length: 40 }, (_, i) => Buffer.alloc(200, i)));
    await producer.close();
  });

  it('producer: flush() with sends still waiting for buffer room does not wait out the linger for each refill', async () => {
    await client.admin.createTopic('flush-parked', { channels: 1 });
    const producer = await client.producer({ topic: 'flush-parked', bufferedBytesMax: 1000, lingerMs: 600_000 });
    const sends = Array.from({ length: 12 }, (_, i) => producer.send({ body: Buffer.alloc(200, i) })); // three buffers' worth
    await producer.flush(); // would take 3 × 600 s (far past this test's timeout) if refills lingered
    const results = await Promise.all(sends);
    assert.deepEqual(results.map((r) => r.offset), Array.from({ length: 12 }, (_, i) => i));
    await producer.close();
  });

  it('producer: with the buffer full, a later small message does not overtake a waiting larger one (send() and sendBatch())', async () => {
    await client.admin.createTopic('ordered', { channels: 1 });
    const producer = await client.producer({ topic: 'ordered', bufferedBytesMax: 1000 });
    const sends = [
      ...Array.from({ length: 5 }, (_, i) => producer.send({ body: Buffer.alloc(200, i) })), // the fifth must wait
      producer.send({ body: Buffer.alloc(10, 5) }), // would fit, but comes after a waiting one
    ];
    const batch = producer.sendBatch(Array.from({ length: 6 }, (_, i) => ({ body: Buffer.alloc(200, 6 + i) })));
    const last = producer.send({ body: Buffer.alloc(10, 12) });
    const results = [...(await Promise.all(sends)), ...(await batch), await last];
    assert.deepEqual(results.map((r) => r.offset), Array.from({ length: 13 }, (_, i) => i), 'offsets in send order');
    await producer.close();
  });

  it('producer: a channel option out of range is refused with CHANNEL_NOT_FOUND, one not a whole number with INVALID_ARGUMENT, and nothing is stored', async () => {
    await client.admin.createTopic('two', { channels: 2 });
    for (const [channel, code] of [[2, 'CHANNEL_NOT_FOUND'], [-1, 'INVALID_ARGUMENT'], [0.5, 'INVALID_ARGUMENT']] as const) {
      const err = await rejection(client.producer({ topic: 'two', channel }));
      assert.ok(err instanceof WaymarkError, `channel ${channel}`);
      assert.equal(err.code, code, `channel ${channel}`);
    }
    const producer = await client.producer({ topic: 'two', channel: 1 });
    assert.equal((await rejection(producer.send({ body: 'x', channel: 7 }))).code, 'CHANNEL_NOT_FOUND');
    assert.equal((await producer.send({ body: 'ok' })).channel, 1);
    assert.deepEqual(await highWatermarks('two'), [0, 1]);
  });

  it('HTTP: waymark-channel picks the channel (over the key); a bad one is refused', async () => {
    await httpJson(`${broker.http}/v1/topics/pick`, { method: 'PUT', body: '{"channels":3}' });
    const key = ['a', 'b', 'c', 'd'].find((k) => channelForKey(k, 3) !== 2)!;
    const posted = await httpJson(`${broker.http}/v1/topics/pick/messages`, { method: 'POST', body: 'picked', headers: { 'waymark-channel': '2', 'waymark-key': key } });
    assert.equal(posted.status, 200);
    assert.equal(posted.body.channel, 2);
    const read = await httpJson(`${broker.http}/v1/topics/pick/messages?channel=2&offset=${posted.body.offset}`);
    assert.equal(read.body.messages[0].body, 'picked');
    for (const [value, status, code] of [['3', 404, 'CHANNEL_NOT_FOUND'], ['x', 400, 'INVALID_ARGUMENT'], ['-1', 400, 'INVALID_ARGUMENT']] as const) {
      const r = await httpJson(`${broker.http}/v1/topics/pick/messages`, { method: 'POST', body: 'no', headers: { 'waymark-channel': value } });
      assert.deepEqual([r.status, r.body.error?.code], [status, code], `waymark-channel: ${value}`);
    }
    assert.deepEqual(await highWatermarks('pick'), [0, 0, 1]);
  });

  it('HTTP: without key or channel, posts go round robin from channel 0', async () => {
    await httpJson(`${broker.http}/v1/topics/rr`, { method: 'PUT', body: '{"channels":3}' });
    const channels: number[] = [];
    for (let i = 0; i < 7; i++) channels.push((await httpJson(`${broker.http}/v1/topics/rr/messages`, { method: 'POST', body: `r${i}` })).body.channel);
    assert.deepEqual(channels, [0, 1, 2, 0, 1, 2, 0]);
  });

  it('HTTP: key lookup filters by broker time (from/to inclusive), bounds the count with limit, newest first', async () => {
    await client.admin.createTopic('keyed', { channels: 2 });
    const producer = await client.producer({ topic: 'keyed' });
    const sent: SendResult[] = [];
    for (let n = 0; new Set(sent.map((r) => r.brokerTimestamp)).size < 3 || sent.length < 5; n++) {
      assert.ok(n < 10_000, 'three distinct broker milliseconds');
      sent.push(await producer.send({ key: 'user-1', body: `v${n}` }));
    }
    await producer.send({ key: 'user-2', body: 'other key' });
    const times = [...new Set(sent.map((r) => r.brokerTimestamp))].sort((a, b) => a - b);
    const mid = times[1]!;
    const lookup = async (query: string): Promise<number[]> => {
      const r = await httpJson(`${broker.http}/v1/topics/keyed/keys/user-1${query}`);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.messages.map((m: { offset: number }) => m.offset);
    };
    const offsets = (keep: (r: SendResult) => boolean): number[] => sent.filter(keep).map((r) => r.offset).reverse();
    assert.deepEqual(await lookup(''), offsets(() => true), 'every message of the key, newest first');
    assert.deepEqual(await lookup(`?from=${mid}&to=${mid}`), offsets((r) => r.brokerTimestamp === mid));
    assert.deepEqual(await lookup(`?from=${mid}`), offsets((r) => r.brokerTimestamp >= mid));
    assert.deepEqual(await lookup(`?to=${mid}`), offsets((r) => r.brokerTimestamp <= mid));
    assert.deepEqual(await lookup(`?from=${times[times.length - 1]! + 1}`), []);
    assert.deepEqual(await lookup('?limit=2'), offsets(() => true).slice(0, 2), 'limit keeps the newest');
    assert.deepEqual(await lookup(`?limit=1&to=${mid}`), offsets((r) => r.brokerTimestamp <= mid).slice(0, 1));
  });

  it('HTTP: ?encoding=base64 gives bodyBase64 (binary bodies intact) on every read route', async () => {
    await httpJson(`${broker.http}/v1/topics/binary`, { method: 'PUT', body: '{"channels":1}' });
    const bytes = Buffer.from([0xff, 0x00, 0xfe, 0x80, 0x41]);
    const posted = await httpJson(`${broker.http}/v1/topics/binary/messages`, { method: 'POST', body: bytes, headers: { 'waymark-key': 'bin' } });
    for (const url of [`/v1/topics/binary/messages?encoding=base64`, `/v1/messages/${posted.body.msgId}?topic=binary&encoding=base64`, `/v1/topics/binary/keys/bin?encoding=base64`]) {
      const r = await httpJson(`${broker.http}${url}`);
      const m = r.body.messages?.[0] ?? r.body;
      assert.equal(m.bodyBase64, bytes.toString('base64'), url);
      assert.equal('body' in m, false, `${url}: no utf8 body beside it`);
    }
    const plain = await httpJson(`${broker.http}/v1/topics/binary/messages`);
    assert.equal(plain.body.messages[0].body, bytes.toString('utf8'));
    assert.equal('bodyBase64' in plain.body.messages[0], false);
  });

  it('HTTP: waymark-delay-ms and waymark-deliver-at answer 501 UNSUPPORTED and store nothing', async () => {
    await httpJson(`${broker.http}/v1/topics/later`, { method: 'PUT', body: '{"channels":2}' });
    for (const headers of [{ 'waymark-delay-ms': '1000' } as Record<string, string>, { 'waymark-deliver-at': String(Date.now() + 60_000) }, { 'waymark-delay-ms': '5', 'waymark-key': 'k' }]) {
      const r = await httpJson(`${broker.http}/v1/topics/later/messages`, { method: 'POST', body: 'not yet', headers });
      assert.equal(r.status, 501, JSON.stringify(headers));
      assert.equal(r.body.error.code, 'UNSUPPORTED');
    }
    assert.deepEqual(await highWatermarks('later'), [0, 0]);
  });
});

describe('coverage: waymark dump prints one text line per record', function () {
  this.timeout(60_000);
  const data = tempDir();
  const broker = new BrokerProcess(data);
  after(() => broker.stop());

  it('topic/channel, offset, msgId, key, body length and checksum status, for a stopped broker\'s folder', async () => {
    await loadChecksum();
    await broker.start();
    const client = await connect(broker.url);
    let sent: SendResult[];
    try {
      await client.admin.createTopic('dumped', { channels: 2 });
      const producer = await client.producer({ topic: 'dumped' });
      sent = await producer.sendBatch([
        { key: 'alpha', body: 'hello', channel: 0 },
        { body: Buffer.alloc(1000, 7), channel: 0, headers: { a: '1', b: '2' } },
        { key: 'with space', body: '', channel: 1 },
      ]);
    } finally {
      client.close();
    }
    assert.equal(await broker.stop(), 0, 'stopped first: the folder is locked while it runs');
    const cli = path.join(__dirname, '..', '..', 'bin', 'waymark.js');
    const run = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const proc = spawn(process.execPath, [cli, 'dump', data], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      proc.stdout.on('data', (d: Buffer) => (stdout += d));
      proc.stderr.on('data', (d: Buffer) => (stderr += d));
      proc.on('close', (status) => resolve({ status, stdout, stderr }));
    });
    assert.equal(run.status, 0, run.stderr);
    const lines = run.stdout.trim().split('\n');
    const records = lines.filter((l) => l.startsWith('dumped/'));
    const iso = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z';
    assert.equal(records.length, 3, run.stdout);
    assert.match(records[0]!, new RegExp(`^dumped/0 offset=0 position=0 msgId=${sent[0]!.msgId} key=alpha brokerTime=${iso} bodyBytes=5 checksum=ok$`));
    assert.match(records[1]!, new RegExp(`^dumped/0 offset=1 position=0 msgId=${sent[1]!.msgId} key=- brokerTime=${iso} bodyBytes=1000 headers=2 checksum=ok$`));
    assert.match(records[2]!, new RegExp(`^dumped/1 offset=0 position=0 msgId=${sent[2]!.msgId} key="with space" brokerTime=${iso} bodyBytes=0 checksum=ok$`));
    assert.ok(lines.some((l) => /^# .*dumped.*\.log \(\d+ bytes, base offset 0\)$/.test(l)), 'a header line per segment');
    assert.match(lines[lines.length - 1]!, /^# \d+ segments, \d+ batches \(0 BAD\), \d+ records, 0 damaged ranges$/);
  });
});

describe('coverage: the in-flight request cap of a connection', function () {
  this.timeout(60_000);
  const { broker } = brokerForSuite({ connect: false });

  it('past inflightRequestCountMax (10,000) requests are answered TOO_MANY_REQUESTS; the connection and broker keep serving', async () => {
    const client = await connect(broker.url);
    const raw = await RawClient.open(broker.url);
    try {
      await client.admin.createTopic('busy', { channels: 1 });
      const producer = await client.producer({ topic: 'busy' });
      await producer.sendBatch(Array.from({ length: 10 }, (_, i) => ({ body: `b${i}` })));
      // Frozen while 15,000 tiny fetches are queued: thawed, it reads them in one go, and each
      // fetch waits for a thread-pool read that cannot finish before the last one is decoded.
      process.kill(broker.pid, 'SIGSTOP');
      let replies: Frame[];
      try {
        const pending = Array.from({ length: 15_000 }, () => raw.request({ fetch: { topic: 'busy', channel: 0, offset: 0, maxBytes: 1 } }));
        process.kill(broker.pid, 'SIGCONT');
        replies = await Promise.all(pending);
      } finally {
        process.kill(broker.pid, 'SIGCONT');
      }
      const refused = replies.filter((r) => r.error);
      const served = replies.filter((r) => r.fetchOk);
      assert.ok(refused.length > 0, 'some requests were over the cap');
      assert.equal(refused.length + served.length, 15_000, 'each request answered once');
      assert.ok(served.length >= 10_000, `the first 10,000 are always served: ${served.length}`);
      for (const r of refused) assert.deepEqual([r.error!.name, r.error!.message], ['TOO_MANY_REQUESTS', 'more than 10000 requests in flight']);
      for (const r of served) assert.equal(r.fetchOk!.highWatermark, 10);
      assert.equal(await metric(broker.http, 'waymark_errors_total{code="TOO_MANY_REQUESTS"}'), refused.length);
      const after = await raw.request({ fetch: { topic: 'busy', channel: 0, offset: 5, maxBytes: 1 << 20 } });
      assert.equal(after.fetchOk?.nextOffset, 10, 'the same connection serves again');
      assert.equal((await producer.send({ body: 'after' })).offset, 10, 'and so does the broker');
    } finally {
      await raw.close();
      client.close();
    }
  });
});
