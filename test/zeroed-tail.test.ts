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
import { encodeBatch, openStore, type SyncMode } from '../engine/index';
import { repairStore, verifyStore, walkSegment } from '../engine/inspect/index';
import { limits } from '../engine/limits';
import { encodeEndMark, endMarkBytes } from '../engine/log/segment-scanner';
import { batchLayout, copyFolder, flipByte, removeTempDirs, segmentFiles, tempDir } from './helpers';

after(removeTempDirs);

const channelDir = (dir: string): string => path.join(dir, 'topics', 't', '0');
const page = 4096;

/** Appends one batch per entry of `bodies` (one message each: that body, or an incompressible one of that many bytes) to t/0. */
async function appendEach(store: Awaited<ReturnType<typeof openStore>>, bodies: Array<number | Buffer>): Promise<void> {
  for (const [i, n] of bodies.entries()) await store.append('t', 0, [{ key: `k${i}`, body: typeof n === 'number' ? randomBytes(n) : n }]);
}

/** A copy of a live store's folder (what a SIGKILL leaves), with the batches of its one segment. */
async function crashImage(bodyBytes: Array<number | Buffer>): Promise<{ image: string; log: string; starts: number[]; end: number; fileBytes: number }> {
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
  it('sync "batch": small commits leave the file zeroed to the next MiB; a roll and a clean close cut it back to the batches and the end mark', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1, segmentBytes: 3 * 1024 * 1024 });
    await appendEach(store, [100, 200, 300]);
    const log = segmentFiles(channelDir(dir))[0]!;
    let bytes = fs.readFileSync(log);
    const { starts, end } = batchLayout(bytes);
    assert.equal(starts.length, 3);
    assert.equal(bytes.length, limits.zeroAheadBytes, 'written ahead to 1 MiB');
    assert.deepEqual(bytes.subarray(end, end + endMarkBytes), encodeEndMark(starts[2]!), 'the last commit\'s end mark right after its batch, saying where the commit began');
    assert.ok(bytes.subarray(end + endMarkBytes).every((b) => b === 0), 'then zeros');
    // A commit past the first MiB (under 16 KiB) takes the zeros on to the next one.
    await appendEach(store, Array<number>(71).fill(limits.zeroAheadCommitBytesMax - 200));
    bytes = fs.readFileSync(log);
    assert.ok(batchLayout(bytes).end > limits.zeroAheadBytes);
    assert.equal(bytes.length, 2 * limits.zeroAheadBytes);
    await store.close();
    assert.equal(fs.statSync(log).size, batchLayout(fs.readFileSync(log)).end + endMarkBytes, 'a clean close cuts the zeros off, not the mark');
    const again = await openStore(dir);
    try {
      assert.deepEqual(again.recoveryReport, []);
      assert.equal((await again.read('t', 0, { offset: 0, maxMessages: 1000, maxBytes: 8 * 1024 * 1024 })).length, 74);
    } finally {
      await again.close();
    }
    assert.deepEqual((await verifyStore(dir)).faults, []);
  });

  it('a rolled segment is cut back to its batches and end mark when it is sealed; the new active one starts its own zeros', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1, segmentBytes: 64 * 1024 });
    for (let i = 0; i < 40; i++) await store.append('t', 0, [{ body: randomBytes(3000) }]);
    await store.settled();
    const logs = segmentFiles(channelDir(dir));
    assert.ok(logs.length >= 2);
    for (const log of logs.slice(0, -1)) {
      const bytes = fs.readFileSync(log);
      const { starts, end } = batchLayout(bytes);
      assert.deepEqual(bytes.subarray(end), encodeEndMark(starts.at(-1)!), `${path.basename(log)} sealed without zeros, with its end mark`);
    }
    const active = fs.readFileSync(logs.at(-1)!);
    assert.equal(active.length, 64 * 1024, 'zeroed up to segmentBytes, never past it');
    await store.close();
  });

  for (const sync of ['interval', 'none'] as SyncMode[]) {
    it(`sync "${sync}" writes no zeros (it does not wait for the device), only the end mark; a crash image of it opens with nothing to report`, async () => {
      const dir = tempDir();
      const store = await openStore(dir, { sync });
      await store.createTopic('t', { channels: 1 });
      await appendEach(store, [100, 200]);
      const log = segmentFiles(channelDir(dir))[0]!;
      const bytes = fs.readFileSync(log);
      const { starts, end } = batchLayout(bytes);
      assert.equal(bytes.length, end + endMarkBytes);
      assert.deepEqual(bytes.subarray(end), encodeEndMark(starts[1]!));
      const image = tempDir();
      copyFolder(dir, image);
      fs.rmSync(path.join(image, 'LOCK'), { force: true });
      await store.close();
      assert.equal(fs.statSync(log).size, end + endMarkBytes, 'a clean close keeps the mark');
      assert.deepEqual((await verifyStore(image)).faults, []);
      const reopened = await openStore(image);
      try {
        assert.deepEqual(reopened.recoveryReport, []);
        assert.equal((await reopened.read('t', 0, { offset: 0 })).length, 2);
      } finally {
        await reopened.close();
      }
    });
  }

  it('a commit over 16 KiB appends without zeros; writing ahead resumes at the next small commit', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1 });
    await appendEach(store, [limits.zeroAheadCommitBytesMax + 1]);
    const log = segmentFiles(channelDir(dir))[0]!;
    assert.equal(fs.statSync(log).size, batchLayout(fs.readFileSync(log)).end + endMarkBytes, 'no zeros after a big commit, only its end mark');
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
    assert.equal(fs.statSync(segmentFiles(channelDir(repairCopy))[0]!).size, end + endMarkBytes, 'repair cuts the zeros off, not the mark');

    const store = await openStore(image);
    try {
      assert.deepEqual(store.recoveryReport, []);
      assert.equal(fs.statSync(log).size, end + endMarkBytes, 'recovery cut the zeros off, not the mark');
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
      fs.writeSync(fd, Buffer.alloc(end + endMarkBytes - cut), 0, end + endMarkBytes - cut, cut); // the pages from `cut` (the end mark's too) never written
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
        assert.equal(faults[0]!.what.match(/(\d+) bytes/)?.[1], String(store.recoveryReport[0]!.bytesDropped), `cut at ${cut}: verify and open count the same bytes`);
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
        assert.ok(saved <= end - last && saved > 0, `${name}: ${saved} bytes saved, the batch's nonzero bytes only (not its end mark, not the zeros)`);
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

  it('a whole batch ending in 4 KiB of zeros with a flipped bit is damage, not a torn tail: its end mark says the write was whole (the gap of store format 2)', async () => {
    // Incompressible first (lz4's sample says no), then 8 KiB of zeros: stored as it is, so
    // the batch's own bytes stop at a page boundary before its end, as a cut-short write's do.
    const body = Buffer.concat([randomBytes(6000), Buffer.alloc(8192)]);
    const { image, log, starts, end } = await crashImage([100, body]);
    const last = starts[1]!;
    const bytes = fs.readFileSync(log);
    assert.ok(bytes.subarray(end - 8192, end).every((b) => b === 0), 'the batch ends in zeros');
    assert.deepEqual(bytes.subarray(end, end + endMarkBytes), encodeEndMark(last));
    flipByte(log, last + 3000);
    const { faults } = await verifyStore(image);
    assert.equal(faults.length, 1, JSON.stringify(faults));
    assert.doesNotMatch(faults[0]!.what, /torn|cut short/, 'verify calls it damage');
    assert.match(faults[0]!.what, new RegExp(`up to the end of the data at ${end} \\(the end mark`), 'and says where the data ends, not a "next good batch"');
    const repairCopy = tempDir();
    copyFolder(image, repairCopy);
    const repaired = await repairStore(repairCopy);
    assert.equal(repaired.dropped.length, 1, 'repair says what it dropped');
    const store = await openStore(image);
    try {
      const report = store.recoveryReport;
      assert.deepEqual(report.map((f) => [f.kind, f.position]), [['corrupt', last]]);
      const saved = fs.readFileSync(report[0]!.savedTo!);
      assert.deepEqual(saved, bytes.subarray(last, end).map((b, i) => (i === 3000 ? b ^ 0xff : b)), 'the whole damaged batch saved aside, zeros and all, not its end mark');
      assert.deepEqual((await store.read('t', 0, { offset: 0 })).map((m) => m.body.length), [100]);
    } finally {
      await store.close();
    }
  });

  // The mark is 16 bytes (store format 4): a cut can leave its last 1–15 bytes, the text whole
  // among them from 8 on, its commit start and check cut (nothing to confirm them by).
  for (const remnant of [1, 7, 8, 9, 15]) {
    it(`a write cut at a page boundary inside the end mark it was overwriting is a torn tail: the mark's last ${remnant} bytes after the cut are not damage`, async () => {
      // A first batch whose end mark straddles a page boundary, then a second batch written over
      // that mark, cut at the boundary: the second batch's first bytes, then the rest of the old mark.
      const size = (n: number): number => encodeBatch([{ key: 'k0', body: randomBytes(n) }]).batch.length;
      let n = 3900;
      while (size(n) % page !== page - (endMarkBytes - remnant)) n++;
      const first = size(n);
      const cut = Math.ceil(first / page) * page;
      assert.equal(first + endMarkBytes - cut, remnant, `the mark at ${first} straddles ${cut}`);
      const { image, log, starts, end } = await crashImage([n, 3000]);
      assert.deepEqual(starts, [0, first]);
      const fd = fs.openSync(log, 'r+');
      const stale = Buffer.alloc(end + endMarkBytes - cut);
      encodeEndMark(0).copy(stale, 0, cut - first);
      fs.writeSync(fd, stale, 0, stale.length, cut);
      fs.closeSync(fd);
      const { faults } = await verifyStore(image);
      assert.equal(faults.length, 1, JSON.stringify(faults));
      assert.match(faults[0]!.what, /torn|cut short/);
      const store = await openStore(image);
      try {
        assert.deepEqual(store.recoveryReport.map((f) => [f.kind, f.position, f.savedTo]), [['torn', first, undefined]]);
        assert.deepEqual((await store.read('t', 0, { offset: 0 })).map((m) => m.body.length), [n]);
      } finally {
        await store.close();
      }
    });
  }

  it('a sealed segment keeps its end mark: its damaged last batch ending in zeros is damage when the checkpoint is lost and open scans it; repair of a whole store changes nothing', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1, segmentBytes: 64 * 1024 });
    await appendEach(store, [100, Buffer.concat([randomBytes(6000), Buffer.alloc(8192)])]);
    for (let i = 0; segmentFiles(channelDir(dir)).length < 2; i++) await appendEach(store, [30_000]);
    await store.close();
    const sealed = segmentFiles(channelDir(dir))[0]!;
    const bytes = fs.readFileSync(sealed);
    const { starts, end } = batchLayout(bytes);
    assert.equal(bytes.length, end + endMarkBytes, 'sealed: its batches, then the end mark');
    assert.deepEqual((await verifyStore(dir)).faults, [], 'the checkpoint vouches for a file with the mark');
    const whole = tempDir();
    copyFolder(dir, whole);
    const repaired = await repairStore(whole);
    assert.deepEqual([repaired.dropped, repaired.changed], [[], []], 'repair of a whole store changes no segment');

    // The zero-ending batch is not the sealed segment's last one (30 KB batches followed it): make it so.
    const last = starts.find((p) => bytes.readUInt32LE(p + 28) > 14_000)!;
    const lastEnd = last + bytes.readUInt32LE(last + 28);
    const cut = Buffer.concat([bytes.subarray(0, lastEnd), Buffer.from('WaymEnd!', 'latin1')]);
    fs.writeFileSync(sealed, cut);
    fs.rmSync(path.join(channelDir(dir), 'checkpoint.json'));
    flipByte(sealed, last + 3000);
    assert.ok(cut.subarray(lastEnd - 8192, lastEnd).every((b) => b === 0));
    const { faults } = await verifyStore(dir);
    assert.ok(faults.some((f) => f.file === sealed && !/torn|cut short/.test(f.what)), JSON.stringify(faults));
    const reopened = await openStore(dir);
    try {
      const damage = reopened.recoveryReport.filter((f) => f.file === sealed);
      assert.deepEqual(damage.map((f) => [f.kind, f.position]), [['corrupt', last]]);
      assert.ok(damage[0]!.savedTo, 'saved aside, not taken for a torn tail');
    } finally {
      await reopened.close();
    }
  });

  it('a batch whose length fields were flipped alike (a consistent header claiming 64 KiB more) is damage, not a torn tail, with the end mark after the data: last or in the middle, it is reported and saved, and every sound batch is kept', async () => {
    // batchLength (header byte 28), recordsLength (56) and, the batch being stored as it is,
    // recordsLengthRaw (60) all +65536: the header still adds up, and the batch claims bytes
    // past the data. Before, that read as a write cut short:
    // the last batch vanished silently, and in the middle every batch after it went with it.
    for (const victim of [3, 1]) {
      const { image, log, starts, end } = await crashImage([100, 200, 300, 400]);
      const at = starts[victim]!;
      const batchEnd = victim + 1 < starts.length ? starts[victim + 1]! : end;
      const original = fs.readFileSync(log).subarray(at, batchEnd);
      flipByte(log, at + 30, 0x01);
      flipByte(log, at + 58, 0x01);
      flipByte(log, at + 62, 0x01);
      const { faults } = await verifyStore(image);
      assert.equal(faults.length, 1, JSON.stringify(faults));
      assert.equal(faults[0]!.position, at);
      assert.doesNotMatch(faults[0]!.what, /torn|cut short/, `batch ${victim}: verify calls it damage`);
      const store = await openStore(image);
      try {
        const report = store.recoveryReport;
        assert.deepEqual(report.map((f) => [f.kind, f.position, f.bytesDropped]), [['corrupt', at, batchEnd - at]], `batch ${victim}`);
        const saved = fs.readFileSync(report[0]!.savedTo!);
        assert.equal(saved.length, original.length, 'the damaged batch saved aside, without the end mark');
        const kept = (await store.read('t', 0, { offset: 0 })).map((m) => m.body.length);
        assert.deepEqual(kept, [100, 200, 300, 400].filter((_, i) => i !== victim), `batch ${victim}: every sound batch kept`);
      } finally {
        await store.close();
      }
    }
  });

});
