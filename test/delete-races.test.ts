/**
 * Deletion (of a topic, by retention) racing the work under way on what it deletes
 * (helper-58's review). A topic deleted and made again under the same name while the broker
 * works on the old one: nothing of the new topic reaches a subscription of the old one, and
 * no subscription starts in the new one at positions found in the old. A slow disk is stood
 * in for by holding one call (a store call, or an fs callback) until the test lets go.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import type * as fs from 'node:fs';
import * as path from 'node:path';
import { openStore, decodeRecords, lz4Codec, probeHeader, type Store } from '../engine/index';
import { Broker } from '../server/broker';
import { Subscription, type SubscriptionSink } from '../server/subscription';
import { frame, greeted, until } from './fake-socket';
import { rejection, removeTempDirs, tempDir } from './helpers';

// The module object the engine calls through (fs-pool, Segment): its functions can be wrapped.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const fsModule = require('node:fs') as typeof import('node:fs');

after(removeTempDirs);

/** The bodies of a run of whole batches, as text. */
function bodies(bytes: Uint8Array): string[] {
  const out: string[] = [];
  let pos = 0;
  while (pos < bytes.length) {
    const probe = probeHeader(bytes, pos);
    if (probe.kind !== 'ok') throw new Error(`push bytes at ${pos}: ${probe.kind}`);
    for (const r of decodeRecords(bytes, pos, probe.header, lz4Codec)) out.push(Buffer.from(r.body).toString());
    pos += probe.header.batchLength;
  }
  return out;
}

/** A one-shot gate: `hold` waits in the call until `open()`. */
function gate(): { held: Promise<void>; hold: () => Promise<void>; open: () => void } {
  let entered!: () => void;
  let open!: () => void;
  const held = new Promise<void>((resolve) => (entered = resolve));
  const opened = new Promise<void>((resolve) => (open = resolve));
  return {
    held,
    hold: () => {
      entered();
      return opened;
    },
    open,
  };
}

/** Deletes `t` and makes it again with `channels`, with `count` messages NEW-<i> in channel 0. */
async function remake(store: Store, broker: Broker | null, channels: number, count: number): Promise<void> {
  await store.deleteTopic('t');
  broker?.forgetTopic('t');
  await store.createTopic('t', { channels });
  for (let i = 0; i < count; i++) await store.append('t', 0, [{ body: `NEW-${i}` }]);
}

describe('a topic deleted and made again under the same name', () => {
  let store: Store;
  beforeEach(async () => {
    store = await openStore(tempDir(), { sync: 'none' });
  });
  afterEach(async () => {
    await store.close();
  });

  for (const packs of [false, true]) {
    it(`a ${packs ? 'pack' : 'stream'} subscription whose read was under way ends with TOPIC_NOT_FOUND and hands out nothing of the new topic${packs ? '' : " (it pushed the new topic's offsets 44-99 from the old positions)"}`, async () => {
      await store.createTopic('t', { channels: 2 });
      for (let i = 0; i < 50; i++) for (const c of [0, 1]) await store.append('t', c, [{ body: `old-${c}-${i}` }]);
      const handed: string[] = [];
      const errors: string[] = [];
      let ended = false;
      const sink: SubscriptionSink = {
        send: (f) => {
          if (f.error) errors.push(f.error.name ?? '');
          for (const c of f.pack?.channels ?? []) if (c.batches) handed.push(...bodies(c.batches));
        },
        sendPush: (_fields, batches) => void handed.push(...bodies(batches)),
        writable: () => true,
        ended: () => void (ended = true),
        counted: () => undefined,
      };
      // Channel 1's first read is slow: the topic is deleted, made again and written meanwhile.
      const slow = gate();
      const readBatches = store.readBatches.bind(store);
      store.readBatches = async (topic, channel, options) => {
        const read = await readBatches(topic, channel, options);
        if (channel === 1) await slow.hold();
        return read;
      };
      const subscription = new Subscription({ id: 1, topic: 't', group: 'g', positions: new Map([[0, 0], [1, 0]]), creditMessages: 1_000_000, creditBytes: 1 << 30, packs, tickIntervalMs: 60_000, packBeginTs: 0 }, store, sink);
      subscription.start();
      await slow.held;
      await remake(store, null, 2, 100);
      slow.open();
      await until(() => ended);
      subscription.close();
      assert.deepEqual(
        handed.filter((b) => b.startsWith('NEW')),
        [],
        'nothing of the new topic',
      );
      assert.deepEqual(errors, ['TOPIC_NOT_FOUND']);
    });
  }

  it('a Subscribe whose start was being looked up is refused with TOPIC_NOT_FOUND (it started in the new topic at the old one\'s offset 40: new offsets 0-39 were never handed out)', async () => {
    const broker = await Broker.open(store);
    await store.createTopic('t', { channels: 1 });
    for (let i = 0; i < 50; i++) await store.append('t', 0, [{ body: `old-${i}` }]);
    const at40 = (await store.read('t', 0, { offset: 40, maxMessages: 1 }))[0]!.brokerTimestamp;
    // The start by time is looked up slowly.
    const slow = gate();
    const offsetForTime = store.offsetForTime.bind(store);
    store.offsetForTime = async (...args) => {
      const offset = await offsetForTime(...args);
      await slow.hold();
      return offset;
    };
    const { ws, session } = await greeted(broker);
    session.onMessage(frame({ id: 2, subscribe: { topic: 't', group: 'g', subscription: 7, creditMessages: 1000, creditBytes: 1 << 20, startTimestamp: at40 } }), true);
    await slow.held;
    await remake(store, broker, 1, 100);
    slow.open();
    await until(() => ws.replies().length === 2);
    const reply = ws.replies()[1]!;
    assert.equal(reply.error?.name, 'TOPIC_NOT_FOUND', JSON.stringify(reply).slice(0, 300));
    // The new topic is served to a subscription made now, from its start.
    session.onMessage(frame({ id: 3, subscribe: { topic: 't', group: 'g', subscription: 8, creditMessages: 1000, creditBytes: 1 << 20, start: 'earliest' } }), true);
    await until(() => ws.replies().length === 3);
    assert.deepEqual(ws.replies()[2]!.subscribeOk?.positions?.map((p) => Number(p.offset)), [0]);
    session.closedBySocket();
  });
});

describe('the engine: deletion racing work under way on what it deletes', () => {
  let store: Store;
  afterEach(async () => {
    await store.close().catch(() => undefined);
  });

  it('retention leaves an expired active segment alone while a compaction\'s fdatasync of it is under way (it closed the descriptor under the sync: EBADF failed the channel for good)', async () => {
    store = await openStore(tempDir(), { sync: 'none' });
    await store.createTopic('t', { channels: 1, retentionMs: 1000 });
    for (let i = 0; i < 5; i++) await store.append('t', 0, [{ body: `m${i}` }]);
    await store.settled();
    // The compaction's fdatasync of the log is slow: held until retention's pass is over.
    const slow = gate();
    const fdatasync = fsModule.fdatasync;
    fsModule.fdatasync = ((fd: number, callback: (err: NodeJS.ErrnoException | null) => void) => {
      if (!fsModule.readlinkSync(`/proc/self/fd/${fd}`).endsWith('.log')) return fdatasync(fd, callback);
      void slow.hold().then(() => fdatasync(fd, callback));
    }) as typeof fsModule.fdatasync;
    try {
      const compaction = store.deleteSegmentsBefore('t', 0, 0);
      await slow.held;
      assert.equal(await store.applyRetention(Date.now() + 3_600_000), 0, 'the active segment stays while its sync runs');
      slow.open();
      assert.equal(await compaction, 0);
    } finally {
      fsModule.fdatasync = fdatasync;
    }
    assert.deepEqual(store.channelHealth(), [], 'no channel failed');
    assert.equal((await store.append('t', 0, [{ body: 'after' }])).baseOffset, 5);
    assert.equal(await store.applyRetention(Date.now() + 3_600_000), 1, 'the next pass deletes it');
  });

  // A read said OFFSET_OUT_OF_RANGE "deleted by retention: read again from the log start"; a
  // time lookup (offsetForTime: a subscribe or seek by time) STORE_CLOSED (helper-60).
  for (const [what, start] of [
    ['a read', (s: Store) => s.read('t', 0, { offset: 0, maxMessages: 1000, maxBytes: 1 << 20 })],
    ['a time lookup (a subscribe or seek by time)', (s: Store, at: number) => s.offsetForTime('t', 0, at)],
  ] as const) {
    it(`${what} under way when its topic is deleted fails with TOPIC_NOT_FOUND`, async () => {
      store = await openStore(tempDir(), { sync: 'none', segmentBytes: 4096 });
      await store.createTopic('t', { channels: 1 });
      for (let i = 0; i < 30; i++) await store.append('t', 0, [{ body: randomBytes(1000) }]);
      await store.settled();
      const at = (await store.read('t', 0, { offset: 20, maxMessages: 1 }))[0]!.brokerTimestamp; // a time inside the log
      // Its first fs.read is held until the topic is deleted.
      const slow = gate();
      const read = fsModule.read;
      let held = false;
      fsModule.read = ((...args: unknown[]) => {
        if (held) return (read as (...a: unknown[]) => void)(...args);
        held = true;
        void slow.hold().then(() => (read as (...a: unknown[]) => void)(...args));
      }) as typeof fsModule.read;
      try {
        const pending = rejection(start(store, at));
        await slow.held;
        await store.deleteTopic('t');
        slow.open();
        const err = await pending;
        assert.equal(err.code, 'TOPIC_NOT_FOUND', err.message);
      } finally {
        fsModule.read = read;
      }
    });
  }

  it('a retention pass under way when its topic is deleted reports no fault (it said "retention of topic t channel N failed: ENOENT" for a topic that no longer exists)', async () => {
    const faults: string[] = [];
    store = await openStore(tempDir(), { sync: 'none', segmentBytes: 4096, onFault: (f) => faults.push(`${f.kind}: ${f.message}`) });
    await store.createTopic('t', { channels: 2, retentionBytes: 1 });
    for (let i = 0; i < 20; i++) for (const c of [0, 1]) await store.append('t', c, [{ body: randomBytes(900) }]);
    await store.settled();
    // The pass's checkpoint write is held (its temporary file's open) until the topic is deleted.
    const slow = gate();
    const open = fsModule.open;
    fsModule.open = ((...args: unknown[]) => {
      const file = String(args[0]);
      if (!path.basename(file).startsWith('checkpoint.json.')) return (open as (...a: unknown[]) => void)(...args);
      void slow.hold().then(() => (open as (...a: unknown[]) => void)(...args));
    }) as typeof fsModule.open;
    try {
      const pass = store.applyRetention();
      await slow.held;
      const deleting = store.deleteTopic('t'); // the folder is renamed away at once; the close waits for the pass
      slow.open();
      await deleting;
      await pass;
    } finally {
      fsModule.open = open;
    }
    assert.deepEqual(faults, []);
  });

  it('a retention pass under way when its topic is deleted unlinks nothing by path once the delete is done (a topic made again under the name could lose its files)', async () => {
    store = await openStore(tempDir(), { sync: 'none', segmentBytes: 4096 });
    await store.createTopic('t', { channels: 1, retentionBytes: 1 });
    for (let i = 0; i < 40; i++) await store.append('t', 0, [{ body: randomBytes(900) }]);
    await store.settled();
    // The pass's first index-file unlink is held until the delete has begun.
    const slow = gate();
    const unlink = fsModule.unlink;
    const events: string[] = [];
    let first = true;
    fsModule.unlink = ((file: fs.PathLike, callback: fs.NoParamCallback) => {
      const done: fs.NoParamCallback = (err) => {
        events.push('unlink');
        callback(err);
      };
      if (!/\.(oix|tix|kix)$/.test(String(file))) return unlink(file, callback);
      if (!first) return unlink(file, done);
      first = false;
      void slow.hold().then(() => unlink(file, done));
    }) as typeof fsModule.unlink;
    try {
      const pass = store.applyRetention();
      await slow.held;
      const deleting = store.deleteTopic('t').then(() => events.push('deleted'));
      slow.open();
      await deleting;
      await pass;
    } finally {
      fsModule.unlink = unlink;
    }
    assert.ok(events.includes('deleted'));
    assert.deepEqual(events.slice(events.indexOf('deleted') + 1), [], 'no unlink by the old channel after the delete');
  });

  it('a retried producer sequence whose first append retention has deleted is DUPLICATE_SEQUENCE and appends nothing (it was OFFSET_OUT_OF_RANGE from reading the deleted batch back)', async () => {
    store = await openStore(tempDir(), { sync: 'none', segmentBytes: 4096 });
    await store.createTopic('t', { channels: 1, retentionBytes: 1 });
    await store.append('t', 0, [{ body: randomBytes(1000) }], { producerId: 7, producerSequence: 0 });
    for (let i = 0; i < 10; i++) await store.append('t', 0, [{ body: randomBytes(1000) }]);
    await store.settled();
    assert.ok((await store.applyRetention()) > 0);
    const before = store.channelState('t', 0);
    assert.ok(before.logStartOffset > 0);
    const err = await rejection(store.append('t', 0, [{ body: 'retry' }], { producerId: 7, producerSequence: 0 }));
    assert.equal(err.code, 'DUPLICATE_SEQUENCE', err.message);
    assert.deepEqual(store.channelState('t', 0), before, 'nothing appended');
  });
});

describe('what a deleted topic leaves in the broker', () => {
  it('the HTTP round robin forgets a deleted topic (it kept ~265 B for every topic ever posted to: helper-61)', async () => {
    const store = await openStore(tempDir(), { sync: 'none' });
    try {
      const broker = await Broker.open(store);
      assert.deepEqual([0, 1, 2, 3].map(() => broker.roundRobin('t', 3)), [0, 1, 2, 0]);
      assert.equal(broker.roundRobinTopics, 1);
      broker.forgetTopic('t');
      assert.equal(broker.roundRobinTopics, 0);
      assert.equal(broker.roundRobin('t', 2), 0, 'a topic made again starts from channel 0');
    } finally {
      await store.close();
    }
  });
});
