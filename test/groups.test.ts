import { strict as assert } from 'node:assert';
import { openStore, type Store, type SyncMode } from '../engine/index';
import { compactionSegmentCount, GroupPositions, groupsTopic } from '../server/groups';
import { removeTempDirs, tempDir } from './helpers';

after(removeTempDirs);

/** __groups with the smallest segments the engine allows, so a few hundred commits span many. */
const segmentBytes = 4096;

async function openGroups(dir: string, sync: SyncMode = 'batch'): Promise<{ store: Store; groups: GroupPositions }> {
  const store = await openStore(dir, { sync });
  const groups = await GroupPositions.open(store, { segmentBytes });
  await groups.loaded();
  return { store, groups };
}

async function groupsKeys(store: Store): Promise<string[]> {
  const { logStartOffset, highWatermark } = store.channelState(groupsTopic, 0);
  const keys: string[] = [];
  for (let offset = logStartOffset; offset < highWatermark; ) {
    const messages = await store.read(groupsTopic, 0, { offset, maxMessages: 1000 });
    for (const m of messages) keys.push(m.key!);
    offset = messages[messages.length - 1]!.offset + 1;
  }
  return keys;
}

describe('__groups compaction', () => {
  for (const sync of ['batch', 'interval'] as const)
  it(`keeps every live position, drops deleted topics, and stays within a few segments (sync ${sync})`, async () => {
    const dir = tempDir();
    let { store, groups } = await openGroups(dir, sync);
    await store.createTopic('orders', { channels: 2 });
    await store.createTopic('gone', { channels: 1 });
    await groups.commit('gone', 'old', [{ channel: 0, offset: 7, timestamp: 1 }]);
    await store.deleteTopic('gone');
    groups.forgetTopic('gone');

    const expected = new Map<string, number>();
    let segmentsMax = 0;
    for (let i = 0; i < 600; i++) {
      const group = `g${i % 5}`;
      await groups.commit('orders', group, [
        { channel: 0, offset: i, timestamp: 1000 + i },
        { channel: 1, offset: 2 * i, timestamp: 1000 + i },
      ]);
      expected.set(`${group}/0`, i);
      expected.set(`${group}/1`, 2 * i);
      await groups.compacted();
      segmentsMax = Math.max(segmentsMax, store.describeTopic(groupsTopic).channelInfo[0]!.segments);
    }
    // 600 commits of ~200 bytes would be ~30 segments of 4 KiB without compaction.
    assert.ok(groups.compactions >= 5, `compactions ${groups.compactions}`);
    assert.ok(segmentsMax <= compactionSegmentCount + 1, `__groups reached ${segmentsMax} segments`);
    assert.ok(store.channelState(groupsTopic, 0).logStartOffset > 0);

    await store.close();
    ({ store, groups } = await openGroups(dir, sync));
    for (const [key, offset] of expected) {
      const [group, channel] = key.split('/');
      assert.equal((await groups.get('orders', group!, Number(channel)))?.offset, offset, key);
    }
    const keys = await groupsKeys(store);
    assert.ok(!keys.some((k) => k.startsWith('gone/')), 'a deleted topic position was kept');
    assert.deepEqual([...groups.cached()].map(([topic]) => topic).filter((t) => t !== 'orders'), []);
    await store.close();
  });

  it('does not bring back an older position over a commit still queued when it starts', async () => {
    const dir = tempDir();
    let { store, groups } = await openGroups(dir);
    await store.createTopic('orders', { channels: 1 });
    await groups.commit('orders', 'victim', [{ channel: 0, offset: 100, timestamp: 1 }]);
    // Filler records written around GroupPositions until __groups spans enough segments: the next commit starts a compaction.
    while (store.describeTopic(groupsTopic).channelInfo[0]!.segments < compactionSegmentCount) {
      await store.append(groupsTopic, 0, Array.from({ length: 20 }, (_, i) => ({ key: `orders/filler/${i}`, body: '{"offset":0,"timestamp":0}' })));
    }
    // x's append is written alone (the group commit has taken it when victim's arrives); when x
    // is done the compaction starts, reading up to x, while victim's newer commit is still queued.
    const x = groups.commit('orders', 'x', [{ channel: 0, offset: 1, timestamp: 1 }]);
    const victim = groups.commit('orders', 'victim', [{ channel: 0, offset: 131, timestamp: 2 }]);
    await Promise.all([x, victim]);
    await groups.compacted();
    assert.equal(groups.compactions, 1);
    await store.close();
    ({ store, groups } = await openGroups(dir));
    assert.equal((await groups.get('orders', 'victim', 0))?.offset, 131, 'after a restart: the newer commit, not the rewrite of the older');
    await store.close();
  });

  it('does not bring back an older position over a commit made while it runs', async () => {
    const dir = tempDir();
    let { store, groups } = await openGroups(dir);
    await store.createTopic('orders', { channels: 1 });
    let i = 0;
    while (!groups.compacting) {
      assert.ok(i < 10_000, 'no compaction started');
      await groups.commit('orders', `g${i % 3}`, [{ channel: 0, offset: i, timestamp: i }]);
      i++;
    }
    // The compaction is reading __groups now; this commit lands before its rewrite.
    await groups.commit('orders', 'g0', [{ channel: 0, offset: 1_000_000, timestamp: 1 }]);
    await groups.compacted();
    assert.equal(groups.compactions, 1);
    assert.equal((await groups.get('orders', 'g0', 0))?.offset, 1_000_000);
    await store.close();
    ({ store, groups } = await openGroups(dir));
    assert.equal((await groups.get('orders', 'g0', 0))?.offset, 1_000_000, 'after a restart');
    for (const g of ['g1', 'g2']) {
      const last = [...Array(i).keys()].filter((n) => `g${n % 3}` === g).pop();
      assert.equal((await groups.get('orders', g, 0))?.offset, last, g);
    }
    await store.close();
  });
});
