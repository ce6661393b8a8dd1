/**
 * The zeroed tail (engine/FORMAT.md): in sync mode "batch" a small group commit that grows the
 * active segment also writes zeros to the next MiB, so the commits after it overwrite written
 * blocks. These tests read and write real files: what the writer leaves, what open, verify
 * and repair make of it after a crash, and writes into it cut short at every page boundary.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openStore, type SyncMode } from '../engine/index';
import { repairStore, verifyStore, walkSegment } from '../engine/inspect/index';
import { limits } from '../engine/limits';
import { batchLayout, copyFolder, flipByte, removeTempDirs, segmentFiles, tempDir } from './helpers';

after(removeTempDirs);

const channelDir = (dir: string): string => path.join(dir, 'topics', 't', '0');
const page = 4096;

/** Appends one batch per entry of `bodyBytes` (one incompressible message each) to t/0. */
async function appendEach(store: Awaited<ReturnType<typeof openStore>>, bodyBytes: number[]): Promise<void> {
  for (const [i, n] of bodyBytes.entries()) await store.append('t', 0, [{ key: `k${i}`, body: randomBytes(n) }]);
}

/** A copy of a live store's folder (what a SIGKILL leaves), with the batches of its one segment. */
async function crashImage(bodyBytes: number[]): Promise<{ image: string; log: string; starts: number[]; end: number; fileBytes: number }> {
  const live = tempDir();
  const store = await openStore(live);
  await store.createTopic('t', { channels: 1 });
  await appendEach(store, bodyBytes);
  const image = tempDir();
  copyFolder(live, image);
  await store.close();
  fs.rmSync(path.join(image, 'LOCK'), { force: true });
  const log = segmentFiles(channelDir(image))[0]!;
  const bytes = fs.readFileSync(log);
  const { starts, end } = batchLayout(bytes);
  return { image, log, starts, end, fileBytes: bytes.length };
}

describe('the zeroed tail: what the writer leaves', () => {
  it('sync "batch": small commits leave the file zeroed to the next MiB; a roll and a clean close cut it back to the batches', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1, segmentBytes: 3 * 1024 * 1024 });
    await appendEach(store, [100, 200, 300]);
    const log = segmentFiles(channelDir(dir))[0]!;
    let bytes = fs.readFileSync(log);
    const { starts, end } = batchLayout(bytes);
    assert.equal(starts.length, 3);
    assert.equal(bytes.length, limits.zeroAheadBytes, 'written ahead to 1 MiB');
    assert.ok(bytes.subarray(end).every((b) => b === 0), 'with zeros');
    // A commit past the first MiB (under 16 KiB) takes the zeros on to the next one.
    await appendEach(store, Array<number>(71).fill(limits.zeroAheadCommitBytesMax - 200));
    bytes = fs.readFileSync(log);
    assert.ok(batchLayout(bytes).end > limits.zeroAheadBytes);
    assert.equal(bytes.length, 2 * limits.zeroAheadBytes);
    await store.close();
    assert.equal(fs.statSync(log).size, batchLayout(fs.readFileSync(log)).end, 'a clean close cuts the zeros off');
    const again = await openStore(dir);
    try {
      assert.deepEqual(again.recoveryReport, []);
      assert.equal((await again.read('t', 0, { offset: 0, maxMessages: 1000, maxBytes: 8 * 1024 * 1024 })).length, 74);
    } finally {
      await again.close();
    }
    assert.deepEqual((await verifyStore(dir)).faults, []);
  });

  it('a rolled segment is cut back when it is sealed; the new active one starts its own zeros', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1, segmentBytes: 64 * 1024 });
    for (let i = 0; i < 40; i++) await store.append('t', 0, [{ body: randomBytes(3000) }]);
    await store.settled();
    const logs = segmentFiles(channelDir(dir));
    assert.ok(logs.length >= 2);
    for (const log of logs.slice(0, -1)) assert.equal(fs.statSync(log).size, batchLayout(fs.readFileSync(log)).end, `${path.basename(log)} sealed without zeros`);
    const active = fs.readFileSync(logs.at(-1)!);
    assert.equal(active.length, 64 * 1024, 'zeroed up to segmentBytes, never past it');
    await store.close();
  });

  for (const sync of ['interval', 'none'] as SyncMode[]) {
    it(`sync "${sync}" writes no zeros (it does not wait for the device)`, async () => {
      const dir = tempDir();
      const store = await openStore(dir, { sync });
      await store.createTopic('t', { channels: 1 });
      await appendEach(store, [100, 200]);
      const log = segmentFiles(channelDir(dir))[0]!;
      assert.equal(fs.statSync(log).size, batchLayout(fs.readFileSync(log)).end);
      await store.close();
    });
  }

  it('a commit over 16 KiB appends without zeros; writing ahead resumes at the next small commit', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1 });
    await appendEach(store, [limits.zeroAheadCommitBytesMax + 1]);
    const log = segmentFiles(channelDir(dir))[0]!;
    assert.equal(fs.statSync(log).size, batchLayout(fs.readFileSync(log)).end, 'no zeros after a big commit');
    await appendEach(store, [10]);
    assert.equal(fs.statSync(log).size, limits.zeroAheadBytes);
    await store.close();
  });
});

describe('the zeroed tail after a crash', () => {
  it('open keeps every batch, reports nothing, and cuts the zeros; verify finds no fault in the image; repair drops nothing', async () => {
    const { image, log, starts, end, fileBytes } = await crashImage([100, 5000, 9000, 300]);
    assert.equal(starts.length, 4);
    assert.ok(fileBytes > end, 'the image has a zeroed tail');
    assert.deepEqual((await verifyStore(image)).faults, [], 'zeros after the last batch are not damage');
    const events = [...walkSegment(fs.openSync(log, 'r'))];
    assert.deepEqual(events.map((e) => e.kind), ['batch', 'batch', 'batch', 'batch'], 'the walk (dump, verify, repair) ends at the zeros');
    const repairCopy = tempDir();
    copyFolder(image, repairCopy);
    const repaired = await repairStore(repairCopy);
    assert.deepEqual(repaired.dropped, []);
    assert.equal(fs.statSync(segmentFiles(channelDir(repairCopy))[0]!).size, end, 'repair cuts the zeros off');

    const store = await openStore(image);
    try {
      assert.deepEqual(store.recoveryReport, []);
      assert.equal(fs.statSync(log).size, end, 'recovery cut the zeros off');
      assert.deepEqual((await store.read('t', 0, { offset: 0 })).map((m) => m.body.length), [100, 5000, 9000, 300]);
      const next = await store.append('t', 0, [{ body: 'after' }]);
      assert.equal(next.baseOffset, 4);
    } finally {
      await store.close();
    }
  });

  it('a write into the zeros cut short at each page boundary inside the last batch is a torn tail: dropped silently, the rest kept', async () => {
    // The last batch spans several pages; a crash mid-write leaves its pages up to one boundary.
    const { image, starts, end } = await crashImage([100, 700, 15_000]);
    const last = starts[2]!;
    const cuts: number[] = [];
    for (let at = Math.ceil((last + 1) / page) * page; at < end; at += page) cuts.push(at);
    assert.ok(cuts.length >= 3, `the last batch crosses page boundaries (${cuts})`);
    for (const cut of cuts) {
      const copy = tempDir();
      copyFolder(image, copy);
      const log = segmentFiles(channelDir(copy))[0]!;
      const fd = fs.openSync(log, 'r+');
      fs.writeSync(fd, Buffer.alloc(end - cut), 0, end - cut, cut); // the pages from `cut` never written
      fs.closeSync(fd);
      const { faults } = await verifyStore(copy);
      assert.equal(faults.length, 1, `cut at ${cut}: ${JSON.stringify(faults)}`);
      assert.match(faults[0]!.what, /torn|cut short/, `cut at ${cut}`);
      const store = await openStore(copy);
      try {
        assert.deepEqual(
          store.recoveryReport.map((f) => [f.kind, f.position]),
          [['torn', last]],
          `cut at ${cut}`,
        );
        assert.equal(store.recoveryReport[0]!.savedTo, undefined, 'a torn tail is not saved aside');
        assert.deepEqual((await store.read('t', 0, { offset: 0 })).map((m) => m.body.length), [100, 700]);
        assert.equal(fs.readdirSync(path.dirname(log)).filter((n) => n.includes('.dropped-')).length, 0);
      } finally {
        await store.close();
      }
      fs.rmSync(copy, { recursive: true, force: true });
    }
  });

  it('damage that is not a page cut stays damage: a flipped byte or zeros that end the batch off a page boundary are reported, saved aside without the zeros', async () => {
    const { image, starts, end } = await crashImage([100, 700, 2000]);
    const last = starts[2]!;
    // Zeros over the batch's last 100 bytes, which lie within one page: no write stops there.
    const from = end - 100;
    assert.equal(Math.floor(from / page), Math.floor((end - 1) / page), 'the range is inside one page');
    for (const [name, damage] of [
      ['flip', (log: string) => flipByte(log, last + 70)],
      ['zeros', (log: string) => {
        const fd = fs.openSync(log, 'r+');
        fs.writeSync(fd, Buffer.alloc(100), 0, 100, from);
        fs.closeSync(fd);
      }],
    ] as const) {
      const copy = tempDir();
      copyFolder(image, copy);
      const log = segmentFiles(channelDir(copy))[0]!;
      damage(log);
      const store = await openStore(copy);
      try {
        const report = store.recoveryReport;
        assert.deepEqual(report.map((f) => [f.kind, f.position]), [['corrupt', last]], name);
        const saved = fs.statSync(report[0]!.savedTo!).size;
        assert.equal(report[0]!.bytesDropped, saved);
        assert.ok(saved <= end - last && saved > 0, `${name}: ${saved} bytes saved, the batch's nonzero bytes only`);
        assert.deepEqual((await store.read('t', 0, { offset: 0 })).map((m) => m.body.length), [100, 700]);
      } finally {
        await store.close();
      }
    }
  });

  it('a batch whose pages after a hole reached the disk (a power loss reorders pages): open repairs around the hole', async () => {
    // Batches 2 and 3 went out in one write; the page holding batch 2's middle was lost,
    // batch 3 (whole, in a later page) was not. Every batch whose checksum holds is kept.
    const { image, starts, end } = await crashImage([100, 9000, 200]);
    const copy = tempDir();
    copyFolder(image, copy);
    const log = segmentFiles(channelDir(copy))[0]!;
    const hole = Math.ceil((starts[1]! + 1) / page) * page;
    assert.ok(hole + page <= starts[2]!, 'a whole page of batch 2 lies before batch 3');
    const fd = fs.openSync(log, 'r+');
    fs.writeSync(fd, Buffer.alloc(page), 0, page, hole);
    fs.closeSync(fd);
    assert.ok(end > starts[2]!);
    const store = await openStore(copy);
    try {
      assert.deepEqual(store.recoveryReport.map((f) => [f.kind, f.position]), [['corrupt', starts[1]]]);
      assert.deepEqual((await store.read('t', 0, { offset: 0 })).map((m) => m.body.length), [100, 200]);
    } finally {
      await store.close();
    }
    assert.deepEqual((await verifyStore(copy)).faults, []);
  });
});
