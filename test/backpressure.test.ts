/**
 * The broker against a socket that does not drain, in process: a fake µWS socket counts the
 * unsent bytes, so the tests see exactly what the broker hands it and when (helper-51 found
 * pushes and fetch replies dropped by µWS past its limit: consumers skipped messages and
 * committed past them, requests went unanswered).
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { openStore, type Store } from '../engine/index';
import { protocolLimits } from '../protocol/limits';
import { Broker } from '../server/broker';
import { Subscription, type SubscriptionSink } from '../server/subscription';
import { frame, greeted, until } from './fake-socket';
import { removeTempDirs, tempDir } from './helpers';

after(removeTempDirs);

/** A store with `batches` batches of 16 × 64 KiB random bodies (1 MiB a batch) in channel 0 of `t`. */
async function storeWithBacklog(batches: number): Promise<Store> {
  const store = await openStore(tempDir(), { compression: false });
  await store.createTopic('t', { channels: 1 });
  for (let i = 0; i < batches; i++) await store.append('t', 0, Array.from({ length: 16 }, () => ({ body: randomBytes(64 * 1024) })));
  return store;
}

describe('backpressure: a socket that does not drain', () => {
  let store: Store;
  beforeEach(async () => {
    store = await storeWithBacklog(12);
  });
  afterEach(async () => {
    await store.close();
  });

  for (const packs of [false, true]) {
    it(`a ${packs ? 'pack' : 'push'} is not sent when the socket filled up while its batches were read; nothing moves, and the drain sends it from where it was`, async () => {
      const sent: Array<{ start: number; end: number }> = [];
      let room = true;
      let askedAfterRead = 0;
      let reads = 0;
      const sink: SubscriptionSink = {
        send: (f) => {
          if (f.pack) for (const c of f.pack.channels ?? []) if (Number(c.endOffset) > Number(c.startOffset)) sent.push({ start: Number(c.startOffset), end: Number(c.endOffset) });
        },
        sendPush: (fields) => void sent.push({ start: fields.startOffset, end: fields.nextOffset }),
        writable: () => {
          if (reads > 0) askedAfterRead++;
          return room;
        },
        ended: () => undefined,
        counted: () => undefined,
      };
      // Another subscription of the connection filled the socket while this one read.
      const readBatches = store.readBatches.bind(store);
      store.readBatches = async (...args) => {
        const read = await readBatches(...args);
        if (reads++ === 0) room = false;
        return read;
      };
      const subscription = new Subscription(
        { id: 1, topic: 't', group: 'g', positions: new Map([[0, 0]]), creditMessages: 1_000_000, creditBytes: 1 << 30, packs, tickIntervalMs: 60_000, packBeginTs: 0 },
        store,
        sink,
      );
      try {
        subscription.start();
        // Sent (the bug), or the socket asked about again after the read: the pump's decision.
        await until(() => sent.length > 0 || askedAfterRead > 0);
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(sent.length, 0, 'nothing sent past the full socket');
        assert.deepEqual(subscription.currentPositions(), [{ channel: 0, offset: 0 }], 'the position did not move');
        // The drain: room again, and the session kicks its subscriptions.
        store.readBatches = readBatches;
        room = true;
        subscription.kick();
        const end = store.channelState('t', 0).highWatermark;
        await until(() => {
          subscription.kick(); // a pack goes per tick (or kick); pushes go on by themselves
          return sent.length > 0 && sent[sent.length - 1]!.end === end;
        });
        let at = 0;
        for (const s of sent) {
          assert.equal(s.start, at, `sent ${JSON.stringify(sent)}: no gap`);
          at = s.end;
        }
      } finally {
        subscription.close();
      }
    });
  }

  it('fetches are read one at a time once the socket has room: pipelined by a client that does not read, they hold one reply past the limit, and every one is answered', async () => {
    const broker = await Broker.open(store);
    const { ws, session } = await greeted(broker);
    const count = 30; // 1 MiB each: 30 MiB of replies, past µWS's old 32 MiB limit with the rest
    for (let i = 0; i < count; i++) session.onMessage(frame({ id: 2 + i, fetch: { topic: 't', channel: 0, offset: i % 12, maxBytes: 1 } }), true);
    const answered = (): number => ws.replies().filter((f) => f.fetchOk).length;
    for (let drains = 0; answered() < count; drains++) {
      assert.ok(drains <= count, 'every drain lets a fetch through');
      const before = answered();
      await until(() => answered() > before);
      // Filled (over 8 MiB): nothing more is read until the socket drains.
      await until(() => ws.unsent >= protocolLimits.socketBufferedBytesMax || answered() === count);
      ws.unsent = 0;
      session.drained();
    }
    assert.deepEqual(ws.replies().slice(1).map((f) => f.id), Array.from({ length: count }, (_, i) => 2 + i), 'every fetch answered, in order');
    assert.ok(ws.unsentMax < protocolLimits.socketBufferedBytesMax + 2 * 1024 * 1024, `unsent bytes peaked at ${ws.unsentMax}: one reply past the limit at most`);
    session.closedBySocket();
  });

  it('a frame that would pass socketBackpressureBytesMax unsent closes the connection with 1008 and a reason (before µWS drops anything), instead of leaving a silent gap', async () => {
    const broker = await Broker.open(store);
    const { ws, session } = await greeted(broker);
    // Closed before µWS's own limit (which drops frames, and would drop the close frame too:
    // the client then saw 1006 and no reason): the reply that would pass the session's limit
    // is not sent, and the close goes out behind what waits.
    ws.unsent = protocolLimits.socketBackpressureBytesMax - 10;
    const sent = ws.frames.length;
    session.onMessage(frame({ id: 2, describeTopic: { topic: 't' } }), true);
    await until(() => ws.ended !== null);
    assert.equal(ws.ended!.code, 1008);
    assert.match(ws.ended!.reason, /unread/);
    assert.equal(ws.frames.length, sent, 'the reply past the limit was not handed to µWS');
    assert.equal(session.writable(), false, 'nothing more is sent on it');
    session.closedBySocket();
    // And should µWS drop a frame all the same (send answers 2), the connection is closed too.
    const { ws: other, session: second } = await greeted(broker);
    other.status = 2;
    second.onMessage(frame({ id: 2, describeTopic: { topic: 't' } }), true);
    await until(() => other.ended !== null);
    assert.equal(other.ended!.code, 1008);
    second.closedBySocket();
  });
});
