/**
 * Regression tests for inputs a black-box review found mishandled: commits past a channel's
 * end, committed positions that fell outside their channel, `waymark consume` when the broker
 * goes away or a signal stops it, `waymark produce` with an oversized stdin line, non-ASCII
 * HTTP header values, and a few small HTTP/CLI edges.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { openStore } from '../engine/index';
import { loadChecksum } from '../engine/format/index';
import { Broker } from '../server/broker';
import { GroupPositions } from '../server/groups';
import type { Frame } from '../protocol/frames';
import { channelForKey, connect, ErrorTable } from '../sdk/index';
import { InOrderAcks } from '../tools/produce';
import { WaymarkError } from '../sdk/index';
import { BrokerProcess, RawClient, httpJson, take, text } from './broker-helpers';
import { copyFolder, logEnd, removeTempDirs, segmentFiles, tempDir, truncateTail } from './helpers';

after(removeTempDirs);

const cli = path.join(__dirname, '..', '..', 'bin', 'waymark.js');

interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `waymark ARGS` to its end, with `input` on stdin. */
function run(args: string[], input: string | Buffer = ''): Promise<Ran> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [cli, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (stdout += d));
    proc.stderr.on('data', (d: Buffer) => (stderr += d));
    proc.stdin.on('error', () => undefined); // the command may exit before reading all of it
    proc.stdin.end(input);
    proc.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** A running `waymark` command whose stdout lines can be waited for. */
class Running {
  readonly proc: ChildProcessWithoutNullStreams;
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  private waiter: { count: number; resolve: () => void } | null = null;

  /** With `keepStdin` the caller writes stdin (and ends it); else it is empty. */
  constructor(args: string[], keepStdin = false) {
    this.proc = spawn(process.execPath, [cli, ...args]);
    if (!keepStdin) this.proc.stdin.end();
    this.proc.stdout.on('data', (d: Buffer) => {
      this.stdout += d;
      if (this.waiter && this.lines().length >= this.waiter.count) this.waiter.resolve();
    });
    this.proc.stderr.on('data', (d: Buffer) => (this.stderr += d));
    this.exited = new Promise((resolve) => this.proc.on('close', (status) => resolve(status)));
  }

  lines(): string[] {
    return this.stdout.split('\n').filter((l) => l !== '');
  }

  /** Resolves once `count` lines are printed (fails if the command exits first). */
  linesPrinted(count: number): Promise<void> {
    if (this.lines().length >= count) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.waiter = { count, resolve };
      void this.exited.then((status) => reject(new Error(`exited ${status} after ${this.lines().length} lines: ${this.stderr}`)));
    });
  }
}

/** A reply frame, said in an assertion message. */
const shown = (frame: Frame): string => (frame.error ? `${frame.error.name}: ${frame.error.message}` : Object.keys(frame).join(','));

/** One line on stderr and no stack trace. */
function assertOneLine(stderr: string): void {
  assert.equal(stderr.split('\n').length, 2, `one line and its newline: ${JSON.stringify(stderr.slice(0, 500))}`);
  assert.doesNotMatch(stderr, /\n\s+at /);
}

/** An HTTP request written byte by byte on a socket: header values exactly as given (fetch refuses non-latin1 ones). */
function rawHttp(port: number, method: string, target: string, headers: Array<[string, Buffer | string]>, body = ''): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const parts: Buffer[] = [Buffer.from(`${method} ${target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n`)];
    for (const [name, value] of headers) parts.push(Buffer.from(`${name}: `), Buffer.from(value), Buffer.from('\r\n'));
    parts.push(Buffer.from('\r\n'), Buffer.from(body));
    socket.write(Buffer.concat(parts)); // not end(): µWS takes a half-close for an aborted request and never answers
    const chunks: Buffer[] = [];
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', reject);
    socket.on('close', () => {
      const response = Buffer.concat(chunks).toString('utf8');
      const status = Number(/^HTTP\/1\.1 (\d+)/.exec(response)?.[1]);
      resolve({ status, body: JSON.parse(response.slice(response.indexOf('\r\n\r\n') + 4)) });
    });
  });
}

async function post(broker: BrokerProcess, topic: string, body: string): Promise<void> {
  const r = await httpJson(`${broker.http}/v1/topics/${topic}/messages`, { method: 'POST', body });
  assert.equal(r.status, 200, JSON.stringify(r.body));
}

const highWatermark = async (broker: BrokerProcess, topic: string, channel = 0): Promise<number> =>
  (await httpJson(`${broker.http}/v1/topics/${topic}`)).body.channelStates[channel].highWatermark;

/** A broker child process started before the suite's tests and stopped after them. */
function brokerForSuite(): BrokerProcess {
  const broker = new BrokerProcess(tempDir());
  before(async () => {
    await loadChecksum();
    await broker.start();
  });
  after(() => broker.stop());
  return broker;
}

describe('input fixes: group positions outside their channel', function () {
  this.timeout(120_000);
  const broker = brokerForSuite();

  it('CommitPastHighWatermarkIsRefused: OFFSET_OUT_OF_RANGE, nothing of the request stored, and the group still consumes', async () => {
    await httpJson(`${broker.http}/v1/topics/orders`, { method: 'PUT', body: JSON.stringify({ channels: 2 }) });
    for (const body of ['a', 'b']) {
      const r = await httpJson(`${broker.http}/v1/topics/orders/messages`, { method: 'POST', body, headers: { 'waymark-channel': '0' } });
      assert.equal(r.status, 200);
    }
    const raw = await RawClient.open(broker.url);
    try {
      const past = await raw.request({ commit: { topic: 'orders', group: 'cg9', positions: [{ channel: 0, offset: 999999 }] } });
      assert.equal(past.error?.name, 'OFFSET_OUT_OF_RANGE', shown(past));
      // One good position beside a bad one: neither is stored.
      const mixed = await raw.request({ commit: { topic: 'orders', group: 'cg9', positions: [{ channel: 0, offset: 1 }, { channel: 1, offset: 1 }] } });
      assert.equal(mixed.error?.name, 'OFFSET_OUT_OF_RANGE');
      const stored = await raw.request({ getPositions: { topic: 'orders', group: 'cg9' } });
      assert.deepEqual(stored.positions?.positions ?? [], []);
      // The end itself is a position (everything consumed).
      const atEnd = await raw.request({ commit: { topic: 'orders', group: 'cg-end', positions: [{ channel: 0, offset: 2 }] } });
      assert.ok(atEnd.ok && !atEnd.error, shown(atEnd));
    } finally {
      await raw.close();
    }
    const consumed = await run(['consume', '--topic', 'orders', '--group', 'cg9', '--max', '2', '--url', broker.url]);
    assert.equal(consumed.status, 0, consumed.stderr);
    assert.equal(consumed.stdout, '0 0 - a\n0 1 - b\n');
  });

  it('a committed position past the end after recovery cut the log back starts at the fallback: SDK (latest) and CLI (earliest)', async () => {
    // A crash image: three one-message batches, the group committed after all three, then
    // the last batch torn at the end of the active segment (recovery drops it: the end is 2).
    const live = tempDir();
    const store = await openStore(live);
    await store.createTopic('cut', { channels: 1 });
    const segment = (dir: string): string => segmentFiles(path.join(dir, 'topics', 'cut', '0'))[0]!;
    const starts: number[] = [];
    for (const body of ['m0', 'm1', 'm2']) {
      starts.push(logEnd(segment(live)));
      await store.append('cut', 0, [{ body }]);
    }
    const groups = await GroupPositions.open(store);
    await groups.loaded();
    for (const group of ['cg', 'cg-sdk']) await groups.commit('cut', group, [{ channel: 0, offset: 3, timestamp: 0 }]);
    const image = tempDir();
    copyFolder(live, image);
    await store.close();
    truncateTail(segment(image), starts[2]! + 10);

    const crashed = new BrokerProcess(image);
    await crashed.start();
    const client = await connect(crashed.url);
    try {
      assert.equal(await highWatermark(crashed, 'cut'), 2, 'recovery dropped the torn batch');
      assert.deepEqual((await client.admin.positions('cut', 'cg')).map((p) => p.offset), [3], 'the group still points past the end');
      const raw = await RawClient.open(crashed.url);
      const subscribed = await raw.request({ subscribe: { topic: 'cut', group: 'cg', start: 'committed', fallback: 'earliest', subscription: 1, creditMessages: 10, creditBytes: 1 << 20 } });
      assert.deepEqual(subscribed.subscribeOk?.positions?.map((p) => p.offset), [0], shown(subscribed));
      await raw.close();

      // While the end is still 2 (a message at offset 3 would make the position valid again).
      const consumed = await run(['consume', '--topic', 'cut', '--group', 'cg', '--max', '2', '--url', crashed.url]);
      assert.equal(consumed.status, 0, consumed.stderr);
      assert.equal(consumed.stdout, '0 0 - m0\n0 1 - m1\n', 'the CLI falls back to earliest');

      const latest = await client.consumer({ topic: 'cut', group: 'cg-sdk', fallback: 'latest', autoCommitIntervalMs: 0 });
      await post(crashed, 'cut', 'after');
      const [first] = await take(latest, 1);
      assert.deepEqual([first!.offset, text(first!)], [2, 'after'], 'fallback latest: only what came after the subscribe');
      await latest.close();
    } finally {
      client.close();
      await crashed.stop();
    }
  });
});

describe('input fixes: start positions (in process)', () => {
  it('a committed position below the log start (retention) or past the end goes to the fallback, earliest or latest', async () => {
    const store = await openStore(tempDir());
    try {
      await store.createTopic('kept', { channels: 1, segmentBytes: 4096 });
      while (store.describeTopic('kept').channelInfo[0]!.segments < 4) await store.append('kept', 0, [{ body: 'x'.repeat(500) }]);
      const broker = await Broker.open(store);
      await broker.groups.loaded();
      await broker.groups.commit('kept', 'behind', [{ channel: 0, offset: 1, timestamp: 0 }]);
      const { highWatermark: end } = store.channelState('kept', 0);
      await broker.groups.commit('kept', 'inside', [{ channel: 0, offset: end - 1, timestamp: 0 }]);
      // What recovery can leave behind: a stored position the log no longer reaches. (Positions
      // are written through GroupPositions, which stores them as given; Broker.commit is what
      // refuses one past the end.)
      await broker.groups.commit('kept', 'ahead', [{ channel: 0, offset: end + 5, timestamp: 0 }]);
      await store.deleteSegmentsBefore('kept', 0, end - 1);
      const { logStartOffset: start } = store.channelState('kept', 0);
      assert.ok(start > 1, `retention moved the start past the committed position (start ${start})`);

      const startOf = async (group: string, fallback: 'earliest' | 'latest'): Promise<number> =>
        (await broker.startPositions({ topic: 'kept', group, channels: [0], start: 'committed', fallback, positions: [], startTimestamp: 0 })).positions.get(0)!;
      assert.equal(await startOf('behind', 'earliest'), start);
      assert.equal(await startOf('behind', 'latest'), end);
      assert.equal(await startOf('ahead', 'earliest'), start);
      assert.equal(await startOf('ahead', 'latest'), end);
      assert.equal(await startOf('inside', 'latest'), end - 1, 'a position inside the channel is used as it is');
    } finally {
      await store.close();
    }
  });
});

describe('input fixes: waymark consume stops', function () {
  this.timeout(120_000);

  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    it(`exits 1 with one line when the broker goes away (${signal}), not 0 in silence`, async () => {
      const broker = new BrokerProcess(tempDir());
      await broker.start();
      try {
        await httpJson(`${broker.http}/v1/topics/orders`, { method: 'PUT', body: '{}' });
        await post(broker, 'orders', 'hello');
        const consume = new Running(['consume', '--topic', 'orders', '--group', 'idle3', '--url', broker.url]);
        await consume.linesPrinted(1); // subscribed, and waiting for more
        await broker.stop(signal);
        assert.equal(await consume.exited, 1, consume.stderr);
        assertOneLine(consume.stderr);
        assert.match(consume.stderr, /^waymark: consume: lost the connection to ws:\/\/127\.0\.0\.1:\d+\/v1\/ws/);
        assert.equal(consume.stdout, '0 0 - hello\n');
      } finally {
        await broker.stop();
      }
    });
  }

  it('SIGINT while messages keep coming: exit 0, and the group committed exactly what was printed', async () => {
    const broker = new BrokerProcess(tempDir());
    await broker.start();
    const client = await connect(broker.url);
    let producing = true;
    let producer: Awaited<ReturnType<typeof client.producer>> | null = null;
    let flow: Promise<void> = Promise.resolve();
    try {
      await client.admin.createTopic('flow', { channels: 1 });
      producer = await client.producer({ topic: 'flow' });
      const p = producer;
      flow = (async () => {
        for (let i = 0; producing; i++) await p.send({ body: `m${i}` }); // a push for the consumer about every round trip
      })();
      const consume = new Running(['consume', '--topic', 'flow', '--group', 'sig', '--from', 'earliest', '--url', broker.url]);
      await consume.linesPrinted(200);
      consume.proc.kill('SIGINT');
      assert.equal(await consume.exited, 0, consume.stderr);
      assert.equal(consume.stderr, '');
      const printed = consume.lines().map((l) => Number(l.split(' ')[1]));
      assert.deepEqual(printed, printed.map((_, i) => i), 'every offset once, in order');
      const [position] = await client.admin.positions('flow', 'sig');
      assert.equal(position?.offset, printed.length, 'the commit at exit covers the last message printed, and nothing after it');
      producing = false;
      await flow;
      const next = await run(['consume', '--topic', 'flow', '--group', 'sig', '--max', '1', '--url', broker.url]);
      assert.equal(next.status, 0, next.stderr);
      assert.match(next.stdout, new RegExp(`^0 ${printed.length} - m${printed.length}\\n$`), 'the next run starts right after');
    } finally {
      producing = false;
      await flow.catch(() => undefined);
      await producer?.close();
      client.close();
      await broker.stop();
    }
  });
});

describe('input fixes: waymark produce with an oversized stdin line', function () {
  this.timeout(120_000);
  const broker = new BrokerProcess(tempDir());
  const huge = 'a'.repeat(9_000_000);
  before(async () => {
    await loadChecksum();
    await broker.start();
    for (const topic of ['t1', 't2', 't3']) await httpJson(`${broker.http}/v1/topics/${topic}`, { method: 'PUT', body: '{}' });
  });
  after(() => broker.stop());

  it('a too-large line ending in a newline: one line, exit 2, nothing sent (it was an unhandled rejection and a stack)', async () => {
    const r = await run(['produce', '--topic', 't1', '--url', broker.url], `${huge}\n`);
    assert.equal(r.status, 2, r.stderr.slice(0, 500));
    assertOneLine(r.stderr);
    assert.equal(r.stderr, 'waymark: produce: line 1: body is 9000000 bytes, the limit is 8388608; nothing was sent\n');
    assert.equal(r.stdout, '');
    assert.equal(await highWatermark(broker, 't1'), 0);
  });

  it('without the newline: the same', async () => {
    const r = await run(['produce', '--topic', 't2', '--url', broker.url], huge);
    assert.equal(r.status, 2);
    assert.equal(r.stderr, 'waymark: produce: line 1: body is 9000000 bytes, the limit is 8388608; nothing was sent\n');
    assert.equal(await highWatermark(broker, 't2'), 0);
  });

  it('first, a too-large line, last: first is sent and printed, the run stops at line 2, last is never sent', async () => {
    const r = await run(['produce', '--topic', 't3', '--url', broker.url], `first\n${huge}\nlast\n`);
    assert.equal(r.status, 2, r.stderr.slice(0, 500));
    assert.equal(r.stderr, 'waymark: produce: line 2: body is 9000000 bytes, the limit is 8388608; the line before it was sent, none after it\n');
    assert.match(r.stdout, /^0 0 [0-9a-f]{32}\n$/, 'the acknowledgement of the first line');
    const read = await httpJson(`${broker.http}/v1/topics/t3/messages`);
    assert.deepEqual(read.body.messages.map((m: { body: string }) => m.body), ['first']);
  });
});

describe('input fixes: waymark produce prints acknowledgements up to the first failure', function () {
  this.timeout(120_000);
  const broker = brokerForSuite();

  it('an acknowledgement that comes after an earlier line failed is not printed, and the error names the line to resend from', async () => {
    const printed: number[] = [];
    const acks = new InOrderAcks<number>((n) => printed.push(n), 'line');
    const gates = [0, 1, 2, 3].map(() => {
      let open!: (n: number) => void;
      let fail!: (err: unknown) => void;
      const promise = new Promise<number>((resolve, reject) => ((open = resolve), (fail = reject)));
      return { promise, open, fail };
    });
    for (const gate of gates) acks.add(gate.promise);
    // Line 3 and 4 (another channel, say) are acknowledged before line 2 fails.
    gates[0]!.open(1);
    gates[2]!.open(3);
    gates[3]!.open(4);
    gates[1]!.fail(new WaymarkError('TOPIC_NOT_FOUND', 'topic "t" not found'));
    await acks.settled();
    assert.deepEqual(printed, [1], 'only the line acknowledged before the failed one');
    assert.equal(acks.failed, true);
    const err = acks.error() as WaymarkError;
    assert.equal(err.code, 'TOPIC_NOT_FOUND');
    assert.equal(err.message, 'line 2: topic "t" not found; the line before it was acknowledged (printed); the 2 lines sent after it are not printed and may or may not be stored');
  });

  it('through a real broker: the topic deleted between two lines, the first is printed (as it comes, not at the end) and the run exits 1 at line 2', async () => {
    await httpJson(`${broker.http}/v1/topics/gone`, { method: 'PUT', body: '{}' });
    const producing = new Running(['produce', '--topic', 'gone', '--url', broker.url], true);
    producing.proc.stdin.write('first\n');
    await producing.linesPrinted(1);
    assert.equal((await httpJson(`${broker.http}/v1/topics/gone`, { method: 'DELETE' })).status, 200);
    producing.proc.stdin.end('second\n');
    assert.equal(await producing.exited, 1, producing.stderr);
    assert.match(producing.stdout, /^0 0 [0-9a-f]{32}\n$/);
    assert.match(producing.stderr, /^waymark: produce: line 2: .*topic.*; the line before it was acknowledged \(printed\)\n$/);
  });
});

describe('input fixes: waymark produce whose stdout goes away', function () {
  this.timeout(120_000);
  const broker = brokerForSuite();

  it('stops reading and exits 1 saying what was sent (it sent on blind and exited 0: helper-47)', async () => {
    await httpJson(`${broker.http}/v1/topics/piped`, { method: 'PUT', body: '{}' });
    const producing = new Running(['produce', '--topic', 'piped', '--url', broker.url], true);
    producing.proc.stdin.write('first\n');
    await producing.linesPrinted(1);
    producing.proc.stdout.destroy(); // the reader is gone (`| head -1`)
    producing.proc.stdin.end('second\n');
    assert.equal(await producing.exited, 1, producing.stderr);
    assert.equal(producing.stderr, 'waymark: produce: stdout was closed, so reading stopped: 2 lines were sent and acknowledged, not all of them printed\n');
    assert.equal(await highWatermark(broker, 'piped'), 2);
  });

  it('BODY --count 10^9: sends within a window as the acknowledgements come, and stops when stdout goes away (it queued every send first and ran out of memory: helper-59)', async () => {
    await httpJson(`${broker.http}/v1/topics/counted`, { method: 'PUT', body: '{}' });
    const producing = new Running(['produce', '--topic', 'counted', '--count', '1000000000', 'x', '--url', broker.url]);
    await producing.linesPrinted(1); // before the fix nothing was printed: the loop queued 10^9 sends first
    producing.proc.stdout.destroy();
    assert.equal(await producing.exited, 1, producing.stderr);
    const match = /^waymark: produce: stdout was closed, so sending stopped: (\d+) messages were sent and acknowledged, not all of them printed\n$/.exec(producing.stderr);
    assert.ok(match, producing.stderr);
    const sent = Number(match[1]);
    assert.equal(await highWatermark(broker, 'counted'), sent, 'every message sent was acknowledged and stored');
    assert.ok(sent < 1_000_000_000);
  });

  it('InOrderAcks.room: no room once the window is unacknowledged, by count or by bytes (but always room for one); room again as each settles', async () => {
    const gates: Array<(n: number) => void> = [];
    const gate = (): Promise<number> => new Promise<number>((resolve) => gates.push(resolve));
    const acks = new InOrderAcks<number>(() => undefined, 'message', 2, 100);
    assert.equal(acks.room(), null);
    acks.add(gate(), 10);
    assert.equal(acks.room(), null);
    acks.add(gate(), 10);
    const full = acks.room();
    assert.ok(full, 'two unacknowledged: the window of two is full');
    let woke = false;
    void full.then(() => (woke = true));
    gates[0]!(1);
    await full;
    assert.equal(woke, true);
    assert.equal(acks.room(), null, 'one settled: room for one more');
    gates[1]!(2);
    await acks.settled();
    const big = new InOrderAcks<number>(() => undefined, 'message', 10, 100);
    big.add(gate(), 500);
    assert.ok(big.room(), 'past the bytes window with one unacknowledged');
    gates[2]!(3);
    await big.settled();
    assert.equal(big.room(), null);
  });
});

describe('input fixes: waymark produce --raw (stdin as one message, its exact bytes)', function () {
  this.timeout(120_000);
  const broker = new BrokerProcess(tempDir());
  const limit = 8 * 1024 * 1024;
  before(async () => {
    await loadChecksum();
    await broker.start();
    for (const topic of ['bin', 'big', 'empty', 'lines']) await httpJson(`${broker.http}/v1/topics/${topic}`, { method: 'PUT', body: '{}' });
  });
  after(() => broker.stop());

  /** Every message of a one-channel topic, bodies as bytes. */
  const bodies = async (topic: string): Promise<Buffer[]> =>
    (await httpJson(`${broker.http}/v1/topics/${topic}/messages?encoding=base64`)).body.messages.map((m: { bodyBase64: string }) => Buffer.from(m.bodyBase64, 'base64'));

  it('RawStdinIsOneMessage: bytes with 0x00, 0x0a, 0x0d, 0xff, invalid UTF-8 and a trailing newline come back bit-identical', async () => {
    const bytes = Buffer.concat([Buffer.from([0x00, 0x0a, 0xff, 0x0d, 0x0a, 0xc3, 0x28, 0x80, 0xfe, 0x00]), Buffer.from(Array.from({ length: 256 }, (_, i) => i)), Buffer.from('tail\n')]);
    const r = await run(['produce', '--topic', 'bin', '--raw', '--key', 'k', '--url', broker.url], bytes);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^0 0 [0-9a-f]{32}\n$/, 'one message acknowledged');
    const stored = await bodies('bin');
    assert.equal(stored.length, 1);
    assert.ok(stored[0]!.equals(bytes), `stored ${stored[0]!.toString('hex')}`);
    assert.equal((await httpJson(`${broker.http}/v1/topics/bin/keys/k`)).body.messages.length, 1, 'with its key');
  });

  // A body with a line feed printed as two lines, the second one reading like another message
  // ("0 1 - fake"); binary came out as U+FFFD with no way to get the bytes.
  it('consume prints one line a message (\\, \\n, \\r escaped); --base64 gives the exact bytes, in lines and in JSON', async () => {
    const text = Buffer.from('line-a\n0 1 - fake\r\\end');
    const binary = Buffer.from([0x00, 0x0a, 0xff, 0xfe, 0x41]);
    for (const body of [text, binary]) assert.equal((await run(['produce', '--topic', 'lines', '--raw', '--url', broker.url], body)).status, 0);
    const lines = await run(['consume', '--topic', 'lines', '--group', 'a', '--from', 'earliest', '--max', '2', '--url', broker.url], '');
    assert.equal(lines.status, 0, lines.stderr);
    assert.deepEqual(lines.stdout.split('\n'), ['0 0 - line-a\\n0 1 - fake\\r\\\\end', `0 1 - \u0000\\n\ufffd\ufffdA`, '']);
    const b64 = await run(['consume', '--topic', 'lines', '--group', 'b', '--from', 'earliest', '--max', '2', '--base64', '--url', broker.url], '');
    assert.deepEqual(b64.stdout.trim().split('\n').map((l) => Buffer.from(l.split(' ')[3]!, 'base64')), [text, binary]);
    const json = await run(['consume', '--topic', 'lines', '--group', 'c', '--from', 'earliest', '--max', '2', '--base64', '--json', '--url', broker.url], '');
    const objects = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { bodyBase64: string; body?: unknown; offset: number });
    assert.deepEqual(objects.map((o) => Buffer.from(o.bodyBase64, 'base64')), [text, binary]);
    assert.ok(objects.every((o) => o.body === undefined));
  });

  it('a command given the broker\'s HTTP address says what URL it takes (it said "Unexpected server response: 404")', async () => {
    const r = await run(['topics', 'list', '--url', broker.http], '');
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `waymark: topics: ${broker.http} answered HTTP 404, not a WebSocket: the broker's URL is ws://HOST:PORT/v1/ws (the default is ws://127.0.0.1:7070/v1/ws)\n`);
  });

  // Acknowledgements come back per channel: lines spread over channels printed as a, e, b, f, …
  it('produce prints each acknowledgement in input order, whichever channel a line went to', async () => {
    await httpJson(`${broker.http}/v1/topics/order`, { method: 'PUT', body: '{"channels": 4}' });
    const lines = Array.from({ length: 40 }, (_, i) => `line-${i}`);
    const r = await run(['produce', '--topic', 'order', '--json', '--url', broker.url], lines.map((l) => `${l}\n`).join(''));
    assert.equal(r.status, 0, r.stderr);
    const acks = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { channel: number; offset: number });
    assert.equal(acks.length, 40);
    assert.ok(new Set(acks.map((a) => a.channel)).size > 1, 'the lines went to more than one channel');
    const printed: string[] = [];
    for (const a of acks) {
      const read = await httpJson(`${broker.http}/v1/topics/order/messages?channel=${a.channel}&offset=${a.offset}&max=1`);
      printed.push(read.body.messages[0].body);
    }
    assert.deepEqual(printed, lines);
  });

  it('stdin of exactly the limit is sent; one byte more is MESSAGE_TOO_LARGE: one line, exit 2, nothing sent', async () => {
    const over = await run(['produce', '--topic', 'big', '--raw', '--url', broker.url], Buffer.alloc(limit + 1, 0xff));
    assert.equal(over.status, 2, over.stderr.slice(0, 500));
    assertOneLine(over.stderr);
    assert.equal(over.stderr, `waymark: produce: stdin is over ${limit} bytes, the limit of one message (--raw); nothing was sent\n`);
    assert.equal(over.stdout, '');
    assert.equal(await highWatermark(broker, 'big'), 0);
    const at = await run(['produce', '--topic', 'big', '--raw', '--url', broker.url], Buffer.alloc(limit, 0xab));
    assert.equal(at.status, 0, at.stderr.slice(0, 500));
    const stored = await bodies('big');
    assert.equal(stored.length, 1);
    assert.ok(stored[0]!.equals(Buffer.alloc(limit, 0xab)));
  });

  it('empty stdin is one empty message; --raw with a BODY is a usage error (exit 2, nothing sent)', async () => {
    const empty = await run(['produce', '--topic', 'empty', '--raw', '--url', broker.url], Buffer.alloc(0));
    assert.equal(empty.status, 0, empty.stderr);
    assert.deepEqual(await bodies('empty'), [Buffer.alloc(0)]);
    const both = await run(['produce', '--topic', 'empty', '--raw', 'body', '--url', broker.url], 'stdin');
    assert.equal(both.status, 2);
    assert.equal(both.stderr, 'waymark: produce: --raw sends stdin as one message: give no BODY (or -)\n');
    assert.equal(await highWatermark(broker, 'empty'), 1);
  });
});

describe('input fixes: HTTP', function () {
  this.timeout(60_000);
  const broker = new BrokerProcess(tempDir());
  const keyUtf8 = 'ключ';
  before(async () => {
    await loadChecksum();
    await broker.start();
    await httpJson(`${broker.http}/v1/topics/events`, { method: 'PUT', body: JSON.stringify({ channels: 4 }) });
  });
  after(() => broker.stop());

  it('a non-ASCII waymark-key header (raw UTF-8 bytes) is refused with INVALID_ARGUMENT, not stored without its key', async () => {
    for (const value of [Buffer.from(keyUtf8), Buffer.from(`k ${keyUtf8} k`), Buffer.from([0x61, 0xff, 0x62])]) {
      const r = await rawHttp(broker.port, 'POST', '/v1/topics/events/messages', [['waymark-key', value]], 'k');
      assert.equal(r.status, 400, `${value.toString('hex')}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
    }
    for (const name of ['waymark-msg-id', 'waymark-channel', 'traceparent']) {
      const r = await rawHttp(broker.port, 'POST', '/v1/topics/events/messages', [[name, Buffer.from(`1${keyUtf8}1`)]], 'k');
      assert.equal(r.body.error?.code, 'INVALID_ARGUMENT', name);
    }
    for (let channel = 0; channel < 4; channel++) assert.equal(await highWatermark(broker, 'events', channel), 0, 'nothing was appended');
    const ascii = await rawHttp(broker.port, 'POST', '/v1/topics/events/messages', [['waymark-key', 'cart-1']], 'k');
    assert.equal(ascii.status, 200);
    assert.equal(ascii.body.channel, channelForKey('cart-1', 4));
  });

  it('a non-ASCII key goes in the query, percent-encoded UTF-8: stored with its key and routed by it', async () => {
    const posted = await httpJson(`${broker.http}/v1/topics/events/messages?key=${encodeURIComponent(keyUtf8)}`, { method: 'POST', body: 'by key' });
    assert.equal(posted.status, 200, JSON.stringify(posted.body));
    assert.equal(posted.body.channel, channelForKey(keyUtf8, 4));
    const found = await httpJson(`${broker.http}/v1/topics/events/keys/${encodeURIComponent(keyUtf8)}`);
    assert.deepEqual(found.body.messages.map((m: { key: string; body: string }) => [m.key, m.body]), [[keyUtf8, 'by key']]);
    const cases: Array<[string, Record<string, string>]> = [
      ['?key=%FF', {}], // not UTF-8
      ['?key=', {}],
      [`?key=${encodeURIComponent(keyUtf8)}`, { 'waymark-key': 'also' }],
    ];
    for (const [query, headers] of cases) {
      const r = await httpJson(`${broker.http}/v1/topics/events/messages${query}`, { method: 'POST', body: 'x', headers });
      assert.equal(r.status, 400, `${query}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
    }
  });

  it('a read reply holds at most 8 MiB of bodies, at least one message; nextOffset goes on from there (helper-44: three 4 MB messages came back in one reply)', async () => {
    await httpJson(`${broker.http}/v1/topics/bulky`, { method: 'PUT', body: JSON.stringify({ channels: 1 }) });
    const bodies = [4_000_000, 4_000_000, 4_000_000, 8 * 1024 * 1024].map((n, i) => Buffer.alloc(n, 0x61 + i));
    for (const body of bodies) assert.equal((await httpJson(`${broker.http}/v1/topics/bulky/messages`, { method: 'POST', body })).status, 200);
    const seen: number[] = [];
    for (let offset = 0, replies = 0; offset < bodies.length; replies++) {
      const r = await httpJson(`${broker.http}/v1/topics/bulky/messages?offset=${offset}&max=100`);
      assert.equal(r.status, 200);
      const sizes = r.body.messages.map((m: { body: string }) => Buffer.byteLength(m.body));
      assert.ok(sizes.length >= 1, 'at least one message');
      assert.ok(sizes.length === 1 || sizes.reduce((a: number, b: number) => a + b, 0) <= 8 * 1024 * 1024, `reply ${replies}: ${sizes}`);
      assert.equal(r.body.nextOffset, offset + sizes.length);
      seen.push(...sizes);
      offset = r.body.nextOffset;
    }
    assert.deepEqual(seen, bodies.map((b) => b.length), 'every message once, in order');
    const first = await httpJson(`${broker.http}/v1/topics/bulky/messages?max=100`);
    assert.equal(first.body.messages.length, 2, 'two 4 MB bodies fit in 8 MiB, a third does not');
  });

  it('max above 10,000 is INVALID_ARGUMENT like max=0 (it was capped in silence); 10,000 is served', async () => {
    const over = await httpJson(`${broker.http}/v1/topics/events/messages?max=10001`);
    assert.equal(over.status, 400);
    assert.equal(over.body.error.code, 'INVALID_ARGUMENT');
    assert.equal((await httpJson(`${broker.http}/v1/topics/events/messages?max=10000`)).status, 200);
  });

  it('a topic owner that is not a string is refused (it was stored as its text) and no topic is made', async () => {
    const r = await httpJson(`${broker.http}/v1/topics/owned`, { method: 'PUT', body: '{"owner": 5}' });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
    assert.equal((await httpJson(`${broker.http}/v1/topics/owned`)).body.error.code, 'TOPIC_NOT_FOUND');
    const ok = await httpJson(`${broker.http}/v1/topics/owned`, { method: 'PUT', body: '{"owner": "ops"}' });
    assert.equal(ok.body.owner, 'ops');
  });

  it('a topic owner over 1 KiB or with a control character is INVALID_ARGUMENT (a 7 MiB one was stored, and listed in every listing)', async () => {
    for (const owner of ['x'.repeat(1025), 'two\nlines', 'tab\there']) {
      const r = await httpJson(`${broker.http}/v1/topics/owned2`, { method: 'PUT', body: JSON.stringify({ channels: 1, owner }) });
      assert.equal(r.status, 400, JSON.stringify(owner).slice(0, 40));
      assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
    }
    assert.equal((await httpJson(`${broker.http}/v1/topics/owned2`)).status, 404, 'no topic made');
    const ok = await httpJson(`${broker.http}/v1/topics/owned2`, { method: 'PUT', body: JSON.stringify({ channels: 1, owner: 'é'.repeat(512) }) });
    assert.equal(ok.status, 201, '1,024 bytes of UTF-8 is fine');
  });

  it('a key lookup limit above 1,000 is INVALID_ARGUMENT (it was cut to 1,000 in silence); 1,000 is served', async () => {
    await httpJson(`${broker.http}/v1/topics/klim`, { method: 'PUT', body: '{"channels": 1}' });
    await httpJson(`${broker.http}/v1/topics/klim/messages?key=k1`, { method: 'POST', body: 'v' });
    const over = await httpJson(`${broker.http}/v1/topics/klim/keys/k1?limit=1001`);
    assert.equal(over.status, 400);
    assert.equal(over.body.error.code, 'INVALID_ARGUMENT');
    const at = await httpJson(`${broker.http}/v1/topics/klim/keys/k1?limit=1000`);
    assert.equal(at.status, 200);
    assert.equal(at.body.messages.length, 1);
  });

  it('a POST is routed by its topic as it is once its body is in (re-created with fewer channels meanwhile: CHANNEL_NOT_FOUND before)', async () => {
    await httpJson(`${broker.http}/v1/topics/rc`, { method: 'PUT', body: '{"channels": 8}' });
    let key = 'k0';
    for (let i = 0; channelForKey(key, 8) < 2; i++) key = `k${i}`; // a key that routes past the new topic's channels
    const socket = net.connect(broker.port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString()));
    const answered = new Promise<void>((resolve) => socket.once('end', () => resolve()));
    socket.write(`POST /v1/topics/rc/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nwaymark-key: ${key}\r\nContent-Length: 4\r\n\r\nha`);
    assert.equal((await httpJson(`${broker.http}/v1/topics/rc`, { method: 'DELETE' })).status, 200);
    assert.equal((await httpJson(`${broker.http}/v1/topics/rc`, { method: 'PUT', body: '{"channels": 2}' })).status, 201);
    socket.write('lf'); // the rest of the body (the reply closes the connection: Connection: close)
    await answered;
    assert.match(reply, /^HTTP\/1\.1 200/, reply);
    const stored = JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4)) as { channel: number; offset: number };
    assert.equal(stored.channel, channelForKey(key, 2));
  });

  // The headers may reach the broker after another connection's delete (no order holds
  // between connections): the topic is looked up once the body is in, not when the headers
  // come (a 404 then was CI's one failure of the test above). Here the headers come while the
  // topic is gone; the stored answer does not depend on when the broker reads them.
  it('a POST whose headers come while its topic is deleted and whose body comes once it is re-created is stored', async () => {
    await httpJson(`${broker.http}/v1/topics/rc2`, { method: 'PUT', body: '{"channels": 4}' });
    assert.equal((await httpJson(`${broker.http}/v1/topics/rc2`, { method: 'DELETE' })).status, 200);
    const socket = net.connect(broker.port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString()));
    const answered = new Promise<void>((resolve) => socket.once('end', () => resolve()));
    socket.write(`POST /v1/topics/rc2/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nwaymark-channel: 1\r\nContent-Length: 4\r\n\r\nha`);
    // Gives the broker time to read the head before the re-create (no order is promised
    // between connections; the old code answered 404 when it had read it by then).
    assert.equal((await httpJson(`${broker.http}/healthz`)).status, 200);
    assert.equal((await httpJson(`${broker.http}/v1/topics/rc2`, { method: 'PUT', body: '{"channels": 2}' })).status, 201);
    socket.write('lf');
    await answered;
    assert.match(reply, /^HTTP\/1\.1 200/, reply);
    const stored = JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4)) as { channel: number; offset: number };
    assert.equal(stored.channel, 1);
  });

  // Found by a review as a new user: each of these was taken in silence.
  it('an unknown query parameter, a waymark header given twice, an unknown topic field and from after to are 400 INVALID_ARGUMENT, and nothing changes', async () => {
    const created = await httpJson(`${broker.http}/v1/topics/strict`, { method: 'PUT', body: '{"channels": 1}' });
    assert.equal(created.status, 201);
    assert.deepEqual(created.body, (await httpJson(`${broker.http}/v1/topics/strict`)).body, 'PUT answers what GET does (it lacked segmentBytes, segmentMs)');
    await httpJson(`${broker.http}/v1/topics/strict/messages`, { method: 'POST', body: 'one' });
    await httpJson(`${broker.http}/v1/topics/strict/messages`, { method: 'POST', body: 'two' });

    // ?ofset=1 read from the channel's start.
    const misspelt = await httpJson(`${broker.http}/v1/topics/strict/messages?ofset=1`);
    assert.equal(misspelt.status, 400, JSON.stringify(misspelt.body));
    assert.equal(misspelt.body.error.message, 'unknown query parameter "ofset" (this route takes channel, offset, max, encoding)');
    const onPut = await httpJson(`${broker.http}/v1/topics/strict2?channels=2`, { method: 'PUT', body: '{}' });
    assert.equal(onPut.body.error.message, 'unknown query parameter "channels" (this route takes none)');
    assert.equal((await httpJson(`${broker.http}/v1/topics/strict2`)).body.error.code, 'TOPIC_NOT_FOUND');
    assert.equal((await httpJson(`${broker.http}/healthz?probe=1`)).status, 200, 'health probes may add their own');

    // {"chanels": 2} made a one-channel topic.
    const typo = await httpJson(`${broker.http}/v1/topics/strict3`, { method: 'PUT', body: '{"chanels": 2}' });
    assert.equal(typo.status, 400);
    assert.equal(typo.body.error.code, 'INVALID_ARGUMENT');
    assert.equal(typo.body.error.message, 'unknown field "chanels" (a topic takes channels, retentionMs, retentionBytes, owner)');
    assert.equal((await httpJson(`${broker.http}/v1/topics/strict3`)).body.error.code, 'TOPIC_NOT_FOUND');
    // {"channels": 1, "channels": 3} made 3 channels (helper-50): a field given twice is refused,
    // as a query parameter or header given twice is; text that only looks like a key is not one.
    const twice = await httpJson(`${broker.http}/v1/topics/strict3`, { method: 'PUT', body: '{"channels": 1, "channels": 3}' });
    assert.deepEqual([twice.status, twice.body.error.code, twice.body.error.message], [400, 'INVALID_ARGUMENT', 'field "channels" is given twice']);
    assert.equal((await httpJson(`${broker.http}/v1/topics/strict3`)).body.error.code, 'TOPIC_NOT_FOUND');
    const lookalike = await httpJson(`${broker.http}/v1/topics/strict4`, { method: 'PUT', body: '{"owner": "a\\", \\"channels\\": 2", "channels": 1}' });
    assert.deepEqual([lookalike.status, lookalike.body.channels, lookalike.body.owner], [201, 1, 'a", "channels": 2']);
    const badJson = await httpJson(`${broker.http}/v1/topics/strict3`, { method: 'PUT', body: '{"channels": 2' });
    assert.equal(badJson.status, 400);
    assert.match(badJson.body.error.message, /^the body is not valid JSON: /);

    // Two waymark-key lines: the last one won.
    const socket = net.connect(broker.port, '127.0.0.1');
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString()));
    const answered = new Promise<void>((resolve) => socket.once('end', () => resolve()));
    socket.write('POST /v1/topics/strict/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nwaymark-key: a\r\nwaymark-key: b\r\nContent-Length: 5\r\n\r\nthree');
    await answered;
    assert.match(reply, /^HTTP\/1\.1 400/, reply);
    assert.match(reply, /header waymark-key is given more than once; give it once/);
    assert.equal(await highWatermark(broker, 'strict'), 2, 'nothing appended');

    const backwards = await httpJson(`${broker.http}/v1/topics/strict/keys/a?from=2000&to=1000`);
    assert.equal(backwards.status, 400);
    assert.equal(backwards.body.error.message, 'from 2000 is after to 1000');
  });

  it('QueryParameterGivenTwice: 400 INVALID_ARGUMENT naming it, on every route, and nothing changes (the first was taken in silence)', async () => {
    await httpJson(`${broker.http}/v1/topics/dup`, { method: 'PUT', body: '{"channels": 2}' });
    const refused = async (method: string, target: string, name: string, body?: string): Promise<void> => {
      const r = await httpJson(`${broker.http}${target}`, { method, body });
      assert.equal(r.status, 400, `${method} ${target}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, 'INVALID_ARGUMENT', `${method} ${target}`);
      assert.equal(r.body.error.message, `query parameter "${name}" is given more than once; give it once`);
    };
    await refused('POST', '/v1/topics/dup/messages?key=a&key=b', 'key', 'x');
    await refused('POST', '/v1/topics/dup/messages?key=a&key=a', 'key', 'x'); // the same value twice too: one rule
    for (let channel = 0; channel < 2; channel++) assert.equal(await highWatermark(broker, 'dup', channel), 0, 'nothing was appended');
    await refused('GET', '/v1/topics/dup/messages?offset=0&offset=1', 'offset');
    await refused('GET', '/v1/topics/dup/messages?channel=0&max=5&channel=1', 'channel');
    await refused('GET', '/v1/topics/dup/keys/a?from=1&from=2', 'from');
    await refused('GET', `/v1/messages/${'0'.repeat(32)}?topic=dup&topic=events`, 'topic');
    await refused('PUT', '/v1/topics/dup2?x=1&x=2', 'x', '{"channels": 1}');
    assert.equal((await httpJson(`${broker.http}/v1/topics/dup2`)).body.error.code, 'TOPIC_NOT_FOUND', 'no topic made');
    await refused('DELETE', '/v1/topics/dup?x=1&x=1', 'x');
    assert.equal((await httpJson(`${broker.http}/v1/topics/dup`)).status, 200, 'the topic is still there');
    // Each once: served as before.
    const posted = await httpJson(`${broker.http}/v1/topics/dup/messages?key=a`, { method: 'POST', body: 'once' });
    assert.equal(posted.status, 200, JSON.stringify(posted.body));
    const read = await httpJson(`${broker.http}/v1/topics/dup/messages?channel=${posted.body.channel}&offset=0&max=5`);
    assert.deepEqual(read.body.messages.map((m: { key: string; body: string }) => [m.key, m.body]), [['a', 'once']]);
    assert.equal((await httpJson(`${broker.http}/v1/topics/dup/keys/a?from=1&to=${Date.now() + 60_000}`)).body.messages.length, 1);
  });

  it('a query parameter given empty (?topic=, ?from=, ?channel=, …) is 400 INVALID_ARGUMENT naming it, and nothing changes (it was taken as absent: ?topic= searched every topic)', async () => {
    await httpJson(`${broker.http}/v1/topics/blank`, { method: 'PUT', body: '{"channels": 2}' });
    const posted = await httpJson(`${broker.http}/v1/topics/blank/messages?key=k`, { method: 'POST', body: 'one' });
    assert.equal(posted.status, 200);
    const refused = async (method: string, target: string, name: string, body?: string): Promise<void> => {
      const r = await httpJson(`${broker.http}${target}`, { method, body });
      assert.equal(r.status, 400, `${method} ${target}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, 'INVALID_ARGUMENT', `${method} ${target}`);
      assert.equal(r.body.error.message, `${name} is empty; give a value or leave it out`, `${method} ${target}`);
    };
    await refused('GET', `/v1/messages/${posted.body.msgId}?topic=`, 'topic');
    await refused('GET', '/v1/topics/blank/keys/k?from=', 'from');
    await refused('GET', '/v1/topics/blank/keys/k?from=1&to=', 'to');
    await refused('GET', '/v1/topics/blank/keys/k?limit=', 'limit');
    await refused('GET', '/v1/topics/blank/messages?channel=', 'channel');
    await refused('GET', '/v1/topics/blank/messages?offset=&max=5', 'offset');
    await refused('POST', '/v1/topics/blank/messages?key=', 'key', 'two');
    for (let channel = 0; channel < 2; channel++) assert.equal(await highWatermark(broker, 'blank', channel), channel === posted.body.channel ? 1 : 0, 'nothing appended');
    // Left out, each takes its default as before.
    assert.equal((await httpJson(`${broker.http}/v1/messages/${posted.body.msgId}`)).body.body, 'one');
    assert.equal((await httpJson(`${broker.http}/v1/topics/blank/keys/k`)).body.messages.length, 1);
  });

  it('HEAD /healthz answers 200 with the length and no body; a HEAD to any other path 404 with no body; the connection goes on', async () => {
    const socket = net.connect(broker.port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString()));
    const answered = new Promise<void>((resolve) => socket.once('end', () => resolve()));
    // Pipelined on one connection, the last closing it: a body after a HEAD reply (the 404
    // used to carry one) would be read as the start of the next reply.
    socket.write('HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await answered;
    const replies = reply.split(/(?=HTTP\/1\.1 )/);
    assert.equal(replies.length, 3, reply);
    assert.match(replies[0]!, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(replies[0]!, /\r\ncontent-length: 15\r\n/i);
    assert.ok(replies[0]!.endsWith('\r\n\r\n'), 'no body after the HEAD reply');
    assert.match(replies[1]!, /^HTTP\/1\.1 404 Not Found\r\n/);
    assert.ok(replies[1]!.endsWith('\r\n\r\n'), 'no body after the HEAD reply');
    assert.match(replies[2]!, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\n\{"status":"ok"\}$/);
  });

  it('a malformed %-escape in the query is 400 BAD_REQUEST, and nothing is stored (?key=%ZZ stored the key "%ZZ")', async () => {
    await httpJson(`${broker.http}/v1/topics/esc`, { method: 'PUT', body: '{"channels": 1}' });
    for (const [method, target, body] of [
      ['POST', '/v1/topics/esc/messages?key=%ZZ', 'x'],
      ['POST', '/v1/topics/esc/messages?key=a%', 'x'],
      ['GET', '/v1/topics/esc/messages?offset=%4', undefined],
      ['GET', '/v1/topics/esc/keys/a?from=%G0', undefined],
    ] as const) {
      const r = await httpJson(`${broker.http}${target}`, { method, body });
      assert.equal(r.status, 400, `${method} ${target}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, 'BAD_REQUEST');
      assert.match(r.body.error.message, /^malformed %-escape in the query: .* \(a literal % is %25\)$/);
    }
    assert.equal(await highWatermark(broker, 'esc', 0), 0, 'nothing was appended');
    const literal = await httpJson(`${broker.http}/v1/topics/esc/messages?key=%25ZZ`, { method: 'POST', body: 'y' });
    assert.equal(literal.status, 200, JSON.stringify(literal.body));
    assert.deepEqual((await httpJson(`${broker.http}/v1/topics/esc/keys/%25ZZ`)).body.messages.map((m: { key: string }) => m.key), ['%ZZ']);
  });

  it('an unknown route answers 404 with NOT_FOUND, whose table status is 404 (BAD_REQUEST is 400)', async () => {
    assert.equal(ErrorTable.NOT_FOUND.http, 404);
    for (const [method, url] of [['GET', '/nope'], ['POST', '/v1/nope/deeper'], ['PATCH', '/v1/topics/events']]) {
      const r = await httpJson(`${broker.http}${url}`, { method });
      assert.equal(r.status, 404, `${method} ${url}`);
      assert.equal(r.body.error.code, 'NOT_FOUND');
      assert.equal(r.body.error.message, `no route ${method} ${url}`);
    }
  });
});

describe('input fixes: waymark serve --data', () => {
  it('a file as the data folder, or on its path: one line, exit 2 (it was an ENOTDIR stack)', async () => {
    const file = path.join(tempDir(), 'a-file');
    fs.writeFileSync(file, 'not a folder');
    for (const data of [file, path.join(file, 'data')]) {
      const r = await run(['serve', '--port', '0', '--data', data]);
      assert.equal(r.status, 2, r.stderr);
      assertOneLine(r.stderr);
      assert.match(r.stderr, /^waymark: serve: data folder .* (is a file|a part of the path is a file), not a folder\n$/);
    }
    assert.equal(fs.readFileSync(file, 'utf8'), 'not a folder');
  });
});

describe('input fixes: a new user\'s run over HTTP and the CLI (helper-59)', function () {
  this.timeout(60_000);
  const broker = new BrokerProcess(tempDir());
  before(async () => {
    await loadChecksum();
    await broker.start();
    await httpJson(`${broker.http}/v1/topics/nu`, { method: 'PUT', body: '{"channels": 4}' });
  });
  after(() => broker.stop());

  it('a misspelt waymark-* header is 400 INVALID_ARGUMENT naming it, and nothing is stored (waymark-chanel: 3 was ignored: round robin, 200)', async () => {
    const r = await httpJson(`${broker.http}/v1/topics/nu/messages`, { method: 'POST', body: 'typo', headers: { 'waymark-chanel': '3' } });
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
    assert.match(r.body.error.message, /^unknown header "waymark-chanel" \(this route takes waymark-key, waymark-channel, /);
    for (let channel = 0; channel < 4; channel++) assert.equal(await highWatermark(broker, 'nu', channel), 0);
    const right = await httpJson(`${broker.http}/v1/topics/nu/messages`, { method: 'POST', body: 'right', headers: { 'waymark-channel': '3' } });
    assert.equal(right.body.channel, 3);
  });

  it('a key lookup says when it was cut short, by its limit or by 8 MiB of bodies (truncated; it was silent)', async () => {
    await httpJson(`${broker.http}/v1/topics/kt`, { method: 'PUT', body: '{"channels": 2}' });
    const big = 'b'.repeat(5 * 1024 * 1024);
    for (const body of [big, big, 'small']) assert.equal((await httpJson(`${broker.http}/v1/topics/kt/messages?key=k`, { method: 'POST', body })).status, 200);
    const all = await httpJson(`${broker.http}/v1/topics/kt/keys/k`);
    assert.deepEqual([all.body.messages.map((m: { body: string }) => m.body.length), all.body.truncated], [[5, big.length], true], 'the third does not fit 8 MiB');
    const limited = await httpJson(`${broker.http}/v1/topics/kt/keys/k?limit=1`);
    assert.deepEqual([limited.body.messages.length, limited.body.truncated], [1, true]);
    await httpJson(`${broker.http}/v1/topics/kt/messages?key=few`, { method: 'POST', body: 'one' });
    const whole = await httpJson(`${broker.http}/v1/topics/kt/keys/few`);
    assert.deepEqual([whole.body.messages.length, whole.body.truncated], [1, false]);
    // Exactly `limit` of them: nothing more (it said truncated, and paging on never ended: helper-60).
    const exact = await httpJson(`${broker.http}/v1/topics/kt/keys/few?limit=1`);
    assert.deepEqual([exact.body.messages.length, exact.body.truncated], [1, false]);
    // Exactly 8 MiB of bodies in one message: nothing more either.
    await httpJson(`${broker.http}/v1/topics/kt/messages?key=full`, { method: 'POST', body: 'f'.repeat(8 * 1024 * 1024) });
    const full = await httpJson(`${broker.http}/v1/topics/kt/keys/full`);
    assert.deepEqual([full.body.messages.length, full.body.truncated], [1, false]);
  });

  it('/healthz and /metrics read no query: a repeated name and a malformed escape are served alike (a repeated name was 400, a malformed escape 200)', async () => {
    for (const route of ['/healthz', '/metrics']) {
      for (const query of ['?x=1&x=2', '?x=%ZZ', '?probe=1']) {
        const r = await fetch(`${broker.http}${route}${query}`);
        assert.equal(r.status, 200, `${route}${query}`);
        await r.arrayBuffer();
      }
    }
  });

  it('an error shows the value given as it was given: "10" quoted, [1] as JSON (both were shown as a bare number)', async () => {
    const text = await httpJson(`${broker.http}/v1/topics/shownv`, { method: 'PUT', body: '{"retentionMs": "10"}' });
    assert.equal(text.status, 400);
    assert.match(text.body.error.message, /retentionMs must be a whole number ≥ 0, not "10"$/);
    const array = await httpJson(`${broker.http}/v1/topics/shownv`, { method: 'PUT', body: '{"retentionBytes": [1]}' });
    assert.match(array.body.error.message, /retentionBytes must be a whole number ≥ 0, not \[1\]$/);
  });

  it('a name no topic can have is INVALID_NAME wherever it is looked up (it was TOPIC_NOT_FOUND, and exit 1 from the CLI)', async () => {
    const http = await httpJson(`${broker.http}/v1/topics/a%2Fb`);
    assert.deepEqual([http.status, http.body.error.code], [400, 'INVALID_NAME']);
    const keys = await httpJson(`${broker.http}/v1/topics/a%2Fb/keys/k`);
    assert.equal(keys.body.error.code, 'INVALID_NAME');
    const cli = await run(['produce', '--topic', 'a/b', 'hi', '--url', broker.url]);
    assert.equal(cli.status, 2, cli.stderr);
    assert.match(cli.stderr, /^waymark: produce: .*topic name "a\/b"/);
    const missing = await httpJson(`${broker.http}/v1/topics/no-such`);
    assert.equal(missing.body.error.code, 'TOPIC_NOT_FOUND', 'a valid name that is not there is still not found');
  });

  it('the SDK refuses a misspelt or missing option from JavaScript with INVALID_ARGUMENT (chanels: [1] read every channel; producer() was a TypeError)', async () => {
    const code = async (make: () => Promise<unknown>): Promise<string | undefined> => {
      try {
        await make();
        return 'accepted';
      } catch (err) {
        return err instanceof WaymarkError ? `${err.code}: ${err.message}` : `untyped: ${String(err)}`;
      }
    };
    const loose = (o: object): never => o as never; // as plain JavaScript would pass it
    assert.match((await code(() => connect(broker.url, loose({ reconect: false }))))!, /^INVALID_ARGUMENT: connect: unknown option "reconect"/);
    const client = await connect(broker.url);
    try {
      assert.match((await code(() => client.producer(loose(undefined as unknown as object))))!, /^INVALID_ARGUMENT: producer options must be an object/);
      assert.match((await code(() => client.producer(loose({ topic: 'nu', bogus: 1 }))))!, /^INVALID_ARGUMENT: producer: unknown option "bogus"/);
      assert.match((await code(() => client.producer(loose({ channel: 1 }))))!, /^INVALID_ARGUMENT: producer needs a topic/);
      assert.match((await code(() => client.consumer(loose({ topic: 'nu', group: 'g', chanels: [1] }))))!, /^INVALID_ARGUMENT: consumer: unknown option "chanels"/);
      assert.match((await code(() => client.consumer({ topic: 'nu', group: 'g', channels: [] })))!, /^INVALID_ARGUMENT: channels is empty/);
      assert.match((await code(() => client.msgStream().asConsumer('nu', 'g', loose({ strat: 'earliest' }))))!, /^INVALID_ARGUMENT: asConsumer: unknown option "strat"/);
      // Spelt right, each is taken.
      const consumer = await client.consumer({ topic: 'nu', group: 'g', channels: [1] });
      await consumer.close();
    } finally {
      client.close();
    }
  });

  it('dump, verify and repair of a path that is neither a folder nor a file (/dev/null) exit 2 with one line (it was "ENOTDIR … scandir" and exit 1); topics --help shows option values; --version prints the version', async () => {
    for (const command of ['dump', 'verify', 'repair']) {
      const r = await run([command, '/dev/null']);
      assert.equal(r.status, 2, `${command}: ${r.stderr}`);
      assert.equal(r.stderr, `waymark: ${command}: /dev/null: not a store, topic or channel folder, nor a segment or index file\n`);
    }
    const topicsHelp = await run(['topics', '--help']);
    assert.match(topicsHelp.stdout, /waymark topics create NAME \[--channels N\] \[--retention-ms MS\]/, 'option values shown (it was [--channels])');
    const version = await run(['--version']);
    assert.equal(version.status, 0);
    assert.match(version.stdout, /^waymark \d+\.\d+\.\d+( \([0-9a-f]+\))?\n$/);
  });
});
