/**
 * The SDK's lifecycle as an application uses it, from a black-box review: messages of the
 * wrong type, closing a client under waiting consumers, what a consumer commits when the
 * application's processing fails, leaving a msgStream's loop, options out of range.
 */
import { strict as assert } from 'node:assert';
import { connect } from '../sdk/index';
import { brokerForSuite, take, text } from './broker-helpers';
import { rejection, removeTempDirs } from './helpers';

after(removeTempDirs);

describe('sdk lifecycle: messages of the wrong type', function () {
  this.timeout(30_000);
  const { client } = brokerForSuite();

  it('are refused with INVALID_ARGUMENT at send(), and the producer goes on (one wedged every later send)', async () => {
    await client().admin.createTopic('types', { channels: 1 });
    const producer = await client().producer({ topic: 'types' });
    const bad: unknown[] = [
      { body: 'x', headers: { retries: 3 } },
      { body: 'x', key: 42 },
      { body: { total: 42 } },
      { body: null },
      { body: 'x', headers: [1, 2] },
      { body: 'x', msgId: 7 },
      null,
    ];
    for (const message of bad) {
      const err = await rejection(producer.send(message as never));
      assert.equal(err.code, 'INVALID_ARGUMENT', `${JSON.stringify(message)}: ${err.message}`);
      const inArray = await rejection(producer.sendBatch([{ body: 'fine' }, message as never]));
      assert.equal(inArray.code, 'INVALID_ARGUMENT', `${JSON.stringify(message)} in sendBatch: ${inArray.message}`);
      assert.match(inArray.message, /^message 1: /);
    }
    // Not a whole number: INVALID_ARGUMENT, as HTTP says of waymark-channel: -1 (CHANNEL_NOT_FOUND
    // "has channels 0..1, not 1" for the string "1" contradicted itself: helper-50).
    for (const channel of ['0', 0.5, -1]) assert.equal((await rejection(producer.send({ body: 'x', channel } as never))).code, 'INVALID_ARGUMENT', `channel ${JSON.stringify(channel)}`);
    const good = await producer.send({ body: 'good', key: 'k', headers: { a: 'b', c: new Uint8Array([1]) } });
    assert.equal(good.offset, 0, 'nothing of the refused messages was stored; the producer is not wedged');
    await producer.close();
  });
});

describe('sdk lifecycle: client.close() under waiting consumers', function () {
  this.timeout(30_000);
  const { broker, client } = brokerForSuite();

  it('ends a for-await loop, resolves run(), and ends a msgStream loop (each waited for ever)', async () => {
    await client().admin.createTopic('closing', { channels: 2 });
    const other = await connect(broker.url);
    const consumer = await other.consumer({ topic: 'closing', group: 'g1', start: 'earliest' });
    const looped = (async () => {
      for await (const m of consumer) void m;
      return 'ended';
    })();
    const runner = await other.consumer({ topic: 'closing', group: 'g2', start: 'earliest' });
    const ran = runner.run(() => undefined).then(() => 'resolved');
    const stream = other.msgStream();
    await stream.asConsumer('closing', 'g3', { start: 'earliest' });
    const streamed = (async () => {
      for await (const pack of stream) void pack;
      return 'ended';
    })();
    other.close();
    assert.deepEqual(await Promise.all([looped, ran, streamed]), ['ended', 'resolved', 'ended']);
  });
});

describe('sdk lifecycle: what a consumer commits when processing fails', function () {
  this.timeout(30_000);
  const { client } = brokerForSuite();
  const committed = async (group: string): Promise<number[]> => (await client().admin.positions('fails', group)).map((p) => p.offset);

  before(async () => {
    await client().admin.createTopic('fails', { channels: 1 });
    const producer = await client().producer({ topic: 'fails' });
    await producer.sendBatch(Array.from({ length: 10 }, (_, i) => ({ body: `m${i}` })));
    await producer.close();
  });

  it('a throw out of a for-await loop leaves the message in hand uncommitted (offset 6 was committed)', async () => {
    const consumer = await client().consumer({ topic: 'fails', group: 'loop', start: 'earliest' });
    const err = await rejection(
      (async () => {
        for await (const m of consumer) if (m.offset === 5) throw new Error('processing failed');
      })(),
    );
    assert.equal(err.message, 'processing failed');
    assert.deepEqual(await committed('loop'), [5], 'resumes at the failed message');
    const again = await client().consumer({ topic: 'fails', group: 'loop' });
    assert.equal((await take(again, 1))[0]!.offset, 5);
    await again.close();
  });

  it('a failing run() handler leaves its message uncommitted (close() commits what the timer would)', async () => {
    const consumer = await client().consumer({ topic: 'fails', group: 'run', start: 'earliest' });
    const err = await rejection(
      consumer.run((m) => {
        if (m.offset === 5) throw new Error('handler failed');
      }),
    );
    assert.equal(err.message, 'handler failed');
    await consumer.close(); // commits as the timer does
    assert.deepEqual(await committed('run'), [5]);
  });

  it('an explicit commit() counts every message handed out as done, as Kafka\'s commitSync() does', async () => {
    const consumer = await client().consumer({ topic: 'fails', group: 'explicit', start: 'earliest', autoCommitIntervalMs: 0 });
    await take(consumer, 3);
    await consumer.commit();
    assert.deepEqual(await committed('explicit'), [3]);
    await consumer.close();
  });

  it('close() rejects when its last commit fails (it resolved as if committed)', async () => {
    await client().admin.createTopic('gone-soon', { channels: 1 });
    const producer = await client().producer({ topic: 'gone-soon' });
    await producer.sendBatch([{ body: 'a' }, { body: 'b' }]);
    const consumer = await client().consumer({ topic: 'gone-soon', group: 'g', start: 'earliest' });
    await take(consumer, 2); // the first is done
    await client().admin.deleteTopic('gone-soon');
    assert.equal((await rejection(consumer.close())).code, 'TOPIC_NOT_FOUND');
  });

  it('a seek of another channel leaves the message in hand uncommitted (it was counted done)', async () => {
    await client().admin.createTopic('two', { channels: 2 });
    const producer = await client().producer({ topic: 'two' });
    await producer.sendBatch(Array.from({ length: 10 }, (_, i) => ({ body: `c${i % 2}-${Math.floor(i / 2)}`, channel: i % 2 })));
    const consumer = await client().consumer({ topic: 'two', group: 'g', channels: [1], start: 'earliest', autoCommitIntervalMs: 0 });
    const held = (await take(consumer, 1))[0]!;
    assert.equal(held.channel, 1);
    await consumer.seek({ offsets: { 1: 3 } }); // the held message's channel, moved on: still in hand until next()
    assert.deepEqual(consumer.positions(), [{ channel: 1, offset: held.offset }]);
    await consumer.close();
    const both = await client().consumer({ topic: 'two', group: 'h', start: 'earliest', autoCommitIntervalMs: 0 });
    const first = (await take(both, 1))[0]!;
    await both.seek({ offsets: { [1 - first.channel]: 0 } });
    const mine = both.positions().find((p) => p.channel === first.channel)!;
    assert.equal(mine.offset, first.offset, 'the other channel\'s seek did not count it done');
    await both.close();
  });

  it('a seek of one channel keeps the other channels\' buffered messages (they were lost)', async () => {
    const consumer = await client().consumer({ topic: 'two', group: 'keep', start: 'earliest', autoCommitIntervalMs: 0 });
    const first = (await take(consumer, 1))[0]!;
    const other = 1 - first.channel;
    await consumer.seek({ offsets: { [other]: 0 } });
    const rest = await take(consumer, 9); // 4 more of first's channel, 5 of the other from its start
    const byChannel = (c: number): string[] => [first, ...rest].filter((m) => m.channel === c).map(text);
    assert.deepEqual(byChannel(first.channel), [0, 1, 2, 3, 4].map((i) => `c${first.channel}-${i}`));
    assert.deepEqual(byChannel(other), [0, 1, 2, 3, 4].map((i) => `c${other}-${i}`));
    await consumer.close();
  });

  it('break keeps the message in hand uncommitted too, unless the application commits it', async () => {
    const consumer = await client().consumer({ topic: 'fails', group: 'brk', start: 'earliest' });
    for await (const m of consumer) if (m.offset === 3) break;
    assert.deepEqual(await committed('brk'), [3]);
    const second = await client().consumer({ topic: 'fails', group: 'brk' });
    for await (const m of second) {
      if (m.offset === 4) {
        await second.commit(m);
        break;
      }
    }
    assert.deepEqual(await committed('brk'), [5], 'committed explicitly, then left');
    assert.deepEqual((await take(await client().consumer({ topic: 'fails', group: 'brk' }), 1)).map(text), ['m5']);
  });
});

// helper-34: close() set `closed` only after its commit came back, and run() went on handing
// the queued messages to the handler meanwhile (up to a thousand side effects after a stop).
describe('sdk lifecycle: run() after close()', function () {
  this.timeout(60_000);
  const { client: opened } = brokerForSuite();

  it('a handler that calls close() is given no other message; what it was not given comes again to the group', async () => {
    const client = opened();
    await client.admin.createTopic('run-close', { channels: 1 });
    const producer = await client.producer({ topic: 'run-close' });
    await producer.sendBatch(Array.from({ length: 2000 }, (_, i) => ({ body: `m${i}` })));
    const consumer = await client.consumer({ topic: 'run-close', group: 'g', start: 'earliest' });
    let calls = 0;
    let closing: Promise<void> | null = null;
    await consumer.run(() => {
      calls++;
      closing ??= consumer.close();
    });
    await closing;
    assert.equal(calls, 1, 'one message handled, then none (the rest of its batch was queued behind it)');
    const again = await client.consumer({ topic: 'run-close', group: 'g' });
    assert.equal(text((await take(again, 1))[0]!), 'm0', 'the message in hand when close() was called was not committed: it comes again');
    await again.close();
    await producer.close();
  });
});

describe('sdk lifecycle: messages a batch at a time (nextBatch, batches)', function () {
  this.timeout(30_000);
  const { client } = brokerForSuite();
  const committed = async (group: string): Promise<number[]> => (await client().admin.positions('batched', group)).map((p) => p.offset);

  before(async () => {
    await client().admin.createTopic('batched', { channels: 1 });
    const producer = await client().producer({ topic: 'batched' });
    await producer.sendBatch(Array.from({ length: 25 }, (_, i) => ({ body: `m${i}` })));
    await producer.close();
  });

  it('hands out what was received, in order, at most maxMessages at a time; the batch is in hand until the next call', async () => {
    const consumer = await client().consumer({ topic: 'batched', group: 'explicit', start: 'earliest', autoCommitIntervalMs: 0 });
    assert.equal((await rejection(consumer.nextBatch(0))).code, 'INVALID_ARGUMENT');
    const seen: string[] = [];
    let last: Awaited<ReturnType<typeof consumer.nextBatch>> = [];
    while (seen.length < 25) {
      last = await consumer.nextBatch(10);
      assert.ok(last.length >= 1 && last.length <= 10, `a batch of ${last.length}`);
      for (const m of last) {
        assert.ok(Buffer.isBuffer(m.body), 'bodies are Buffers in Node');
        assert.equal(m.msgId.length, 32);
        seen.push(text(m));
      }
      // Every message of the batch in hand: the timer and close() would commit its first.
      assert.deepEqual(consumer.positions(), [{ channel: 0, offset: last[0]!.offset }]);
    }
    assert.deepEqual(seen, Array.from({ length: 25 }, (_, i) => `m${i}`));
    // One stored batch of 25, taken 10, 10, 5. commit(message) of one of the last five: it
    // and those before it are done, the rest still in hand.
    assert.equal(last.length, 5);
    await consumer.commit(last[1]!);
    assert.deepEqual(await committed('explicit'), [last[1]!.offset + 1]);
    assert.deepEqual(consumer.positions(), [{ channel: 0, offset: last[2]!.offset }], 'not back to the batch\'s first');
    await consumer.commit(); // everything handed out is done
    assert.deepEqual(await committed('explicit'), [25]);
    await consumer.close();
  });

  it('commit(m) of a message from before a seek back does not count the batch in hand as done', async () => {
    const consumer = await client().consumer({ topic: 'batched', group: 'old', start: 'earliest', autoCommitIntervalMs: 0 });
    const first = await consumer.nextBatch(10);
    assert.deepEqual(first.map((m) => m.offset), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    await consumer.seek({ offsets: { 0: 0 } });
    const again = await consumer.nextBatch(5);
    assert.deepEqual(again.map((m) => m.offset), [0, 1, 2, 3, 4]);
    await consumer.commit(first[9]!); // a late commit of the first pass: the group moves to 10, as asked
    assert.deepEqual(await committed('old'), [10]);
    assert.deepEqual(consumer.positions(), [{ channel: 0, offset: 0 }], 'offsets 0-4 of this pass are still in hand');
    await consumer.close();
  });

  it('batches() ends its loop at close; break closes the consumer, committing up to the batch in hand', async () => {
    const consumer = await client().consumer({ topic: 'batched', group: 'iter', start: 'earliest' });
    let held: number | null = null;
    let count = 0;
    for await (const batch of consumer.batches(4)) {
      assert.ok(batch.length >= 1 && batch.length <= 4);
      assert.deepEqual(batch.map((m) => m.offset), batch.map((_, i) => count + i), 'in order, none skipped');
      count += batch.length;
      if (count >= 12) {
        held = batch[0]!.offset;
        break;
      }
    }
    assert.notEqual(held, null);
    assert.deepEqual(await committed('iter'), [held], 'the batch in hand comes again');
    const again = await client().consumer({ topic: 'batched', group: 'iter' });
    assert.equal((await again.nextBatch(1))[0]!.offset, held);
    const looped = (async () => {
      let n = 0;
      for await (const batch of again.batches()) n += batch.length;
      return n;
    })();
    await again.close();
    assert.equal(typeof (await looped), 'number', 'the loop ended (done) at close');
  });
});

describe('sdk lifecycle: a msgStream loop that is left', function () {
  this.timeout(60_000);
  const { client } = brokerForSuite();

  it('unsubscribes: 300 open-and-leave cycles on one connection (the 257th failed with TOO_MANY_REQUESTS)', async () => {
    await client().admin.createTopic('leave', { channels: 1 });
    const producer = await client().producer({ topic: 'leave' });
    await producer.send({ body: 'one' });
    for (let i = 0; i < 300; i++) {
      const stream = client().msgStream();
      await stream.asConsumer('leave', `g${i}`, { start: 'earliest' });
      for await (const pack of stream) if (pack.msgs.length > 0) break;
      assert.equal((await stream.next()).done, true, 'a left loop stays ended');
    }
  });

  it('a seek after the loop was left is CLIENT_CLOSED saying what to do (it was SUBSCRIPTION_NOT_FOUND naming an internal id)', async () => {
    await client().admin.createTopic('leave-seek', { channels: 1 });
    await (await client().producer({ topic: 'leave-seek' })).send({ body: 'one' });
    const stream = client().msgStream();
    await stream.asConsumer('leave-seek', 'g', { start: 'earliest' });
    for await (const pack of stream) if (pack.msgs.length > 0) break;
    const err = await stream.seek({ timestamp: 0 }).then(() => null, (e: Error & { code?: string }) => e);
    assert.equal(err?.code, 'CLIENT_CLOSED');
    assert.equal(err?.message, "this msgStream's consumer is closed: consume with a new msgStream");
  });

  it('a second asConsumer on one stream is refused (its first subscription stayed open for good); a failed one may be retried', async () => {
    const stream = client().msgStream();
    assert.equal((await rejection(stream.asConsumer('no-such-topic', 'g'))).code, 'TOPIC_NOT_FOUND');
    await stream.asConsumer('leave', 'again', { start: 'earliest' });
    const err = await rejection(stream.asConsumer('leave', 'again2'));
    assert.equal(err.code, 'INVALID_ARGUMENT');
    assert.match(err.message, /consumes leave as again already/);
    await stream.close();
  });
});

describe('sdk lifecycle: consumer options out of range', function () {
  this.timeout(30_000);
  const { client } = brokerForSuite();

  it('are INVALID_ARGUMENT before anything is sent (a window of 0 received nothing, for ever; a negative offset went out wrapped)', async () => {
    await client().admin.createTopic('opts', { channels: 1 });
    const bad: object[] = [
      { prefetchMessages: 0 },
      { prefetchBytes: 0 },
      { prefetchMessages: -5 },
      { fallback: 'bogus' },
      { start: { timestamp: -5 } },
      { start: { offsets: { 0: -1 } } },
      { start: 'newest' },
      { autoCommitIntervalMs: -1 },
    ];
    for (const options of bad) {
      const err = await rejection(client().consumer({ topic: 'opts', group: 'g', ...options }));
      assert.equal(err.code, 'INVALID_ARGUMENT', `${JSON.stringify(options)}: ${err.message}`);
      const stream = client().msgStream();
      if (!('fallback' in options) && !('autoCommitIntervalMs' in options)) {
        const translated = 'start' in options && typeof options.start === 'object' && 'offsets' in (options.start as object) ? { start: { positions: [{ channel: 0, offset: -1 }] } } : options;
        assert.equal((await rejection(stream.asConsumer('opts', 'g', translated as never))).code, 'INVALID_ARGUMENT', `msgStream ${JSON.stringify(translated)}`);
      }
    }
    const consumer = await client().consumer({ topic: 'opts', group: 'g', start: 'earliest' });
    const seekErr = await rejection(consumer.seek({ offsets: { 0: -1 } }));
    assert.equal(seekErr.code, 'INVALID_ARGUMENT');
    assert.doesNotMatch(seekErr.message, /18446744073709552000/);
    await consumer.close();
    const stream = client().msgStream();
    await stream.asConsumer('opts', 'g2', { start: 'earliest' });
    assert.equal((await rejection(stream.seek({ positions: [{ channel: 0, offset: -1 }] }))).code, 'INVALID_ARGUMENT');
    await stream.close();
  });
});

describe('sdk lifecycle: small things a review found', function () {
  this.timeout(30_000);
  const { client } = brokerForSuite();

  it('a send made in the same turn as producer.close() is refused (it was accepted, and stored after close resolved)', async () => {
    await client().admin.createTopic('late', { channels: 1 });
    const producer = await client().producer({ topic: 'late' });
    await producer.send({ body: 'before' });
    const closing = producer.close();
    const err = await rejection(producer.send({ body: 'late' }));
    assert.equal(err.code, 'CLIENT_CLOSED');
    await closing;
    assert.equal((await client().admin.describeTopic('late')).channelStates[0]!.highWatermark, 1, 'only the send before close() stored');
  });

  it('run() with a synchronous handler lets timers in while it works through a window (they waited for all of it)', async () => {
    await client().admin.createTopic('sync-run', { channels: 1 });
    const producer = await client().producer({ topic: 'sync-run' });
    await producer.sendBatch(Array.from({ length: 5000 }, (_, i) => ({ body: `m${i}` }))); // one batch: one push
    await producer.close();
    const consumer = await client().consumer({ topic: 'sync-run', group: 'g', start: 'earliest' });
    let handled = 0;
    let handledWhenTimerRan = -1;
    await new Promise<void>((resolve, reject) => {
      consumer
        .run(() => {
          if (++handled === 1) setImmediate(() => (handledWhenTimerRan = handled));
          if (handled === 5000) resolve();
        })
        .catch(reject);
    });
    assert.ok(handledWhenTimerRan >= 1 && handledWhenTimerRan < 5000, `a timer set at the first message ran after ${handledWhenTimerRan} of 5,000`);
    await consumer.close();
  });
});

describe('sdk lifecycle: seeks while a push is only partly decoded', function () {
  this.timeout(30_000);
  const { client } = brokerForSuite();

  it('drop the batches not decoded yet with the queued messages: nothing from before a seek comes after it, nothing is lost or repeated', async () => {
    await client().admin.createTopic('partly', { channels: 1 });
    const producer = await client().producer({ topic: 'partly' });
    const total = 10_000;
    for (let b = 0; b < total / 1000; b++) await producer.sendBatch(Array.from({ length: 1000 }, (_, i) => ({ body: `m${b * 1000 + i}` })));
    await producer.close();
    // A window of 4 batches: a push holds several, and only the first is decoded when the
    // first message is taken. A seek drops the rest with it (and gives their credit back).
    const consumer = await client().consumer({ topic: 'partly', group: 'partly', start: 'earliest', prefetchMessages: 4000, autoCommitIntervalMs: 0 });
    for (let seek = 0; seek < 5; seek++) {
      const first = (await consumer.next()).value!;
      assert.equal(text(first), `m${seek * 10}`, `after seek ${seek}`);
      await consumer.seek({ offsets: { 0: (seek + 1) * 10 } });
    }
    const seen: number[] = [];
    while (seen.length < total - 50) {
      const m = (await consumer.next()).value!;
      assert.equal(text(m), `m${m.offset}`);
      seen.push(m.offset);
    }
    assert.deepEqual(seen, Array.from({ length: total - 50 }, (_, i) => 50 + i), 'every message from the last seek on, once, in order');
    await consumer.close();
  });
});
