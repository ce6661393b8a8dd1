/**
 * The store under disk faults: real files, real failures, made with tricks that work as root
 * (a directory where a file must be written gives EISDIR; a non-empty directory where a file
 * must be unlinked makes the unlink fail). The store must stay consistent, say what failed,
 * and go on serving everything else.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openStore, type StoreFault } from '../engine/index';
import { bodyFor, removeTempDirs, segmentFiles, tempDir } from './helpers';

after(removeTempDirs);

/** A non-empty directory in place of `file`: unlinking it fails (EISDIR), as on a disk that refuses. */
function blockUnlink(file: string): void {
  fs.rmSync(file, { force: true });
  fs.mkdirSync(file);
  fs.writeFileSync(path.join(file, 'keep'), 'x');
}

describe('disk faults: retention', () => {
  it('a pass that cannot unlink a segment or write the checkpoint after it fails only that channel: said once per cause, counted, retried next pass', async () => {
    const dir = tempDir();
    const faults: StoreFault[] = [];
    let store = await openStore(dir, { segmentBytes: 4096, compression: false });
    await store.createTopic('t', { channels: 2, retentionBytes: 1 }); // every sealed segment may go
    for (let i = 0; i < 40; i++) for (const c of [0, 1]) await store.append('t', c, [{ body: bodyFor('retention', i, 1000) }]);
    await store.close();
    // Reopened: every segment but the active one is sealed (none still sealing in the background).
    store = await openStore(dir, { segmentBytes: 4096, onFault: (f) => faults.push(f) });
    try {
      const channelDir = path.join(dir, 'topics', 't', '0');
      const before = store.describeTopic('t').channelInfo[0]!;
      assert.ok(before.segments >= 3, `segments ${before.segments}`);
      // The engine's descriptor still reads the real (now unlinked) file; its name is a directory.
      const oldest = segmentFiles(channelDir)[0]!;
      blockUnlink(oldest);

      assert.ok(store.applyRetention() > 0, 'channel 1 is trimmed; the pass does not throw');
      assert.equal(store.describeTopic('t').channelInfo[1]!.segments, 1, 'the other channel is not held back');
      assert.deepEqual(store.describeTopic('t').channelInfo[0], before, 'channel 0 is as it was: its oldest segment stays whole');
      assert.equal((await store.read('t', 0, { offset: 0, maxMessages: 1 }))[0]!.body.equals(bodyFor('retention', 0, 1000)), true);
      await store.append('t', 0, [{ body: 'still appends' }]);
      assert.deepEqual(
        faults.map((f) => [f.kind, f.topic, f.channel, f.code]),
        [['retention', 't', 0, 'EISDIR']],
      );
      assert.match(faults[0]!.message, /^retention of topic t channel 0 failed: EISDIR.*tries again/);

      assert.equal(store.applyRetention(), 0);
      assert.equal(faults.length, 1, 'the same cause is said once, not at every pass');
      assert.deepEqual(store.channelHealth(), [{ topic: 't', channel: 0, retentionFailures: 2 }]);

      // The unlink works again, but the checkpoint after it cannot be written (EISDIR).
      fs.rmSync(oldest, { recursive: true });
      const temp = path.join(channelDir, 'checkpoint.json.tmp');
      fs.mkdirSync(temp);
      assert.ok(store.applyRetention() === 0, 'the removals are not counted when the pass fails');
      const trimmed = store.describeTopic('t').channelInfo[0]!;
      assert.equal(trimmed.segments, 1, 'the segments went even though the checkpoint could not be written');
      assert.ok(trimmed.logStartOffset > 0);
      assert.equal(faults.length, 2, 'a new cause is said');
      assert.match(faults[1]!.message, /checkpoint\.json\.tmp/);
      assert.deepEqual(store.channelHealth(), [{ topic: 't', channel: 0, retentionFailures: 3 }]);

      // The next pass writes the checkpoint it owes.
      fs.rmdirSync(temp);
      store.applyRetention();
      const checkpoint = JSON.parse(fs.readFileSync(path.join(channelDir, 'checkpoint.json'), 'utf8')) as { segments: Array<{ baseOffset: number }> };
      assert.ok(checkpoint.segments.every((s) => s.baseOffset >= trimmed.logStartOffset), 'the checkpoint no longer lists the removed segments');
      assert.equal(faults.length, 2);
      await store.close();
      store = await openStore(dir, { segmentBytes: 4096 });
      assert.equal(store.describeTopic('t').channelInfo[0]!.logStartOffset, trimmed.logStartOffset);
    } finally {
      await store.close();
    }
  });
});
