/**
 * The store under disk faults: real files, real failures, made with tricks that work as root
 * (a directory where a file must be written gives EISDIR; a non-empty directory where a file
 * must be unlinked makes the unlink fail). The store must stay consistent, say what failed,
 * and go on serving everything else.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { openStore, ErrorTable, type StoreFault } from '../engine/index';
import { verifyStore } from '../engine/inspect/index';
import { RawClient } from './broker-helpers';
import { bodyFor, rejection, removeTempDirs, rewriteCheckedJson, segmentFiles, tempDir } from './helpers';

after(removeTempDirs);

const bin = path.join(__dirname, '..', '..', 'bin', 'waymark.js');

/** Brokers a test started: killed after each test, even one that timed out waiting on it. */
const started = new Set<ChildProcess>();
afterEach(() => {
  for (const proc of started) if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  started.clear();
});

/** `waymark serve` in a child process, its stderr kept line by line. */
class Serve {
  readonly lines: string[] = [];
  http = '';
  private readonly waiters: Array<{ pattern: RegExp; resolve: (line: string) => void }> = [];
  readonly exited: Promise<number | null>;

  private constructor(readonly proc: ChildProcess) {
    readline.createInterface({ input: proc.stderr! }).on('line', (line) => {
      this.lines.push(line);
      for (const w of [...this.waiters]) {
        if (!w.pattern.test(line)) continue;
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(line);
      }
    });
    // 'close', not 'exit': by then every line it wrote to stderr has been read.
    this.exited = new Promise((resolve) => proc.once('close', (code) => resolve(code)));
  }

  static async start(data: string): Promise<Serve> {
    const serve = new Serve(spawn(process.execPath, [bin, 'serve', '--data', data, '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] }));
    started.add(serve.proc);
    const ready = serve.line(/serving ws:\/\/[^ ]+ and (http:\/\/\S+)/);
    const line = await Promise.race([ready, serve.exited.then((code) => Promise.reject(new Error(`serve exited with ${code}: ${serve.lines.join('\n')}`)))]);
    serve.http = /and (http:\/\/\S+)/.exec(line)![1]!;
    return serve;
  }

  /** The first stderr line (so far or to come) that matches. */
  line(pattern: RegExp): Promise<string> {
    const seen = this.lines.find((l) => pattern.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ pattern, resolve }));
  }

  async json(route: string, init: RequestInit = {}): Promise<{ status: number; body: any }> {
    const res = await fetch(`${this.http}${route}`, init);
    return { status: res.status, body: await res.json() };
  }

  async text(route: string): Promise<string> {
    return (await fetch(`${this.http}${route}`)).text();
  }

  /** SIGTERM; resolves with the exit code. */
  stop(): Promise<number | null> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM');
    return this.exited;
  }
}

/** A non-empty directory in place of `file`: unlinking it fails (EISDIR), as on a disk that refuses. */
function blockUnlink(file: string): void {
  fs.rmSync(file, { force: true });
  fs.mkdirSync(file);
  fs.writeFileSync(path.join(file, 'keep'), 'x');
}


/**
 * Turns a channel's checkpoint into what a crash leaves (clean false): an open that finds a
 * clean close's files as it left them writes no checkpoint, and these tests need one written.
 */
function saysNotClean(channelDir: string): void {
  rewriteCheckedJson<{ clean: boolean }>(path.join(channelDir, 'checkpoint.json'), (checkpoint) => {
    checkpoint.clean = false;
  });
}
describe('disk faults: retention', () => {
  it('a pass that cannot unlink a segment or write the checkpoint with its intent fails only that channel: said once per cause, counted, retried next pass', async () => {
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

      assert.ok((await store.applyRetention()) > 0, 'channel 1 is trimmed; the pass does not throw');
      assert.equal(store.describeTopic('t').channelInfo[1]!.segments, 1, 'the other channel is not held back');
      assert.deepEqual(store.describeTopic('t').channelInfo[0], before, 'channel 0 is as it was: its oldest segment stays whole');
      assert.equal((await store.read('t', 0, { offset: 0, maxMessages: 1 }))[0]!.body.equals(bodyFor('retention', 0, 1000)), true);
      await store.append('t', 0, [{ body: 'still appends' }]);
      assert.deepEqual(
        faults.map((f) => [f.kind, f.topic, f.channel, f.code]),
        [['retention', 't', 0, 'EISDIR']],
      );
      assert.match(faults[0]!.message, /^retention of topic t channel 0 failed: EISDIR.*tries again/);

      assert.equal(await store.applyRetention(), 0);
      assert.equal(faults.length, 1, 'the same cause is said once, not at every pass');
      assert.deepEqual(store.channelHealth(), [{ topic: 't', channel: 0, failed: null, retentionFailures: 2 }]);

      // The unlink works again, but the checkpoint with the removal's intent cannot be
      // written (EISDIR): nothing is removed, the segments stay whole and readable.
      fs.rmSync(oldest, { recursive: true });
      const temp = path.join(channelDir, 'checkpoint.json.tmp');
      fs.mkdirSync(temp);
      assert.equal(await store.applyRetention(), 0);
      assert.equal(store.describeTopic('t').channelInfo[0]!.logStartOffset, 0, 'nothing removed before its intent is on disk');
      assert.equal((await store.read('t', 0, { offset: 0, maxMessages: 1 }))[0]!.body.equals(bodyFor('retention', 0, 1000)), true);
      assert.equal(faults.length, 2, 'a new cause is said');
      assert.match(faults[1]!.message, /checkpoint\.json\.tmp/);
      assert.deepEqual(store.channelHealth(), [{ topic: 't', channel: 0, failed: null, retentionFailures: 3 }]);

      // The next pass writes its intent, removes, and writes the checkpoint without them.
      fs.rmdirSync(temp);
      assert.ok((await store.applyRetention()) > 0);
      const trimmed = store.describeTopic('t').channelInfo[0]!;
      assert.equal(trimmed.segments, 1);
      assert.ok(trimmed.logStartOffset > 0);
      const checkpoint = JSON.parse(fs.readFileSync(path.join(channelDir, 'checkpoint.json'), 'utf8')) as { removingBefore: number; segments: Array<{ baseOffset: number }> };
      assert.ok(checkpoint.segments.every((s) => s.baseOffset >= trimmed.logStartOffset), 'the checkpoint no longer lists the removed segments');
      assert.equal(checkpoint.removingBefore, 0);
      assert.equal(faults.length, 2);
      assert.deepEqual(store.channelHealth(), [{ topic: 't', channel: 0, failed: null, retentionFailures: 3 }], 'a pass that succeeds is not counted');
      await store.close();
      store = await openStore(dir, { segmentBytes: 4096 });
      assert.equal(store.describeTopic('t').channelInfo[0]!.logStartOffset, trimmed.logStartOffset);
    } finally {
      await store.close();
    }
  });
});

describe('disk faults: a compaction that meets a close', () => {
  // deleteSegmentsBefore (the __groups compaction) in sync mode "none" syncs the log first. A
  // close that began meanwhile writes its checkpoint through the thread pool; the compaction's
  // own checkpoint write then landed in the middle of it (the same temp file): close failed
  // with ENOENT on the rename and checkpoint.json listed segments that were gone.
  // (The compaction's sync was held until the close opened its checkpoint's temp file. Since
  // fdatasyncs of one descriptor run one at a time (Segment.syncData), the close's seal of
  // that log waits for the held sync, so it is let go as soon as the close has begun.)
  it('finds the channel closed once its fdatasync returns: STORE_CLOSED, and the close writes a sound checkpoint', async () => {
    const dir = tempDir();
    const store = await openStore(dir, { sync: 'none', segmentBytes: 4096 });
    await store.createTopic('g', { channels: 1 });
    for (let i = 0; i < 30; i++) await store.append('g', 0, [{ key: `k${i}`, body: bodyFor('compact', i, 400) + 'x'.repeat(300) }]);
    const mutable = require('node:fs') as { fdatasync: (fd: number, cb: (err: Error | null) => void) => void };
    const { fdatasync } = mutable;
    // The compaction syncs the active segment's log (the newest). Seals of the segments rolled
    // above may still be queued, each syncing its own log: held instead, the close (which
    // waits for them) never began and the test hung on a slow disk.
    const activeLog = fs.realpathSync(segmentFiles(path.join(dir, 'topics', 'g', '0')).at(-1)!);
    let releaseCompaction: (() => void) | null = null;
    const compactionWaits = new Promise<void>((resolve) => {
      mutable.fdatasync = (fd, cb) => {
        if (fs.readlinkSync(`/proc/self/fd/${fd}`) !== activeLog) return fdatasync(fd, cb);
        mutable.fdatasync = fdatasync; // only the compaction's first sync is held
        releaseCompaction = () => fdatasync(fd, cb);
        resolve();
      };
    });
    try {
      const compaction = store.deleteSegmentsBefore('g', 0, 25).then(
        () => null,
        (err: Error & { code?: string }) => err.code,
      );
      await compactionWaits;
      const closing = store.close(); // `closed` is set before its first wait
      releaseCompaction!();
      await closing;
      assert.equal(await compaction, 'STORE_CLOSED');
    } finally {
      mutable.fdatasync = fdatasync;
    }
    assert.deepEqual((await verifyStore(dir)).faults, []);
    const reopened = await openStore(dir);
    assert.equal(reopened.channelState('g', 0).highWatermark, 30);
    await reopened.close();
  });
});

describe('disk faults: opening', () => {
  it('a checkpoint that cannot be written at open does not keep the store closed: data reads, appends work, the failure is said, a later pass writes it', async () => {
    const dir = tempDir();
    let store = await openStore(dir);
    await store.createTopic('t', { channels: 2 });
    await store.append('t', 0, [{ body: 'acknowledged' }]);
    await store.close();
    saysNotClean(path.join(dir, 'topics', 't', '0')); // as a crash leaves it: open must write a checkpoint
    const temp = path.join(dir, 'topics', 't', '0', 'checkpoint.json.tmp');
    fs.mkdirSync(temp); // the checkpoint write at open fails for real (EISDIR), as on a full disk (ENOSPC)
    const faults: StoreFault[] = [];
    store = await openStore(dir, { onFault: (f) => faults.push(f) });
    try {
      assert.deepEqual(
        faults.map((f) => [f.kind, f.topic, f.channel, f.code]),
        [['checkpoint', 't', 0, 'EISDIR']],
      );
      assert.match(faults[0]!.message, /^topic t channel 0 opened, but its checkpoint could not be written: EISDIR/);
      assert.equal((await store.read('t', 0))[0]!.body.toString(), 'acknowledged');
      assert.equal((await store.append('t', 0, [{ body: 'after' }])).baseOffset, 1);
      await store.applyRetention();
      assert.equal(faults.length, 1, 'a retry that fails alike is not said again');
      fs.rmdirSync(temp);
      await store.applyRetention();
      const checkpoint = JSON.parse(fs.readFileSync(path.join(dir, 'topics', 't', '0', 'checkpoint.json'), 'utf8')) as { clean: boolean };
      assert.equal(checkpoint.clean, false, 'the owed checkpoint was written: it no longer says clean');
    } finally {
      await store.close();
    }
    store = await openStore(dir);
    assert.deepEqual((await store.read('t', 0)).map((m) => m.body.toString()), ['acknowledged', 'after']);
    await store.close();
  });

  it('waymark serve starts on a store whose checkpoint cannot be written, says so on stderr, and serves what was acknowledged', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('t', { channels: 1 });
    await store.append('t', 0, [{ body: 'acknowledged' }]);
    await store.close();
    saysNotClean(path.join(dir, 'topics', 't', '0'));
    const temp = path.join(dir, 'topics', 't', '0', 'checkpoint.json.tmp');
    fs.mkdirSync(temp);
    const serve = await Serve.start(dir);
    try {
      await serve.line(/^waymark: topic t channel 0 opened, but its checkpoint could not be written: EISDIR/);
      const read = await serve.json('/v1/topics/t/messages?channel=0&offset=0');
      assert.equal(read.status, 200);
      assert.equal(read.body.messages[0].body, 'acknowledged');
      fs.rmdirSync(temp); // so that the close can write its clean checkpoint
    } finally {
      assert.equal(await serve.stop(), 0);
    }
  });
});

describe('disk faults: deleting a topic', () => {
  /** What would make closing `topic`'s channels write fail: the active .oix of channel 0 and the checkpoint of channel 1 are directories. */
  function blockCloseWrites(dir: string, topic: string): void {
    fs.mkdirSync(path.join(dir, 'topics', topic, '0', '00000000000000000000.oix'));
    fs.mkdirSync(path.join(dir, 'topics', topic, '1', 'checkpoint.json.tmp'));
  }

  it('writes nothing of the files it removes: a delete that could not seal indexes or checkpoints (a full disk) leaves the topic wholly gone, its name free', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    try {
      await store.createTopic('gone', { channels: 2 });
      await store.createTopic('kept', { channels: 1 });
      for (const c of [0, 1]) await store.append('gone', c, [{ body: `in ${c}` }]);
      let ended = 0;
      store.watch('gone', 0, () => ended++);
      blockCloseWrites(dir, 'gone');
      await store.deleteTopic('gone'); // rejected with EISDIR before, the folder left behind
      assert.deepEqual(store.listTopics().map((t) => t.name), ['kept']);
      assert.deepEqual(fs.readdirSync(path.join(dir, 'topics')).sort(), ['kept'], 'no folder left: its space is freed');
      assert.equal(ended, 1, 'a watcher learns the channel is gone');
      assert.equal((await rejection(store.read('gone', 0))).code, 'TOPIC_NOT_FOUND');
      await store.createTopic('gone', { channels: 1 });
      assert.equal(store.channelState('gone', 0).highWatermark, 0, 'a new topic of the name starts empty');
      await store.append('kept', 0, [{ body: 'the rest goes on' }]);
    } finally {
      await store.close();
    }
  });

  it('over HTTP: DELETE answers 200, then GET and DELETE say TOPIC_NOT_FOUND and PUT makes it again', async () => {
    const dir = tempDir();
    const serve = await Serve.start(dir);
    try {
      assert.equal((await serve.json('/v1/topics/gone', { method: 'PUT', body: JSON.stringify({ channels: 2 }) })).status, 201);
      for (const c of [0, 1]) assert.equal((await serve.json('/v1/topics/gone/messages', { method: 'POST', headers: { 'waymark-channel': String(c) }, body: 'x' })).status, 200);
      blockCloseWrites(dir, 'gone');
      const deleted = await serve.json('/v1/topics/gone', { method: 'DELETE' });
      assert.deepEqual([deleted.status, deleted.body], [200, { deleted: 'gone' }]); // 500 INTERNAL before
      assert.equal((await serve.json('/v1/topics/gone')).body.error.code, 'TOPIC_NOT_FOUND');
      assert.equal((await serve.json('/v1/topics/gone', { method: 'DELETE' })).body.error.code, 'TOPIC_NOT_FOUND');
      assert.equal((await serve.json('/v1/topics/gone', { method: 'PUT', body: JSON.stringify({ channels: 1 }) })).status, 201);
    } finally {
      assert.equal(await serve.stop(), 0);
    }
  });
});

describe('disk faults: a failed channel is visible', () => {
  it('turning failed is said on stderr once, counted in /metrics and listed by /healthz; for __groups too, where every group commit fails', async () => {
    const dir = tempDir();
    const store = await openStore(dir);
    await store.createTopic('small', { channels: 2, segmentBytes: 4096 });
    await store.createTopic('__groups', { channels: 1, owner: 'waymark', segmentBytes: 4096 }, { system: true }); // the broker keeps it as it finds it
    await store.close();
    // The checkpoint written once a rolled segment is sealed cannot be (EISDIR): the channel fails at its first roll.
    for (const channel of ['small/0', '__groups/0']) fs.mkdirSync(path.join(dir, 'topics', channel, 'checkpoint.json.tmp'));
    const serve = await Serve.start(dir);
    const client = await RawClient.open(serve.http.replace('http:', 'ws:') + '/v1/ws');
    try {
      assert.deepEqual((await serve.json('/healthz')).body, { status: 'ok' });
      const produce = (channel: number): Promise<{ status: number; body: any }> =>
        serve.json('/v1/topics/small/messages', { method: 'POST', headers: { 'waymark-channel': String(channel) }, body: randomBytes(1000) });
      const commit = (): Promise<{ error?: { code?: number } | null }> => client.request({ commit: { topic: 'small', group: 'g', positions: [{ channel: 1, offset: 0 }] } }) as Promise<{ error?: { code?: number } | null }>;
      // Past 4096 bytes a roll; its checkpoint, written once the old segment is sealed in the background, fails the channel.
      let refused: { status: number; body: any } | null = null;
      for (let i = 0; i < 200 && !refused; i++) {
        const r = await produce(0);
        if (r.status !== 200) refused = r;
      }
      assert.deepEqual([refused?.status, refused?.body.error.code], [503, 'STORAGE_FAILED']);
      let commitRefused: number | undefined;
      for (let i = 0; i < 500 && commitRefused === undefined; i++) commitRefused = (await commit()).error?.code ?? undefined; // ~130 bytes each
      assert.equal(commitRefused, ErrorTable.STORAGE_FAILED.wire);
      assert.equal((await produce(1)).status, 200, 'the other channel goes on');

      const health = await serve.json('/healthz');
      assert.equal(health.status, 200);
      assert.equal(health.body.status, 'degraded');
      const listed = (health.body.failedChannels as Array<{ topic: string; channel: number; error: string }>).sort((a, b) => a.topic.localeCompare(b.topic));
      assert.deepEqual(listed.map((f) => [f.topic, f.channel]), [['__groups', 0], ['small', 0]]);
      for (const f of listed) assert.match(f.error, /EISDIR/);
      const metrics = await serve.text('/metrics');
      assert.match(metrics, /^waymark_failed_channels 2$/m);
      assert.match(metrics, /^waymark_channel_failed\{topic="small",channel="0"\} 1$/m);
      assert.match(metrics, /^waymark_channel_failed\{topic="__groups",channel="0"\} 1$/m);
      // Written before the refusals were answered; read from the pipe by now or soon.
      await serve.line(/^waymark: topic small channel 0 failed: .*EISDIR.*; it refuses appends until the broker restarts/);
      await serve.line(/^waymark: topic __groups channel 0 failed: .*EISDIR.*; until then no consumer group of any topic can commit its positions$/);
      assert.equal(serve.lines.filter((l) => /^waymark: topic \S+ channel 0 failed: /.test(l)).length, 2, 'each said once, not at every refused append');
    } finally {
      await client.close();
      assert.equal(await serve.stop(), 0);
    }
  });
});

describe('disk faults: smaller ones', () => {
  const engine = path.join(__dirname, '..', 'engine', 'index.js');

  /** Runs `script` (with `engine` and `dir` defined) in a child node under `ulimit -n 128`; returns what it printed as JSON. */
  function underFdLimit(dir: string, script: string): any {
    return underUlimit('-n 128', dir, script);
  }

  /** Runs `script` in a node child under `ulimit <limit>` (bash), with engine, dir and fs in scope; returns its one JSON line. */
  function underUlimit(limit: string, dir: string, script: string): any {
    const run = spawnSync('bash', ['-c', `ulimit ${limit} && exec "${process.execPath}" -e "$SCRIPT"`], {
      env: { ...process.env, SCRIPT: `const engine = require(${JSON.stringify(engine)}); const dir = ${JSON.stringify(dir)}; const fs = require('fs');\n${script}` },
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, run.stderr);
    return JSON.parse(run.stdout);
  }

  /** Opens descriptors until none is left (EMFILE); returns the way to give them back. */
  const exhaust = `function exhaust() {
    const spare = [];
    try { for (;;) spare.push(fs.openSync('/dev/null', 'r')); } catch (e) { if (e.code !== 'EMFILE') throw e; }
    return () => { for (const fd of spare) fs.closeSync(fd); };
  }`;

  it('a roll that runs out of file descriptors fails the channel with the "raise ulimit -n" hint', () => {
    const out = underFdLimit(
      tempDir(),
      `${exhaust}
      (async () => {
        const store = await engine.openStore(dir, { onFault: () => {} });
        await store.createTopic('small', { channels: 1, segmentBytes: 4096 });
        await store.append('small', 0, [{ body: require('crypto').randomBytes(3000) }]);
        const giveBack = exhaust();
        const err = await store.append('small', 0, [{ body: require('crypto').randomBytes(3000) }]).then(() => null, (e) => e); // rolls: a new file
        giveBack();
        await store.close();
        console.log(JSON.stringify({ code: err && err.code, message: err && err.message }));
      })();`,
    );
    assert.equal(out.code, 'STORAGE_FAILED');
    assert.match(out.message, /too many open files \(EMFILE\); every segment file is kept open: raise the limit \(ulimit -n\) or use fewer channels; it refuses appends until reopened$/);
  });

  // Open and close write many channels' files at once; each holds a descriptor meanwhile. A
  // store that fits its limit with the few to spare that one channel at a time needs must not
  // fail for them: an EMFILE there waits for the others and tries again alone.
  it('open and close need no more spare file descriptors than one channel at a time did (EMFILE is retried alone)', () => {
    const out = underFdLimit(
      tempDir(),
      `(async () => {
        let store = await engine.openStore(dir);
        for (const name of ['a', 'b', 'c', 'd']) {
          await store.createTopic(name, { channels: 16 });
          for (let c = 0; c < 16; c++) await store.append(name, c, [{ body: name + c }]);
        }
        await store.close();
        const held = [];
        try { for (;;) held.push(fs.openSync('/dev/null', 'r')); } catch (e) { if (e.code !== 'EMFILE') throw e; }
        // Free for 64 segment files, the lock, and three to spare (one channel at a time needed one).
        for (const fd of held.splice(0, 64 + 1 + 3)) fs.closeSync(fd);
        const faults = [];
        let failure = null;
        try {
          store = await engine.openStore(dir, { onFault: (f) => faults.push(f.message) });
          await store.append('d', 15, [{ body: 'more' }]);
          await store.close();
        } catch (err) {
          failure = err.message;
        }
        for (const fd of held) fs.closeSync(fd);
        store = await engine.openStore(dir);
        const bodies = (await store.read('d', 15)).map((m) => m.body.toString());
        await store.close();
        const checkpoint = JSON.parse(fs.readFileSync(require('path').join(dir, 'topics', 'a', '0', 'checkpoint.json'), 'utf8'));
        console.log(JSON.stringify({ failure, faults, bodies, clean: checkpoint.clean }));
      })();`,
    );
    assert.deepEqual(out, { failure: null, faults: [], bodies: ['d15', 'more'], clean: true });
  });

  it('a topic create that cannot write its files fails with STORAGE_FAILED and leaves no .creating-… folder', () => {
    const dir = tempDir();
    const out = underFdLimit(
      dir,
      `${exhaust}
      (async () => {
        const store = await engine.openStore(dir);
        const giveBack = exhaust();
        const err = await store.createTopic('fresh', { channels: 1 }).then(() => null, (e) => e); // its topic.json cannot be written
        giveBack();
        const left = fs.readdirSync(require('path').join(dir, 'topics'));
        const again = await store.createTopic('fresh', { channels: 1 }).then(() => 'created', (e) => e.code);
        await store.close();
        console.log(JSON.stringify({ code: err && err.code, message: err && err.message, left, again }));
      })();`,
    );
    assert.equal(out.code, 'STORAGE_FAILED'); // a bare EMFILE before (INTERNAL over HTTP)
    assert.match(out.message, /^creating topic fresh: too many open files \(EMFILE\)/);
    assert.deepEqual(out.left, [], 'no .creating-fresh left until the next start');
    assert.equal(out.again, 'created');
  });

  // helper-31: one writeSync wrote what fitted, and the short file was renamed into place:
  // The zeroed tail writes up to 1 MiB ahead of the data: where that does not fit, the data
  // alone must still be written (a file size limit stands in for a nearly full disk).
  it('an append that fits but whose zeros ahead do not is written without them (ENOSPC, EFBIG): acknowledged, read back, the file cut back at close', () => {
    const dir = tempDir();
    const out = underUlimit(
      '-f 256',
      dir,
      `(async () => {
        const store = await engine.openStore(dir);
        await store.createTopic('t', { channels: 1 });
        const offsets = [];
        for (let i = 0; i < 20; i++) offsets.push((await store.append('t', 0, [{ body: 'm' + i }])).baseOffset);
        const log = require('path').join(dir, 'topics', 't', '0', '00000000000000000000.log');
        const whileOpen = fs.statSync(log).size;
        await store.close();
        const again = await engine.openStore(dir);
        const bodies = (await again.read('t', 0, { offset: 0, maxMessages: 100 })).map((m) => m.body.toString());
        const report = again.recoveryReport.length;
        await again.close();
        console.log(JSON.stringify({ offsets, bodies, report, whileOpen, closed: fs.statSync(log).size }));
      })();`,
    );
    assert.deepEqual(out.offsets, Array.from({ length: 20 }, (_, i) => i), JSON.stringify(out));
    assert.deepEqual(out.bodies, Array.from({ length: 20 }, (_, i) => `m${i}`));
    assert.equal(out.report, 0);
    assert.ok(out.whileOpen <= 256 * 1024, 'no zeros past the limit');
    assert.ok(out.closed < 4096, `the file holds the batches only (${out.closed} bytes)`);
  });

  // createTopic succeeded and the next open left the topic closed (its topic.json cut off).
  // A file size limit (ulimit -f, in KiB; Node ignores SIGXFSZ) makes the write short, as a full disk does.
  it('a topic.json that can be written only in part fails the create with STORAGE_FAILED; nothing is renamed into place', () => {
    const dir = tempDir();
    const out = underUlimit(
      '-f 1',
      dir,
      `(async () => {
        const store = await engine.openStore(dir);
        const err = await store.createTopic('big', { channels: 1, owner: 'o'.repeat(1000) }).then(() => null, (e) => e);
        const small = await store.createTopic('small', { channels: 1 }).then(() => 'created', (e) => e.code);
        await store.close();
        const again = await engine.openStore(dir);
        const topics = again.listTopics().map((t) => t.name);
        const report = again.recoveryReport.length;
        await again.close();
        console.log(JSON.stringify({ code: err && err.code, message: err && err.message, small, topics, report, left: fs.readdirSync(require('path').join(dir, 'topics')) }));
      })();`,
    );
    assert.equal(out.code, 'STORAGE_FAILED', JSON.stringify(out));
    assert.match(out.message, /^creating topic big: /);
    assert.equal(out.small, 'created');
    assert.deepEqual(out.topics, ['small']);
    assert.equal(out.report, 0, 'no topic left closed with a cut-off topic.json');
    assert.deepEqual(out.left, ['small']);
  });

  it('serve exits 1 with one line when closing the store fails on SIGTERM, and the next start has every message', async () => {
    const dir = tempDir();
    let serve = await Serve.start(dir);
    assert.equal((await serve.json('/v1/topics/t', { method: 'PUT', body: JSON.stringify({ channels: 1 }) })).status, 201);
    assert.equal((await serve.json('/v1/topics/t/messages', { method: 'POST', body: 'kept' })).status, 200);
    const temp = path.join(dir, 'topics', 't', '0', 'checkpoint.json.tmp');
    fs.mkdirSync(temp); // the clean checkpoint written at close fails (EISDIR), as on a full disk
    assert.equal(await serve.stop(), 1); // 0 before, and nothing said
    assert.match(serve.lines.at(-1)!, /^waymark: serve: closing the store failed: closing topic t channel 0: EISDIR.*checkpoint\.json\.tmp.*; the next start scans what it could not record$/);
    fs.rmdirSync(temp);
    serve = await Serve.start(dir);
    assert.deepEqual((await serve.json('/v1/topics/t/messages?channel=0')).body.messages.map((m: { body: string }) => m.body), ['kept']);
    assert.equal(await serve.stop(), 0);
  });

  // Node's recursive mkdir reports a parent it could not make as the child: EROFS as "ENOENT
  // … mkdir <data>/topics" (a read-only mount), EACCES on <data>/topics. Root can make folders
  // anywhere, so the child gives root up: a real EACCES.
  it('a data folder that cannot be made names the folder and the cause, not <data>/topics', () => {
    const dir = tempDir();
    fs.chmodSync(dir, 0o755);
    const locked = path.join(dir, 'locked');
    fs.mkdirSync(locked);
    fs.chmodSync(locked, 0o555); // no new folder in it, but for root: the child gives root up
    const data = path.join(locked, 'new', 'data');
    const script = `
      const engine = require(${JSON.stringify(engine)});
      require(${JSON.stringify(path.join(__dirname, '..', 'engine', 'format', 'checksum.js'))}).loadChecksum().then(() => {
        if (process.getuid() === 0) { process.setgid(65534); process.setuid(65534); }
        return engine.openStore(${JSON.stringify(data)});
      }).then(() => console.log(JSON.stringify({ opened: true })), (e) => console.log(JSON.stringify({ code: e.code, message: e.message })));`;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const out = JSON.parse(run.stdout) as { code?: string; message?: string };
    assert.equal(out.code, 'EACCES');
    assert.equal(out.message, `EACCES: permission denied, mkdir '${path.join(locked, 'new')}'`); // named <data>/topics before
  });
});
