import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { connect, channelForKey, type Client, type Message, type SendResult } from '../sdk/index';
import { encodeBatch, loadChecksum } from '../engine/format/index';
import { BrokerProcess, brokerForSuite, httpJson, RawClient, take, text } from './broker-helpers';
import type { Frame } from '../protocol/frames';
import { countRecords } from '../sdk/consumer';
import { rejection, removeTempDirs, tempDir } from './helpers';

after(removeTempDirs);

/** The next `count` messages (next() directly: leaving a for-await loop would close the consumer). */

describe('broker: SDK round trips against a real broker process', function () {
  this.timeout(60_000);
  const suite = brokerForSuite();
  const broker = suite.broker;
  let client: Client;
  before(() => (client = suite.client()));

  it('produces with keys and consumes every message once, in order per channel', async () => {
    await client.admin.createTopic('orders', { channels: 4, owner: 'billing' });
    const producer = await client.producer({ topic: 'orders' });
    const sent = await Promise.all(Array.from({ length: 2000 }, (_, i) => producer.send({ key: `user-${i % 37}`, body: `order ${i}`, headers: { n: String(i) } })));
    const consumer = await client.consumer({ topic: 'orders', group: 'billing', start: 'earliest', autoCommitIntervalMs: 0 });
    const got = await take(consumer, 2000);
    await consumer.close();
    assert.equal(new Set(got.map((m) => m.msgId)).size, 2000, 'no duplicates');
    const byId = new Map(sent.map((s, i) => [s.msgId, { ...s, i }]));
    const lastOffset = new Map<number, number>();
    for (const m of got) {
      const s = byId.get(m.msgId)!;
      assert.equal(text(m), `order ${s.i}`);
      assert.equal(m.headers.n, String(s.i));
      assert.equal(m.channel, s.channel);
      assert.equal(m.offset, s.offset);
      assert.equal(m.channel, channelForKey(`user-${s.i % 37}`, 4), 'repack by key hash');
      assert.ok(m.offset > (lastOffset.get(m.channel) ?? -1), 'in order per channel');
      lastOffset.set(m.channel, m.offset);
    }
  });

  it('callback style: run() hands every message over once, in order, awaits a handler\'s promise, and a throwing handler rejects run()', async () => {
    await client.admin.createTopic('callbacks', { channels: 1 });
    const producer = await client.producer({ topic: 'callbacks' });
    await producer.sendBatch(Array.from({ length: 500 }, (_, i) => ({ body: `m${i}` })));
    const consumer = await client.consumer({ topic: 'callbacks', group: 'cb', start: 'earliest', autoCommitIntervalMs: 0 });
    const seen: string[] = [];
    let inHandler = 0;
    let overlapped = false;
    const running = consumer.run(async (m) => {
      overlapped ||= inHandler > 0;
      inHandler++;
      seen.push(text(m));
      if (seen.length % 100 === 0) await new Promise((resolve) => setImmediate(resolve)); // an async handler now and then
      inHandler--;
      if (seen.length === 500) void consumer.close();
    });
    await running;
    assert.deepEqual(seen, Array.from({ length: 500 }, (_, i) => `m${i}`));
    assert.equal(overlapped, false, 'a handler\'s promise is awaited before the next message');

    const failing = await client.consumer({ topic: 'callbacks', group: 'cb-fail', start: 'earliest', autoCommitIntervalMs: 0 });
    let calls = 0;
    await assert.rejects(
      failing.run(() => {
        if (++calls === 3) throw new Error('handler failed');
      }),
      /handler failed/,
    );
    assert.equal(calls, 3, 'no message after the throw');
    await failing.close();
  });

  it('for await over a consumer: break closes it and commits where it stopped (the message in hand once committed); automatic commits follow the interval', async () => {
    await client.admin.createTopic('iterate', { channels: 1 });
    const producer = await client.producer({ topic: 'iterate' });
    await producer.sendBatch(Array.from({ length: 50 }, (_, i) => ({ body: `i${i}` })));
    const consumer = await client.consumer({ topic: 'iterate', group: 'loop', start: 'earliest' });
    const got: string[] = [];
    for await (const m of consumer) {
      got.push(text(m));
      if (got.length === 10) {
        await consumer.commit(m); // done with it: without this it is in hand, and comes again
        break;
      }
    }
    assert.deepEqual(got, Array.from({ length: 10 }, (_, i) => `i${i}`));
    const afterBreak = await client.admin.positions('iterate', 'loop');
    assert.deepEqual(afterBreak.map((p) => [p.channel, p.offset]), [[0, 10]], 'committed at the break');
    const resumed = await client.consumer({ topic: 'iterate', group: 'loop', autoCommitIntervalMs: 0 });
    assert.equal(text((await resumed.next()).value as Message), 'i10', 'the closed subscription ended; a new one resumes after the break');
    await resumed.close();

    // Automatic commit without close(): the position moves on its own every autoCommitIntervalMs.
    const auto = await client.consumer({ topic: 'iterate', group: 'auto', start: 'earliest', autoCommitIntervalMs: 20 });
    await take(auto, 31); // the 31st is in hand: the first 30 are done
    let committed = 0;
    for (let polls = 0; committed !== 30 && polls < 500; polls++) {
      committed = (await client.admin.positions('iterate', 'auto'))[0]?.offset ?? 0;
      if (committed !== 30) await new Promise((resolve) => setTimeout(resolve, 10)); // polling for the timer's commit
    }
    assert.equal(committed, 30, 'committed by the timer');
    await auto.close();
  });

  it('sendBatch: one promise for many messages, results in order; a bad message rejects the call and is never stored', async () => {
    await client.admin.createTopic('bulk', { channels: 3 });
    const producer = await client.producer({ topic: 'bulk' });
    const results = await producer.sendBatch(Array.from({ length: 3000 }, (_, i) => ({ key: `k${i % 11}`, body: `bulk ${i}` })));
    assert.equal(results.length, 3000);
    assert.equal(new Set(results.map((r) => r.msgId)).size, 3000);
    results.forEach((r, i) => assert.equal(r.channel, channelForKey(`k${i % 11}`, 3), `result ${i} in order`));
    const bad = await producer.sendBatch([{ body: 'fine' }, { body: 'too long', key: 'x'.repeat(5000) }]).then(
      () => null,
      (err: { code?: string }) => err,
    );
    assert.equal(bad?.code, 'KEY_TOO_LARGE');
    const consumer = await client.consumer({ topic: 'bulk', group: 'g', start: 'earliest', autoCommitIntervalMs: 0 });
    const got = await take(consumer, 3000);
    const byId = new Map(got.map((m) => [m.msgId, m]));
    results.forEach((r, i) => {
      const m = byId.get(r.msgId)!;
      assert.equal(text(m), `bulk ${i}`);
      assert.equal(m.offset, r.offset);
    });
    // As with Promise.all over send(): the refused message is never stored; the good one of that call may be.
    const described = await client.admin.describeTopic('bulk');
    const stored = described.channelStates.reduce((n, c) => n + c.highWatermark, 0);
    assert.ok(stored === 3000 || stored === 3001, `stored ${stored}`);
    const rest = await take(consumer, stored - 3000);
    assert.ok(rest.every((m) => text(m) === 'fine'));
    await consumer.close();
  });

  it('a batch the broker refuses rejects every send() and sendBatch() in it with the broker\'s typed error', async () => {
    await client.admin.createTopic('doomed', { channels: 1 });
    const producer = await client.producer({ topic: 'doomed' });
    await producer.send({ body: 'before' });
    await client.admin.deleteTopic('doomed');
    // Same turn: one batch holding three send() runs and one sendBatch() run.
    const outcomes = await Promise.allSettled([
      producer.send({ body: 'a' }),
      producer.sendBatch([{ body: 'b' }, { body: 'c' }]),
      producer.send({ body: 'd' }),
      producer.send({ body: 'e' }),
    ]);
    assert.deepEqual(
      outcomes.map((o) => (o.status === 'rejected' ? (o.reason as { code?: string }).code : 'fulfilled')),
      ['TOPIC_NOT_FOUND', 'TOPIC_NOT_FOUND', 'TOPIC_NOT_FOUND', 'TOPIC_NOT_FOUND'],
    );
  });

  it('a send() past a limit fails alone: the other sends of its turn (its batch-to-be) are stored', async () => {
    await client.admin.createTopic('mixed', { channels: 1 });
    const producer = await client.producer({ topic: 'mixed' });
    const outcomes = await Promise.allSettled([
      producer.send({ body: 'good 1' }),
      producer.send({ body: 'bad', key: 'x'.repeat(5000) }),
      producer.send({ body: 'bad', headers: { h: 'v'.repeat(70_000) } }),
      producer.send({ body: 'good 2' }),
    ]);
    assert.deepEqual(
      outcomes.map((o) => (o.status === 'rejected' ? (o.reason as { code?: string }).code : 'stored')),
      ['stored', 'KEY_TOO_LARGE', 'HEADERS_TOO_LARGE', 'stored'],
    );
    const consumer = await client.consumer({ topic: 'mixed', group: 'g', start: 'earliest', autoCommitIntervalMs: 0 });
    assert.deepEqual((await take(consumer, 2)).map(text), ['good 1', 'good 2']);
    await consumer.close();
  });

  it('a retried batch (same producer id + sequence) is not appended twice', async () => {
    await client.admin.createTopic('idem', { channels: 1 });
    const raw = await RawClient.open(broker.url);
    const { batch } = encodeBatch([{ body: 'once' }, { body: 'only' }], { producerId: 4242, producerSequence: 0 });
    const first = await raw.request({ produce: { topic: 'idem', channel: 0, batch } });
    const again = await raw.request({ produce: { topic: 'idem', channel: 0, batch } });
    assert.equal(first.produceOk!.appends![0]!.duplicate, false);
    assert.equal(again.produceOk!.appends![0]!.duplicate, true);
    assert.equal(again.produceOk!.appends![0]!.baseOffset, first.produceOk!.appends![0]!.baseOffset);
    const described = await client.admin.describeTopic('idem');
    assert.equal(described.channelStates[0]!.highWatermark, 2);
    await raw.close();
  });

  it('broadcast puts one message in every channel', async () => {
    await client.admin.createTopic('bcast', { channels: 3 });
    const producer = await client.producer({ topic: 'bcast' });
    const results = await producer.broadcast({ body: 'to everyone' });
    assert.deepEqual(results.map((r) => r.channel).sort(), [0, 1, 2]);
    assert.equal(new Set(results.map((r) => r.msgId)).size, 1, 'one msgId');
    const consumer = await client.consumer({ topic: 'bcast', group: 'g', start: 'earliest', autoCommitIntervalMs: 0 });
    const got = await take(consumer, 3);
    await consumer.close();
    assert.deepEqual(got.map((m) => m.channel).sort(), [0, 1, 2]);
    assert.ok(got.every((m) => text(m) === 'to everyone'));
  });

  it('one group split by channels: each member reads only its channels, and both positions are kept', async () => {
    await client.admin.createTopic('split', { channels: 2 });
    const producer = await client.producer({ topic: 'split' });
    await Promise.all(Array.from({ length: 10 }, (_, i) => producer.send({ body: `s${i}`, channel: i % 2 })));
    const a = await client.consumer({ topic: 'split', group: 'w', channels: [0], start: 'earliest', autoCommitIntervalMs: 0 });
    const b = await client.consumer({ topic: 'split', group: 'w', channels: [1], start: 'earliest', autoCommitIntervalMs: 0 });
    const fromA = await take(a, 5);
    const fromB = await take(b, 5);
    assert.ok(fromA.every((m) => m.channel === 0) && fromB.every((m) => m.channel === 1));
    await a.commit();
    await b.commit();
    assert.deepEqual((await client.admin.positions('split', 'w')).map((p) => [p.channel, p.offset]).sort(), [[0, 5], [1, 5]]);
    await a.close();
    await b.close();
  });

  it('seeks to an offset, to a time, to earliest and to latest', async () => {
    await client.admin.createTopic('seek', { channels: 1 });
    const producer = await client.producer({ topic: 'seek' });
    const first = await Promise.all(Array.from({ length: 10 }, (_, i) => producer.send({ body: `a${i}` })));
    const consumer = await client.consumer({ topic: 'seek', group: 's', start: 'earliest', autoCommitIntervalMs: 0 });
    assert.deepEqual((await take(consumer, 10)).map(text), first.map((_, i) => `a${i}`));
    await consumer.seek({ offsets: { 0: 7 } });
    assert.deepEqual((await take(consumer, 3)).map((m) => m.offset), [7, 8, 9]);
    await consumer.seek('earliest');
    assert.equal((await take(consumer, 1))[0]!.offset, 0);
    let later = await producer.send({ body: 'b0' });
    while (later.brokerTimestamp === first[9]!.brokerTimestamp) later = await producer.send({ body: 'b0' });
    await consumer.seek({ timestamp: later.brokerTimestamp });
    const afterTime = await take(consumer, 1);
    assert.ok(afterTime[0]!.brokerTimestamp >= later.brokerTimestamp);
    assert.ok(afterTime[0]!.offset <= later.offset);
    await consumer.seek({ timestamp: 0 });
    assert.equal((await take(consumer, 1))[0]!.offset, 0, 'time 0: from the earliest');
    assert.equal((await rejection(consumer.seek({ timestamp: -5 }))).code, 'INVALID_ARGUMENT');
    for (const bad of [null, 'newest', {}] as unknown[]) assert.equal((await rejection(consumer.seek(bad as 'latest'))).code, 'INVALID_ARGUMENT', `seek(${JSON.stringify(bad)})`);
    assert.equal((await take(consumer, 1))[0]!.offset, 1, 'a refused seek moves nothing');
    await consumer.seek('latest');
    const fresh = await producer.send({ body: 'after latest' });
    const next = await take(consumer, 1);
    assert.equal(next[0]!.offset, fresh.offset);
    await consumer.close();
  });

  // Found by a review (helper-25): the consumer had taken the seek's new epoch before the
  // reply, the broker never applied it and went on pushing in the old one, and every push was
  // dropped as stale: nothing came again, not even new messages.
  it('a seek the broker refuses (past the end) leaves the consumer where it was: what it had buffered and what comes later are handed out', async () => {
    await client.admin.createTopic('seek-refused', { channels: 1 });
    const producer = await client.producer({ topic: 'seek-refused' });
    await Promise.all(Array.from({ length: 10 }, (_, i) => producer.send({ body: `a${i}` })));
    const consumer = await client.consumer({ topic: 'seek-refused', group: 's', start: 'earliest', autoCommitIntervalMs: 0 });
    assert.deepEqual((await take(consumer, 3)).map((m) => m.offset), [0, 1, 2]);
    assert.equal((await rejection(consumer.seek({ offsets: { 0: 100_000 } }))).code, 'OFFSET_OUT_OF_RANGE');
    assert.deepEqual((await take(consumer, 7)).map((m) => m.offset), [3, 4, 5, 6, 7, 8, 9]);
    const fresh = await producer.send({ body: 'after' });
    assert.equal((await take(consumer, 1))[0]!.offset, fresh.offset);
    await consumer.close();
  });

  // Found by a review (helper-51): a seek zeroed the credit of messages taken and not yet given
  // back (up to a quarter window); the subscription goes on, so each seek shrank its window
  // until nothing came (with a window of 100: after the fifth seek).
  it('seeks keep the whole credit window: a consumer that seeks again and again still gets everything', async () => {
    await client.admin.createTopic('seek-credit', { channels: 1 });
    const producer = await client.producer({ topic: 'seek-credit' });
    for (let i = 0; i < 300; i++) await producer.send({ body: `m${i}` }); // a batch each: credit is counted per batch
    const consumer = await client.consumer({ topic: 'seek-credit', group: 'g', start: 'earliest', autoCommitIntervalMs: 0, prefetchMessages: 100 });
    let next = 0;
    for (let round = 0; round < 10; round++) {
      assert.deepEqual((await take(consumer, 24)).map((m) => m.offset), Array.from({ length: 24 }, (_, i) => next + i), `round ${round}`);
      next += 24;
      await consumer.seek({ offsets: { 0: next } }); // stays where it is
    }
    assert.deepEqual((await take(consumer, 300 - next)).map((m) => m.offset), Array.from({ length: 300 - next }, (_, i) => next + i));
    await consumer.close();
  });

  // Found by a review (helper-51): a seek to a time looks its offsets up before it applies;
  // a seek by positions sent right after it was applied first, then undone by it, in the older
  // epoch — the client dropped every push after as stale, and the consumer stalled for good.
  it('two seeks in flight are applied in the order sent: the later one wins, and what follows is pushed in its epoch', async () => {
    await client.admin.createTopic('seek-order', { channels: 1 });
    const producer = await client.producer({ topic: 'seek-order' });
    await producer.sendBatch(Array.from({ length: 100 }, (_, i) => ({ body: `m${i}` })));
    const raw = await RawClient.open(broker.url);
    await raw.request({ subscribe: { topic: 'seek-order', group: 'g', start: 'latest', creditMessages: 1000, creditBytes: 1 << 20, subscription: 1 } });
    const [byTime, byPosition] = await Promise.all([
      raw.request({ seek: { subscription: 1, timestamp: 1, epoch: 1 } }),
      raw.request({ seek: { subscription: 1, positions: [{ channel: 0, offset: 50 }], epoch: 2 } }),
    ]);
    assert.deepEqual(byTime.seekOk?.positions?.map((p) => Number(p.offset)), [0]);
    assert.deepEqual(byPosition.seekOk?.positions?.map((p) => Number(p.offset)), [50]);
    // Pushes may come before their seek's reply, so the state both seeks left is read from a
    // message appended after both replies: it is pushed in the epoch that won.
    await producer.send({ body: 'after both seeks' });
    await new Promise<void>((resolve) => {
      const check = (): void => (raw.pushes.some((f) => Number(f.push?.nextOffset) === 101) ? resolve() : void (raw.onFrame = check));
      check();
    });
    const pushes = raw.pushes.map((f) => ({ epoch: f.push!.epoch, start: Number(f.push!.startOffset), next: Number(f.push!.nextOffset) }));
    assert.equal(pushes.find((p) => p.next === 101)!.epoch, 2, `pushes: ${JSON.stringify(pushes)}`);
    let at = 50;
    for (const p of pushes.filter((p) => p.epoch === 2)) {
      assert.equal(p.start, at, `the later seek's pushes run on from 50: ${JSON.stringify(pushes)}`);
      at = p.next;
    }
    await raw.close();
  });

  it('a seek, or a start, at a time still ahead of the broker\'s clock hands out only messages stamped at or after it (packs and stream consumers)', async () => {
    await client.admin.createTopic('ahead', { channels: 2 });
    const producer = await client.producer({ topic: 'ahead' });
    const old = await producer.send({ channel: 0, body: 'old' });
    const at = old.brokerTimestamp + 1500; // a client clock ahead of the broker's
    const packs = client.msgStream();
    await packs.asConsumer('ahead', 'packs', { start: { timestamp: at }, tickIntervalMs: 10 });
    const consumer = await client.consumer({ topic: 'ahead', group: 'stream', start: 'earliest', autoCommitIntervalMs: 0 });
    assert.equal(text((await take(consumer, 1))[0]!), 'old');
    await consumer.seek({ timestamp: at });
    // Sent until the broker's clock reaches `at`: all but the last are stamped before it.
    const sent: Array<{ body: string; time: number }> = [];
    for (let i = 0; sent.length === 0 || sent[sent.length - 1]!.time < at; i++) {
      const r = await producer.send({ channel: i % 2, body: `m${i}` });
      sent.push({ body: `m${i}`, time: r.brokerTimestamp });
    }
    const firstAtOrAfter = sent[sent.length - 1]!;
    assert.ok(sent.length > 1 && sent[0]!.time < at, 'some were stamped before the time');
    assert.equal(text((await take(consumer, 1))[0]!), firstAtOrAfter.body, 'the stream consumer skips those stamped before it');
    const got: Message[] = [];
    while (!got.some((m) => text(m) === firstAtOrAfter.body)) {
      const pack = (await packs.next()).value!;
      for (const m of pack.msgs) {
        assert.ok(m.brokerTimestamp > pack.beginTs && m.brokerTimestamp <= pack.endTs, `${text(m)} at ${m.brokerTimestamp} inside (${pack.beginTs}, ${pack.endTs}]`);
        got.push(m);
      }
    }
    assert.deepEqual(got.map(text), [firstAtOrAfter.body], 'packs hold none stamped before the start time');
    await consumer.close();
    await packs.close();
  });

  it('time-tick packs: every message of every channel, each inside (beginTs, endTs], packs chained', async () => {
    await client.admin.createTopic('packs', { channels: 3 });
    const stream = client.msgStream();
    await stream.asProducer('packs');
    const msgs = Array.from({ length: 300 }, (_, i) => ({ key: `k${i}`, body: `p${i}` }));
    const results = await stream.produce({ msgs });
    assert.equal(new Set(results.map((r) => r.channel)).size, 3, 'spread over the channels by key');
    const consumer = client.msgStream();
    await consumer.asConsumer('packs', 'lockstep', { start: 'earliest', tickIntervalMs: 20 });
    const seen = new Set<string>();
    let previousEnd = -1;
    for await (const pack of consumer) {
      if (previousEnd >= 0) assert.equal(pack.beginTs, previousEnd, 'packs are chained');
      assert.ok(pack.endTs > pack.beginTs);
      for (const m of pack.msgs) {
        assert.ok(m.brokerTimestamp > pack.beginTs && m.brokerTimestamp <= pack.endTs, `message time ${m.brokerTimestamp} in (${pack.beginTs}, ${pack.endTs}]`);
        seen.add(text(m));
      }
      assert.equal(pack.startPositions.length, 3);
      previousEnd = pack.endTs;
      if (seen.size === 300) break;
    }
    assert.equal(seen.size, 300);
    await consumer.close();
    await stream.close();
  });

  it('time-tick packs over a backlog spread across channels fill the credit (they dwindled to one message a pack)', async () => {
    await client.admin.createTopic('packlog', { channels: 2 });
    const producer = await client.producer({ topic: 'packlog' });
    // Rounds of ten sends, each acknowledged before the next: many small batches in both
    // channels, their broker times interleaved.
    for (let r = 0; r < 300; r++) await Promise.all(Array.from({ length: 10 }, (_, i) => producer.send({ body: `m${r * 10 + i}` })));
    const consumer = client.msgStream();
    await consumer.asConsumer('packlog', 'backlog', { start: 'earliest', prefetchMessages: 500 });
    const perChannel = new Map<number, number[]>([[0, []], [1, []]]);
    let packs = 0;
    let messages = 0;
    for await (const pack of consumer) {
      packs++;
      for (const m of pack.msgs) perChannel.get(m.channel)!.push(m.offset);
      messages += pack.msgs.length;
      if (messages >= 3000) break;
    }
    assert.equal(messages, 3000);
    for (const offsets of perChannel.values()) assert.deepEqual(offsets, offsets.map((_, i) => i), 'every offset once, in order');
    // A window of 500 messages: 3,000 fit in a few more than six packs; the broker used to
    // cut a pack at the first batch of a later channel past the credit, and then ask for
    // one message at a time.
    assert.ok(packs <= 12, `${packs} packs for 3,000 messages with a 500-message window`);
    await consumer.close();
  });

  it('eight consumers read one backlog at once, in small credit windows: each gets every message in order, byte for byte (pushes share the broker\'s read and frame buffers)', async () => {
    await client.admin.createTopic('shared-reads', { channels: 3 });
    const producer = await client.producer({ topic: 'shared-reads' });
    // Incompressible bodies of 100–700 B in batches of up to 40: many batches, many pushes.
    const bodies = Array.from({ length: 3000 }, (_, i) => randomBytes(100 + ((i * 7919) % 600)));
    for (let i = 0; i < bodies.length; i += 40) await producer.sendBatch(bodies.slice(i, i + 40).map((body, j) => ({ body, channel: (i / 40) % 3, headers: { i: String(i + j) } })));
    await producer.close();
    const readers = Array.from({ length: 8 }, async (_, r) => {
      const other = await connect(broker.url);
      try {
        // Windows of 50–225 messages and 16 KiB: a push holds one to a few batches, and credit comes back often.
        const consumer = await other.consumer({ topic: 'shared-reads', group: `reader-${r}`, start: 'earliest', autoCommitIntervalMs: 0, prefetchMessages: 50 + r * 25, prefetchBytes: 16 * 1024 });
        const got = await take(consumer, bodies.length);
        const next = [0, 0, 0];
        for (const m of got) {
          assert.equal(m.offset, next[m.channel], `reader ${r}: channel ${m.channel} in order`);
          next[m.channel]!++;
          assert.ok(Buffer.from(m.body).equals(bodies[Number(m.headers.i)]!), `reader ${r}: body of message ${m.headers.i}`);
        }
        await consumer.close();
        return got.length;
      } finally {
        other.close();
      }
    });
    assert.deepEqual(await Promise.all(readers), Array.from({ length: 8 }, () => bodies.length));
  });

  it('a slow consumer slows only itself: a stalled socket holds its own pushes, another consumer gets everything', async () => {
    await client.admin.createTopic('slow', { channels: 1 });
    const stalled = await RawClient.open(broker.url);
    await stalled.request({ subscribe: { topic: 'slow', group: 'stalled', start: 'earliest', subscription: 1, creditMessages: 1_000_000, creditBytes: 1 << 30 } });
    stalled.pauseReading();
    const producer = await client.producer({ topic: 'slow' });
    const body = randomBytes(100 * 1024); // incompressible: 30 MiB on the wire, far past the 8 MiB socket bound
    await Promise.all(Array.from({ length: 300 }, (_, i) => producer.send({ body, headers: { i: String(i) } })));
    const healthy = await client.consumer({ topic: 'slow', group: 'healthy', start: 'earliest', autoCommitIntervalMs: 0 });
    const got = await take(healthy, 300);
    assert.deepEqual(got.map((m) => Number(m.headers.i)), Array.from({ length: 300 }, (_, i) => i));
    await healthy.close();
    // The stalled consumer gets everything too, once it reads again.
    stalled.resumeReading();
    await new Promise<void>((resolve) => {
      const count = (): number => stalled.pushes.reduce((n, f) => n + countRecords(f.push?.batches), 0);
      const check = (): void => (count() >= 300 ? resolve() : void (stalled.onFrame = check));
      check();
    });
    await stalled.close();
  });

  it('a deleted topic\'s series leave /metrics (they stayed for good: the series only grew with topic churn); a re-created one starts at 0', async () => {
    await client.admin.createTopic('churn', { channels: 2 });
    const producer = await client.producer({ topic: 'churn' });
    await producer.sendBatch([{ body: 'a', channel: 0 }, { body: 'b', channel: 1 }]);
    const rows = async (): Promise<string[]> => (await (await fetch(`${broker.http}/metrics`)).text()).split('\n').filter((l) => l.includes('topic="churn"'));
    assert.ok((await rows()).some((l) => l.startsWith('waymark_appended_messages_total{topic="churn",channel="1"} 1')), 'counted while it exists');
    await client.admin.deleteTopic('churn');
    assert.deepEqual(await rows(), [], 'gone with the topic');
    await client.admin.createTopic('churn', { channels: 1 });
    await (await client.producer({ topic: 'churn' })).send({ body: 'c' });
    assert.deepEqual((await rows()).filter((l) => l.startsWith('waymark_appended_messages_total')), ['waymark_appended_messages_total{topic="churn",channel="0"} 1']);
  });

  it('a subscription with no credit left ends with TOPIC_NOT_FOUND when its topic is deleted and made again (it went on into the new topic at its old positions)', async () => {
    await client.admin.createTopic('reborn', { channels: 1 });
    const producer = await client.producer({ topic: 'reborn' });
    await producer.sendBatch(Array.from({ length: 5 }, (_, i) => ({ body: `old${i}` })));
    const raw = await RawClient.open(broker.url);
    await raw.request({ subscribe: { topic: 'reborn', group: 'g', start: 'earliest', subscription: 1, creditMessages: 5, creditBytes: 1 << 20 } });
    const ended = raw.nextUnsolicited();
    await client.admin.deleteTopic('reborn');
    await client.admin.createTopic('reborn', { channels: 1 });
    const again = await client.producer({ topic: 'reborn' });
    await again.sendBatch(Array.from({ length: 8 }, (_, i) => ({ body: `new${i}` })));
    await raw.request({ credit: { subscription: 1, messages: 100, bytes: 1 << 20 } });
    const err = await ended;
    assert.equal(err.error?.name, 'TOPIC_NOT_FOUND');
    const offsets = raw.pushes.flatMap((f) => (f.push?.batches?.length ? [f.push.startOffset] : []));
    assert.ok(offsets.every((o) => o === 0), `only the old topic's one push: ${offsets}`);
    await raw.close();
  });

  // Found by a review (helper-25): a consumer whose topic was deleted and made again went on
  // committing what it had read from the old topic (its close(), its timer), and the group
  // then skipped that much of the new topic. A commit now says which topic it read.
  it('a consumer whose topic was deleted and made again cannot commit the old topic\'s positions into the new one (TOPIC_NOT_FOUND); nor a msgStream', async () => {
    await client.admin.createTopic('twice', { channels: 1 });
    const producer = await client.producer({ topic: 'twice' });
    await producer.sendBatch(Array.from({ length: 5 }, (_, i) => ({ body: `old${i}` })));
    const consumer = await client.consumer({ topic: 'twice', group: 'app', start: 'earliest', autoCommitIntervalMs: 0 });
    await take(consumer, 5);
    const stream = client.msgStream();
    await stream.asConsumer('twice', 'packs', { start: 'earliest', tickIntervalMs: 10 });
    const pack = (await stream.next()).value as { endPositions: Array<{ channel: number; offset: number }> };
    await client.admin.deleteTopic('twice');
    await client.admin.createTopic('twice', { channels: 1 });
    const again = await client.producer({ topic: 'twice' });
    await again.sendBatch(Array.from({ length: 3 }, (_, i) => ({ body: `new${i}` })));

    assert.equal((await rejection(consumer.commit())).code, 'TOPIC_NOT_FOUND');
    assert.equal((await rejection(stream.commit(pack.endPositions))).code, 'TOPIC_NOT_FOUND');
    assert.deepEqual(await client.admin.positions('twice', 'app'), [], 'nothing stored for the new topic');
    assert.deepEqual(await client.admin.positions('twice', 'packs'), []);
    const fresh = await client.consumer({ topic: 'twice', group: 'app', autoCommitIntervalMs: 0 }); // committed, else earliest
    assert.deepEqual((await take(fresh, 3)).map(text), ['new0', 'new1', 'new2']);
    await fresh.close();
    await consumer.close().catch(() => undefined);
    await stream.close();
  });

  it('deleting a topic ends its subscriptions with TOPIC_NOT_FOUND', async () => {
    await client.admin.createTopic('doomed', { channels: 1 });
    const consumer = await client.consumer({ topic: 'doomed', group: 'g', start: 'earliest', autoCommitIntervalMs: 0 });
    const waiting = consumer.next().then(
      () => null,
      (err: { code?: string }) => err,
    );
    await client.admin.createTopic('bystander', { channels: 1 });
    await client.admin.deleteTopic('doomed');
    const producer = await client.producer({ topic: 'bystander' });
    await producer.send({ body: 'unrelated traffic keeps flowing' });
    const err = await waiting;
    assert.equal(err?.code, 'TOPIC_NOT_FOUND');
  });

  it('custom repack function picks the channels', async () => {
    await client.admin.createTopic('repack', { channels: 2 });
    const stream = client.msgStream();
    await stream.asProducer('repack');
    stream.setRepackFunc((msgs) => new Map([[1, [...msgs]]]));
    const results = await stream.produce({ msgs: [{ body: 'x', key: 'a' }, { body: 'y', key: 'b' }] });
    assert.deepEqual(results.map((r) => r.channel), [1, 1]);
    await stream.close();
  });
});

describe('broker: request timeouts', function () {
  this.timeout(60_000);
  const { broker } = brokerForSuite({ connect: false });

  it('a broker that stops answering fails each waiting request with TIMEOUT, none before requestTimeoutMs; a send is held and resent on a new connection, stored once', async () => {
    const client = await connect(broker.url, { requestTimeoutMs: 300, reconnectDelayMs: 20 });
    try {
      await client.admin.createTopic('slow', { channels: 1 });
      const producer = await client.producer({ topic: 'slow' });
      process.kill(broker.pid, 'SIGSTOP'); // frozen: the socket stays open, nothing is answered
      const started = performance.now();
      // The first request past its deadline fails with TIMEOUT and the connection is dropped:
      // one still within its own deadline then fails with CONNECTION_LOST.
      const outcome = (what: string) => (err: { code: string }) => `${what} ${err.code === 'CONNECTION_LOST' ? 'TIMEOUT' : err.code} ${performance.now() - started >= 300 ? 'after' : 'before'} the timeout`;
      const sent = producer.send({ body: 'one' });
      const failed = await Promise.all([
        client.admin.listTopics().then(() => 'list answered', outcome('list')),
        client.admin.describeTopic('slow').then(() => 'describe answered', outcome('describe')),
      ]);
      assert.deepEqual(failed, ['list TIMEOUT after the timeout', 'describe TIMEOUT after the timeout']);
      // The timeout dropped the connection; the send's batch is held for a resend (it failed
      // with TIMEOUT before, which invited a retry and a duplicate).
      process.kill(broker.pid, 'SIGCONT');
      assert.equal((await sent).offset, 0);
      assert.ok((await client.admin.listTopics()).some((t) => t.name === 'slow'), 'served again once the broker runs');
      const consumer = await client.consumer({ topic: 'slow', group: 'g', start: 'earliest' });
      assert.deepEqual((await take(consumer, 1)).map(text), ['one']);
      assert.deepEqual((await client.admin.describeTopic('slow')).channelStates.map((c) => c.highWatermark), [1], 'stored once');
      await consumer.close();
    } finally {
      client.close();
    }
  });
});

describe('broker: subscriptions at their edges', function () {
  this.timeout(60_000);
  const { broker } = brokerForSuite({ connect: false });
  const produce = (c: RawClient, topic: string, channel: number, body: string): Promise<unknown> => c.request({ produce: { topic, channel, batch: encodeBatch([{ body }]).batch } });
  const liveSubscriptions = async (): Promise<number> => Number(/^waymark_subscriptions (\d+)$/m.exec(await (await fetch(`${broker.http}/metrics`)).text())![1]);

  // Found by a review (helper-51): GetPositions took any group name ("" and "../x y" answered
  // [], 70,000 bytes KEY_TOO_LARGE), an unknown fallback became earliest, and a start
  // position for a channel not subscribed was dropped, all without a word.
  it('bad names, fallbacks and start positions are refused with a typed error, the name shown cut short', async () => {
    const c = await RawClient.open(broker.url);
    await c.request({ createTopic: { topic: 'edges', channels: 2 } });
    const refused = async (request: Parameters<RawClient['request']>[0]): Promise<[string, string]> => {
      const reply = await c.request(request);
      return [reply.error?.name ?? 'answered', reply.error?.message ?? ''];
    };
    for (const group of ['', '../x y', 'a'.repeat(70_000)]) {
      const [name, message] = await refused({ getPositions: { topic: 'edges', group } });
      assert.equal(name, 'INVALID_NAME', `group of ${group.length} characters`);
      assert.ok(message.length < 200, `the message names the group cut short: ${message.length} characters`);
    }
    const [topicError, topicMessage] = await refused({ describeTopic: { topic: 'b'.repeat(70_000) } });
    assert.equal(topicError, 'INVALID_NAME', 'no topic can have that name (helper-59: it was TOPIC_NOT_FOUND)');
    assert.match(topicMessage, /\(70000 bytes\)/);
    assert.deepEqual(await refused({ subscribe: { topic: 'edges', group: 'g', fallback: 'bogus', subscription: 1, creditMessages: 1, creditBytes: 1 } }), ['INVALID_ARGUMENT', 'fallback must be earliest or latest, not bogus']);
    assert.equal((await refused({ subscribe: { topic: 'edges', group: 'g', channels: [0], positions: [{ channel: 1, offset: 0 }], subscription: 2, creditMessages: 1, creditBytes: 1 } }))[0], 'CHANNEL_NOT_FOUND');
    assert.equal((await refused({ subscribe: { topic: 'edges', group: 'g', positions: [{ channel: 1, offset: 0 }, { channel: 1, offset: 0 }], subscription: 3, creditMessages: 1, creditBytes: 1 } }))[0], 'INVALID_ARGUMENT', 'a channel given twice');
    assert.equal(await liveSubscriptions(), 0, 'no subscription was made');
    await c.close();
  });

  it('a refused seek moves no channel (those listed before the bad position moved, in the old epoch)', async () => {
    await loadChecksum();
    const c = await RawClient.open(broker.url);
    await c.request({ createTopic: { topic: 'seek2', channels: 2 } });
    for (let i = 0; i < 10; i++) await produce(c, 'seek2', 0, `m${i}`);
    await produce(c, 'seek2', 1, 'x');
    await c.request({ subscribe: { topic: 'seek2', group: 'g', start: 'earliest', subscription: 1, creditMessages: 0, creditBytes: 0 } });
    const refused = await c.request({ seek: { subscription: 1, epoch: 1, positions: [{ channel: 0, offset: 10 }, { channel: 1, offset: 99 }] } });
    assert.equal(refused.error?.name, 'OFFSET_OUT_OF_RANGE');
    await produce(c, 'seek2', 0, 'm10');
    const first = new Promise<Frame>((resolve) => (c.onFrame = (f) => void (f.push?.channel === 0 && resolve(f))));
    await c.request({ credit: { subscription: 1, messages: 100, bytes: 1 << 20 } });
    const push = (await first).push!;
    assert.deepEqual([Number(push.startOffset), push.epoch ?? 0], [0, 0], 'channel 0 from where it was, in epoch 0');
    await c.close();
  });

  it('a subscription ended by the broker (its topic deleted) stops counting against the 256 a connection may hold', async () => {
    const c = await RawClient.open(broker.url);
    await c.request({ createTopic: { topic: 'ends', channels: 1 } });
    for (let id = 1; id <= 256; id++) {
      const ok = await c.request({ subscribe: { topic: 'ends', group: 'g', start: 'earliest', subscription: id, creditMessages: 10, creditBytes: 1 << 20 } });
      assert.ok(ok.subscribeOk, ok.error?.message ?? undefined);
    }
    await c.request({ deleteTopic: { topic: 'ends' } });
    for (let i = 0; i < 256; i++) assert.equal((await c.nextUnsolicited()).error?.name, 'TOPIC_NOT_FOUND');
    await c.request({ createTopic: { topic: 'ends', channels: 1 } });
    // Refused before (TOO_MANY_REQUESTS): the ended ones stayed in the connection's table.
    const again = await c.request({ subscribe: { topic: 'ends', group: 'g', start: 'earliest', subscription: 257, creditMessages: 10, creditBytes: 1 << 20 } });
    assert.ok(again.subscribeOk, again.error?.message ?? undefined);
    await c.close();
  });

  it('subscribes sent together count against the limit while they look up their start (400 were all accepted)', async () => {
    const c = await RawClient.open(broker.url);
    await c.request({ createTopic: { topic: 'many', channels: 1 } });
    await produce(c, 'many', 0, 'm'); // a start time is then looked up in the channel's files
    const replies = await Promise.all(Array.from({ length: 400 }, (_, i) => c.request({ subscribe: { topic: 'many', group: 'g', startTimestamp: 1, subscription: i + 1, creditMessages: 10, creditBytes: 1 << 20 } })));
    assert.equal(replies.filter((r) => r.subscribeOk).length, 256);
    assert.deepEqual([...new Set(replies.filter((r) => r.error).map((r) => r.error!.name))], ['TOO_MANY_REQUESTS']);
    await c.close();
  });

  it('a connection closed while its subscribe looks up its start leaves no subscription behind (it watched the channels for good)', async () => {
    const admin = await RawClient.open(broker.url);
    await admin.request({ createTopic: { topic: 'gone', channels: 8 } });
    for (let ch = 0; ch < 8; ch++) await produce(admin, 'gone', ch, 'x');
    const before = await liveSubscriptions();
    for (let i = 0; i < 20; i++) {
      const c = await RawClient.open(broker.url);
      // A start time: the broker reads every channel's time index before it answers.
      void c.request({ subscribe: { topic: 'gone', group: 'g', startTimestamp: 1, subscription: 1, creditMessages: 10, creditBytes: 1 << 20 } });
      await c.close();
    }
    // The same lookup on a connection that stays: once answered, the ones before it have been.
    const ok = await admin.request({ subscribe: { topic: 'gone', group: 'g', startTimestamp: 1, subscription: 1, creditMessages: 10, creditBytes: 1 << 20 } });
    assert.ok(ok.subscribeOk);
    assert.equal(await liveSubscriptions(), before + 1, 'only the admin connection\'s');
    await admin.close();
  });
});

describe('broker: HTTP API', function () {
  this.timeout(60_000);
  const broker = new BrokerProcess(tempDir());
  before(async () => {
    await loadChecksum(); // channelForKey below
    await broker.start();
  });
  after(() => broker.stop());

  it('closes a connection whose request has an ambiguous body length (Content-Length twice): nothing of it runs (a second request hidden in the body did)', async () => {
    await httpJson(`${broker.http}/v1/topics/victim`, { method: 'PUT', body: '{}' });
    const hidden = 'DELETE /v1/topics/victim HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n';
    // The last: another header given twice first (its 400 must not stand in for the close).
    for (const [path, extra] of [['/v1/topics/smuggle', ''], ['/nowhere', ''], ['/v1/topics/smuggle', 'waymark-key: a\r\nwaymark-key: b\r\n']]) {
      const socket = net.connect(broker.port, '127.0.0.1');
      let answer = '';
      socket.on('data', (d: Buffer) => (answer += d.toString()));
      const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
      socket.write(`PUT ${path} HTTP/1.1\r\nHost: x\r\n${extra}Content-Length: 3\r\nContent-Length: ${3 + hidden.length}\r\n\r\n{} ${hidden}`);
      await closed; // by the broker
      assert.equal(answer, '', 'closed without an answer, to the hidden request either');
    }
    assert.equal((await httpJson(`${broker.http}/v1/topics/victim`)).status, 200, 'the topic the hidden request deleted is there');
    assert.equal((await httpJson(`${broker.http}/v1/topics/smuggle`)).status, 404, 'nor did the outer request run');
    const metrics = await (await fetch(`${broker.http}/metrics`)).text();
    assert.match(metrics, /waymark_http_requests_total\{method="PUT",route="\/v1\/topics\/:topic",status="400"\} 2/);
    assert.equal((await httpJson(`${broker.http}/v1/topics/victim`, { method: 'DELETE' })).status, 200); // the suite's other tests list the topics
  });

  it('creates a topic, posts messages, reads by offset, msgId and key', async () => {
    const created = await httpJson(`${broker.http}/v1/topics/web`, { method: 'PUT', body: JSON.stringify({ channels: 2 }) });
    assert.equal(created.status, 201);
    assert.equal(created.body.channels, 2);
    const posted = await httpJson(`${broker.http}/v1/topics/web/messages`, {
      method: 'POST',
      body: 'hello over http',
      headers: { 'waymark-key': 'cart-9', traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' },
    });
    assert.equal(posted.status, 200);
    assert.equal(posted.body.channel, channelForKey('cart-9', 2));
    assert.match(posted.body.msgId, /^[0-9a-f]{32}$/);
    const read = await httpJson(`${broker.http}/v1/topics/web/messages?channel=${posted.body.channel}&offset=${posted.body.offset}&max=5`);
    assert.equal(read.status, 200);
    assert.equal(read.body.messages[0].body, 'hello over http');
    assert.equal(read.body.messages[0].headers.traceid, '4bf92f3577b34da6a3ce929d0e0e4736');
    const byId = await httpJson(`${broker.http}/v1/messages/${posted.body.msgId}?topic=web`);
    assert.equal(byId.body.key, 'cart-9');
    const byIdAnyTopic = await httpJson(`${broker.http}/v1/messages/${posted.body.msgId}`);
    assert.equal(byIdAnyTopic.body.offset, posted.body.offset);
    const byKey = await httpJson(`${broker.http}/v1/topics/web/keys/cart-9`);
    assert.equal(byKey.body.messages.length, 1);
    const listed = await httpJson(`${broker.http}/v1/topics`);
    assert.deepEqual(listed.body.topics.map((t: { name: string }) => t.name), ['web']);
    const described = await httpJson(`${broker.http}/v1/topics/web`);
    assert.equal(described.body.channelStates.length, 2);
    const health = await httpJson(`${broker.http}/healthz`);
    assert.equal(health.body.status, 'ok');
    const metrics = await fetch(`${broker.http}/metrics`).then((r) => r.text());
    assert.match(metrics, /waymark_appended_messages_total\{topic="web",channel="\d"\} 1/);
    assert.match(metrics, /waymark_group_commit_seconds_count \d+/);
    const deleted = await httpJson(`${broker.http}/v1/topics/web`, { method: 'DELETE' });
    assert.equal(deleted.status, 200);
    assert.equal((await httpJson(`${broker.http}/v1/topics/web`)).status, 404);
  });

  it('a burst of concurrent POSTs to one channel: each its own offset, msgId, body and headers; a bad one in the burst fails alone', async () => {
    await httpJson(`${broker.http}/v1/topics/burst`, { method: 'PUT', body: JSON.stringify({ channels: 1 }) });
    const traceparent = (i: number): string => `00-${i.toString(16).padStart(32, '0')}-00f067aa0ba902b7-01`;
    const posts = Array.from({ length: 200 }, (_, i) =>
      httpJson(`${broker.http}/v1/topics/burst/messages${i % 5 === 0 ? `?key=k${i}` : ''}`, { method: 'POST', body: `b${i}`, headers: i % 3 === 0 ? { traceparent: traceparent(i) } : {} }),
    );
    const bad = Array.from({ length: 5 }, () => httpJson(`${broker.http}/v1/topics/burst/messages?key=${'x'.repeat(4097)}`, { method: 'POST', body: 'never stored' }));
    const [good, refused] = await Promise.all([Promise.all(posts), Promise.all(bad)]);
    assert.deepEqual(
      refused.map((r) => [r.status, r.body.error.code]),
      bad.map(() => [413, 'KEY_TOO_LARGE']),
    );
    assert.deepEqual(good.map((r) => r.status), posts.map(() => 200));
    assert.deepEqual(good.map((r) => r.body.offset).sort((a, b) => a - b), posts.map((_, i) => i), 'offsets 0..199, each once');
    assert.equal(new Set(good.map((r) => r.body.msgId)).size, 200);
    for (let i = 0; i < 200; i += 7) {
      const m = (await httpJson(`${broker.http}/v1/messages/${good[i]!.body.msgId}?topic=burst`)).body;
      assert.deepEqual([m.body, m.offset, m.key, m.headers.traceid ?? null], [`b${i}`, good[i]!.body.offset, i % 5 === 0 ? `k${i}` : null, i % 3 === 0 ? traceparent(i).slice(3, 35) : null], `message ${i}`);
    }
    assert.equal((await httpJson(`${broker.http}/v1/topics/burst`)).body.channelStates[0].highWatermark, 200, 'nothing of the refused ones');
  });

  it('counts HTTP requests in /metrics by method, route pattern and status; a path no route serves counts as route "other"', async () => {
    const series = async (): Promise<Map<string, number>> => {
      const text = await (await fetch(`${broker.http}/metrics`)).text();
      return new Map([...text.matchAll(/^waymark_http_requests_total\{(.*)\} (\d+)$/gm)].map((m) => [m[1]!, Number(m[2])]));
    };
    const before = await series();
    assert.equal((await fetch(`${broker.http}/v1/topics/no-such-topic`)).status, 404);
    assert.equal((await fetch(`${broker.http}/v1/topics/no-such-topic`, { method: 'DELETE' })).status, 404);
    assert.equal((await fetch(`${broker.http}/no/such/path/${Date.now()}`)).status, 404);
    assert.equal((await fetch(`${broker.http}/v1/topics`, { method: 'PATCH' })).status, 404);
    const after = await series();
    const grew = (labels: string): number => (after.get(labels) ?? 0) - (before.get(labels) ?? 0);
    assert.equal(grew('method="GET",route="/v1/topics/:topic",status="404"'), 1);
    assert.equal(grew('method="DELETE",route="/v1/topics/:topic",status="404"'), 1);
    assert.equal(grew('method="GET",route="other",status="404"'), 1, 'an unknown path is counted, under one bounded label');
    assert.equal(grew('method="PATCH",route="other",status="404"'), 1);
    assert.ok(![...after.keys()].some((k) => k.includes('/no/such/path')), 'raw paths never become label values');
  });

  it('answers bad input with the error table and changes nothing', async () => {
    await httpJson(`${broker.http}/v1/topics/strict`, { method: 'PUT', body: JSON.stringify({ channels: 1 }) });
    const cases: Array<[string, RequestInit, number, string]> = [
      ['/v1/topics/none/messages', { method: 'POST', body: 'x' }, 404, 'TOPIC_NOT_FOUND'],
      ['/v1/topics/strict', { method: 'PUT', body: '{"channels":1}' }, 409, 'TOPIC_EXISTS'],
      ['/v1/topics/bad%2Fname', { method: 'PUT', body: '{}' }, 400, 'INVALID_NAME'],
      ['/v1/topics/other', { method: 'PUT', body: 'not json' }, 400, 'BAD_REQUEST'],
      ['/v1/topics/other2', { method: 'PUT', body: '{"channels":100000}' }, 400, 'TOO_MANY_CHANNELS'],
      ['/v1/topics/other3', { method: 'PUT', body: '{"channels":"3"}' }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/other4', { method: 'PUT', body: '{"channels":2.5}' }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/other5', { method: 'PUT', body: '{"channels":0}' }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/strict/messages?max=0', { method: 'GET' }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/strict/messages?encoding=zzz', { method: 'GET' }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/strict/keys/k?limit=0', { method: 'GET' }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/strict/messages?offset=99', { method: 'GET' }, 416, 'OFFSET_OUT_OF_RANGE'],
      ['/v1/topics/strict/messages?offset=-1', { method: 'GET' }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/strict/messages?channel=5', { method: 'GET' }, 404, 'CHANNEL_NOT_FOUND'],
      ['/v1/topics/strict/messages', { method: 'POST', body: 'x', headers: { 'waymark-msg-id': 'zz' } }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/strict/messages', { method: 'POST', body: 'x', headers: { traceparent: 'garbage' } }, 400, 'INVALID_ARGUMENT'],
      ['/v1/topics/strict/messages', { method: 'POST', body: Buffer.alloc(8 * 1024 * 1024 + 1) }, 413, 'MESSAGE_TOO_LARGE'],
      ['/v1/messages/abc', { method: 'GET' }, 400, 'INVALID_ARGUMENT'],
      ['/v1/messages/0123456789abcdef0123456789abcdef?topic=strict', { method: 'GET' }, 404, 'MESSAGE_NOT_FOUND'],
      ['/v1/topics/__groups', { method: 'DELETE' }, 400, 'INVALID_NAME'],
      ['/v1/topics/%E0%A4%A', { method: 'GET' }, 400, 'BAD_REQUEST'],
      ['/v1/topics/strict/keys/%ZZ', { method: 'GET' }, 400, 'BAD_REQUEST'],
    ];
    for (const [url, init, status, code] of cases) {
      const r = await httpJson(`${broker.http}${url}`, init);
      assert.equal(r.status, status, `${init.method} ${url}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, code, `${init.method} ${url}`);
      assert.equal(typeof r.body.error.message, 'string');
    }
    const state = await httpJson(`${broker.http}/v1/topics/strict`);
    assert.equal(state.body.channelStates[0].highWatermark, 0, 'nothing was appended');
    for (const refused of ['other', 'other2', 'other3', 'other4', 'other5']) assert.equal((await httpJson(`${broker.http}/v1/topics/${refused}`)).status, 404, `${refused} was not created`);
  });
});

describe('broker: consumer groups across restarts', function () {
  this.timeout(120_000);

  it('a group resumes at its committed position after a broker restart: no loss, no duplicates', async () => {
    const broker = new BrokerProcess(tempDir());
    await broker.start();
    let client = await connect(broker.url);
    await client.admin.createTopic('resume', { channels: 2 });
    const producer = await client.producer({ topic: 'resume' });
    await Promise.all(Array.from({ length: 600 }, (_, i) => producer.send({ body: `r${i}`, key: `k${i}` })));
    let consumer = await client.consumer({ topic: 'resume', group: 'workers', start: 'committed', autoCommitIntervalMs: 0 });
    const firstPart = await take(consumer, 250);
    await consumer.commit();
    const committed = await client.admin.positions('resume', 'workers');
    const { channelStates } = await client.admin.describeTopic('resume');
    const expectedLag = committed.map((p) => `${p.channel}=${channelStates[p.channel]!.highWatermark - p.offset}`).sort();
    client.close();
    await broker.restart('SIGTERM');
    // Before any consumer of the group is back, /metrics shows its lag (read from __groups at start, in the background).
    let metrics = '';
    for (let polls = 0; polls < 1000 && !/^waymark_group_positions_loaded 1$/m.test(metrics); polls++) {
      metrics = await (await fetch(`${broker.http}/metrics`)).text(); // polling the start-up pass's gauge
    }
    const lag = [...metrics.matchAll(/^waymark_consumer_lag_messages\{topic="resume",group="workers",channel="(\d)"\} (\d+)$/gm)].map((m) => `${m[1]}=${m[2]}`).sort();
    assert.ok(expectedLag.length > 0);
    assert.deepEqual(lag, expectedLag, `a lag row per committed channel after the restart:\n${metrics}`);
    client = await connect(broker.url);
    consumer = await client.consumer({ topic: 'resume', group: 'workers', autoCommitIntervalMs: 0 });
    const rest = await take(consumer, 350);
    const all = [...firstPart, ...rest].map(text);
    assert.equal(new Set(all).size, 600, 'every message exactly once across the restart');
    await consumer.commit();
    const positions = await client.admin.positions('resume', 'workers');
    assert.equal(positions.reduce((n, p) => n + p.offset, 0), 600);
    client.close();
    await broker.stop();
  });

  it('a deleted and re-created topic starts with no group positions: none carried over, none in /metrics, before or after a restart', async () => {
    const broker = new BrokerProcess(tempDir());
    await broker.start();
    let client = await connect(broker.url);
    await client.admin.createTopic('again', { channels: 4 });
    const producer = await client.producer({ topic: 'again' });
    await producer.sendBatch(Array.from({ length: 8 }, (_, i) => ({ body: `a${i}`, channel: i % 4 })));
    const consumer = await client.consumer({ topic: 'again', group: 'old', start: 'earliest', autoCommitIntervalMs: 0 });
    await take(consumer, 8);
    await consumer.commit();
    await consumer.close();
    assert.equal((await client.admin.positions('again', 'old')).length, 4);
    await client.admin.deleteTopic('again');
    await client.admin.createTopic('again', { channels: 2 });
    const check = async (): Promise<void> => {
      assert.deepEqual(await client.admin.positions('again', 'old'), [], 'the new topic has no positions of the old one');
      let metrics = '';
      for (let polls = 0; polls < 1000 && !/^waymark_group_positions_loaded 1$/m.test(metrics); polls++) {
        const res = await fetch(`${broker.http}/metrics`); // polling the start-up pass's gauge
        assert.equal(res.status, 200);
        metrics = await res.text();
      }
      assert.doesNotMatch(metrics, /waymark_consumer_lag_messages\{topic="again"/);
    };
    await check();
    client.close();
    await broker.restart('SIGTERM');
    client = await connect(broker.url);
    await check();
    client.close();
    await broker.stop();
  });

  it('a producer resends what was unacknowledged when the broker died: after the reconnect every send resolves and no message is stored twice', async () => {
    const broker = new BrokerProcess(tempDir());
    await broker.start();
    const client = await connect(broker.url, { reconnectDelayMs: 20 });
    await client.admin.createTopic('resend', { channels: 1 });
    const producer = await client.producer({ topic: 'resend', batchMessagesMax: 50 });
    const count = 4000;
    const window = 600;
    let acked = 0;
    let killAt!: () => void;
    const enoughAcked = new Promise<void>((resolve) => (killAt = resolve));
    const results: Array<Promise<SendResult>> = [];
    let issued = 0;
    // Keeps `window` sends outstanding; the broker is killed once 1,000 are acknowledged.
    const pump = async (): Promise<void> => {
      while (issued < count) {
        while (issued < count && issued - acked < window) {
          const sent = producer.send({ body: `m${issued}` });
          sent.then(() => {
            if (++acked === 1000) killAt();
          }, () => undefined);
          results.push(sent);
          issued++;
        }
        await Promise.race([results[acked]!, new Promise((resolve) => setImmediate(resolve))]);
      }
    };
    const pumping = pump();
    await enoughAcked;
    const back = new Promise<void>((resolve) => client.on('reconnect', () => resolve()));
    await broker.stop('SIGKILL');
    const unacknowledgedAtKill = issued - acked;
    await broker.start();
    await back;
    await pumping;
    const all = await Promise.all(results);
    assert.ok(unacknowledgedAtKill > 0, 'sends were in flight when the broker died');
    assert.equal(all.length, count);
    const offsets = all.map((r) => r.offset);
    assert.equal(new Set(offsets).size, count, 'every send has its own offset');
    const consumer = await client.consumer({ topic: 'resend', group: 'check', start: 'earliest', autoCommitIntervalMs: 0 });
    const stored = await take(consumer, count);
    assert.deepEqual(stored.map(text), Array.from({ length: count }, (_, i) => `m${i}`), 'each message once, in send order');
    const described = await client.admin.describeTopic('resend');
    assert.equal(described.channelStates[0]!.highWatermark, count, 'nothing appended twice');
    await consumer.close();
    client.close();
    await broker.stop();
  });

  it('an SDK consumer and producer ride through a broker restart (reconnect with backoff, resume from where they were)', async () => {
    const broker = new BrokerProcess(tempDir());
    await broker.start();
    const client = await connect(broker.url, { reconnectDelayMs: 20 });
    await client.admin.createTopic('ride', { channels: 1 });
    const producer = await client.producer({ topic: 'ride' });
    await Promise.all(Array.from({ length: 100 }, (_, i) => producer.send({ body: `before ${i}` })));
    const consumer = await client.consumer({ topic: 'ride', group: 'g', start: 'earliest', autoCommitIntervalMs: 0 });
    const before = await take(consumer, 100);
    let reconnected = false;
    const back = new Promise<void>((resolve) => client.on('reconnect', () => resolve()));
    await broker.restart('SIGKILL');
    await back;
    reconnected = true;
    await Promise.all(Array.from({ length: 100 }, (_, i) => producer.send({ body: `after ${i}` })));
    const after = await take(consumer, 100);
    assert.ok(reconnected);
    assert.deepEqual(before.map(text), Array.from({ length: 100 }, (_, i) => `before ${i}`));
    assert.deepEqual(after.map(text), Array.from({ length: 100 }, (_, i) => `after ${i}`), 'no message skipped or repeated across the reconnect');
    await consumer.close();
    client.close();
    await broker.stop();
  });
});

describe('broker: the waymark CLI against a real broker', function () {
  this.timeout(120_000);
  const broker = new BrokerProcess(tempDir());
  const cli = path.join(__dirname, '..', '..', 'bin', 'waymark.js');
  /** Runs the CLI with `--url` appended (`urlLast` false: the caller places it). */
  const run = (args: string[], input?: string, urlLast = true): Promise<{ status: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const proc = spawn(process.execPath, [cli, ...args, ...(urlLast ? ['--url', broker.url] : [])], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      proc.stdout.on('data', (d: Buffer) => (stdout += d));
      proc.stderr.on('data', (d: Buffer) => (stderr += d));
      proc.stdin.end(input ?? '');
      proc.on('close', (status) => resolve({ status, stdout, stderr }));
    });
  before(async () => {
    await loadChecksum();
    await broker.start();
  });
  after(() => broker.stop());

  it('topics, produce (argument and stdin lines) and consume round-trip', async () => {
    const created = await run(['topics', 'create', 'cli', '--channels', '2', '--owner', 'ops']);
    assert.equal(created.status, 0, created.stderr);
    assert.match(created.stdout, /created cli\s+channels=2/);
    const one = await run(['produce', '--topic', 'cli', '--key', 'k1', '--count', '3', '--json', 'hello']);
    assert.equal(one.status, 0, one.stderr);
    const acks = one.stdout.trim().split('\n').map((l) => JSON.parse(l) as { channel: number; offset: number; msgId: string });
    assert.equal(acks.length, 3);
    assert.ok(acks.every((a) => a.channel === channelForKey('k1', 2)));
    const lines = await run(['produce', '--topic', 'cli', '--channel', '1'], 'line one\nline two\n');
    assert.equal(lines.status, 0, lines.stderr);
    assert.equal(lines.stdout.trim().split('\n').length, 2);
    const consumed = await run(['consume', '--topic', 'cli', '--group', 'cli-g', '--from', 'earliest', '--max', '5', '--json']);
    assert.equal(consumed.status, 0, consumed.stderr);
    const messages = consumed.stdout.trim().split('\n').map((l) => JSON.parse(l) as { body: string; key: string | null });
    assert.deepEqual(messages.map((m) => m.body).sort(), ['hello', 'hello', 'hello', 'line one', 'line two']);
    // The group committed at exit: the next run starts after those five.
    await run(['produce', '--topic', 'cli', 'sixth']);
    const next = await run(['consume', '--topic', 'cli', '--group', 'cli-g', '--max', '1']);
    assert.match(next.stdout, / - sixth\n$/);
    // --from OFFSET on uneven channels: where the offset is past a channel's end, that channel starts at its end (said on stderr).
    const fromThree = await run(['consume', '--topic', 'cli', '--group', 'cli-from', '--from', '3', '--max', '1', '--json']);
    assert.equal(fromThree.status, 0, fromThree.stderr);
    assert.equal((JSON.parse(fromThree.stdout) as { offset: number }).offset, 3);
    assert.match(fromThree.stderr, /^channel \d: offset 3 is past its end \(next offset 2\); starting at 2\n$/);
    const described = await run(['topics', 'describe', 'cli']);
    assert.match(described.stdout, /channel 1: \d+ messages?, offsets 0\.\.\d+ \(next \d+\)/);
    const listed = await run(['topics', 'list']);
    assert.match(listed.stdout, /^cli\s+channels=2/m);
    const listedJson = JSON.parse((await run(['topics', 'list', '--json'])).stdout) as Array<Record<string, unknown>>;
    const cli = listedJson.find((t) => t.name === 'cli')!;
    assert.equal(cli.channels, 2);
    assert.equal('channelStates' in cli, false, 'a list carries no channel states (it said [] for every topic)');
    const urlFirst = await run(['topics', '--url', broker.url, 'describe', 'cli', '--json'], undefined, false);
    assert.equal(urlFirst.status, 0, urlFirst.stderr);
    assert.equal((JSON.parse(urlFirst.stdout) as { channels: number }).channels, 2, 'options may come before the action');
    assert.equal((await run(['topics', 'delete', 'cli'])).status, 0);
    const gone = await run(['topics', 'describe', 'cli']);
    assert.equal(gone.status, 1);
    assert.equal(gone.stderr, 'waymark: topics: topic "cli" does not exist\n');
  });

  it('npm start: a SIGTERM to npm (as a supervisor sends it) stops the broker gracefully, none left running', async () => {
    // The script runs through `sh -c`; without `exec` npm signalled the shell, which died and
    // left the broker running, holding the port and the data folder's lock.
    const data = tempDir();
    const root = path.resolve(__dirname, '..', '..');
    const npm = spawn('npm', ['start', '--silent', '--', '--port', '0', '--data', data], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    const url = await new Promise<string>((resolve, reject) => {
      npm.stderr!.on('data', (d: Buffer) => {
        stderr += d;
        const m = /serving (ws:\/\/\S+)/.exec(stderr);
        if (m) resolve(m[1]!);
      });
      npm.on('exit', (code) => reject(new Error(`npm start exited ${code}: ${stderr}`)));
    });
    // 'close', not 'exit': what the broker wrote to the pipe is read by then (and the broker, which holds it too, is gone).
    const exited = new Promise<number | null>((resolve) => npm.on('close', (code) => resolve(code)));
    npm.kill('SIGTERM');
    await exited;
    assert.match(stderr, /SIGTERM: shutting down\n(.*\n)*waymark: stopped: the store in .* is closed cleanly\n/);
    // Nobody answers on the port any more.
    const port = Number(new URL(url).port);
    const refused = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => (socket.destroy(), resolve(false)));
      socket.once('error', () => resolve(true));
    });
    assert.equal(refused, true, `a broker still listens on ${port}`);
  });

  it('waymark serve (what npm start runs): port and data from the environment, a flag for sync; SIGINT shuts it down with exit 0 and keeps what was acknowledged', async () => {
    const data = tempDir();
    const serve = (sync: string): { proc: ReturnType<typeof spawn>; url: Promise<string>; stderr: () => string } => {
      const proc = spawn(process.execPath, [cli, 'serve', '--sync', sync], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, WAYMARK_PORT: '0', WAYMARK_DATA: data } });
      let stderr = '';
      const url = new Promise<string>((resolve, reject) => {
        proc.stderr!.on('data', (d: Buffer) => {
          stderr += d;
          const m = /serving (ws:\/\/\S+)/.exec(stderr);
          if (m) resolve(m[1]!);
        });
        proc.on('exit', (code) => reject(new Error(`serve exited ${code}: ${stderr}`)));
      });
      return { proc, url, stderr: () => stderr };
    };
    const first = serve('none');
    const url = await first.url;
    assert.match(first.stderr(), new RegExp(`data ${data.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, sync none`));
    // A second broker on the same port fails at once, and leaves no data folder of its own behind.
    const otherData = path.join(tempDir(), 'never-made');
    const taken = spawn(process.execPath, [cli, 'serve', '--port', new URL(url).port, '--data', otherData], { stdio: ['ignore', 'ignore', 'pipe'] });
    let takenErr = '';
    taken.stderr!.on('data', (d: Buffer) => (takenErr += d));
    assert.equal(await new Promise((resolve) => taken.on('exit', resolve)), 1, takenErr); // a failure of the moment, not a bad argument (helper-49)
    assert.match(takenErr, /^waymark: serve: cannot listen on 127\.0\.0\.1:\d+: the port is in use \(another broker or program holds it\)\n$/);
    assert.equal(fs.existsSync(otherData), false, 'no data folder made by a broker that did not start');
    const client = await connect(url);
    await client.admin.createTopic('served', { channels: 1 });
    const producer = await client.producer({ topic: 'served' });
    await producer.sendBatch([{ body: 'a' }, { body: 'b' }]);
    client.close();
    const exited = new Promise<number | null>((resolve) => first.proc.on('close', (code) => resolve(code))); // its stderr read to the end
    first.proc.kill('SIGINT');
    assert.equal(await exited, 0);
    assert.match(first.stderr(), /SIGINT: shutting down\n(.*\n)*waymark: stopped: the store in .* is closed cleanly\n$/);

    const second = serve('batch');
    const again = await connect(await second.url);
    const consumer = await again.consumer({ topic: 'served', group: 'g', start: 'earliest', autoCommitIntervalMs: 0 });
    assert.deepEqual((await take(consumer, 2)).map(text), ['a', 'b'], 'sync none, then a graceful stop: nothing acknowledged is lost');
    again.close();
    // A client that keeps one keep-alive HTTP connection busy must not keep a stopping broker up
    // (it used to be served for good, /healthz saying ok): replies close the connection, /healthz says 503.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const base = (await second.url).replace(/^ws/, 'http').replace(/\/v1\/ws$/, '');
    const healthz = (): Promise<number> =>
      new Promise((resolve) => {
        const req = http.get(`${base}/healthz`, { agent }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', () => resolve(-1)); // the connection was closed, or nobody listens any more
      });
    assert.equal(await healthz(), 200);
    let running = true;
    const statuses: number[] = [];
    const poller = (async () => {
      while (running) statuses.push(await healthz());
    })();
    const stopped = new Promise<number | null>((resolve) => second.proc.on('exit', (code) => resolve(code)));
    second.proc.kill('SIGTERM');
    assert.equal(await stopped, 0, 'exited while a keep-alive client kept asking');
    running = false;
    await poller;
    agent.destroy();
    assert.ok(statuses.every((s) => s === 200 || s === 503 || s === -1), statuses.join(','));
  });

  it('bad arguments exit 2 with one line; an unreachable broker exits 1 with one line', async () => {
    for (const args of [['produce', 'x'], ['consume', '--topic', 't'], ['topics', 'fly'], ['produce', '--topic', 't', '--count', 'many', 'x'], ['consume', '--topic', 't', '--group', 'g', '--from', 'yesterday'], ['topics', 'create', 'huge', '--channels', '100000'], ['topics', 'create', 'bad/name']]) {
      const r = await run(args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /^waymark: /);
    }
    const down = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const proc = spawn(process.execPath, [cli, 'produce', '--topic', 't', 'x', '--url', 'ws://127.0.0.1:1/v1/ws']);
      let stderr = '';
      proc.stderr.on('data', (d: Buffer) => (stderr += d));
      proc.on('close', (status) => resolve({ status, stderr }));
    });
    assert.equal(down.status, 1);
    assert.match(down.stderr, /^waymark: produce: cannot connect to ws:\/\/127\.0\.0\.1:1\/v1\/ws/);
  });
});
