/**
 * Peers benchmark (optional): `npm run bench:peers` (or `-- --quick`). Runs the produce and
 * consume workload of bench:ws against NATS JetStream and Redis Streams when their servers
 * are installed (`apt-get install nats-server redis-server`) and their Node clients are
 * present (the devDependencies `nats` and `ioredis`), and against Waymark in the same run, so
 * that users can compare on their own machine. A peer whose server or client is missing is
 * skipped with a `peer` line saying why; the run still succeeds.
 *
 * Same layout as bench:ws: each server in its own process pinned to CPU 0 (all its threads),
 * the client (this process) pinned to CPU 1; each server gets a fresh data folder under
 * .bench-data/peers-<pid>/ and is stopped at the end. The workload, for every system:
 *
 *   produce  one producer, one connection, N messages of 100 B and N/5 of 1 KiB (random
 *            bytes), a window of 8,000 messages outstanding (the one bench:ws uses); a
 *            message counts when the server acknowledged it:
 *              Waymark  producer.send() and producer.sendBatch(1000), acknowledged after
 *                       fdatasync (sync "batch", the default);
 *              NATS     JetStream file store, async publish (a core publish per message with
 *                       its own reply subject, PubAcks counted on one inbox subscription, as
 *                       the Go client's PublishAsync); the server acknowledges once the
 *                       message is written to its file and fsyncs in the background (every
 *                       2 min by default) — weaker durability than Waymark's;
 *              Redis    XADD in pipelines of 1,000 (ioredis), AOF with appendfsync everysec:
 *                       acknowledged in memory, fsynced once a second.
 *   consume  a backlog of M messages of 100 B, read from the start by one consumer:
 *              Waymark  stream-group consumer, consumer.next() per message;
 *              NATS     ordered consumer (consumers.get(stream).consume()), per message;
 *              Redis    XREADGROUP … COUNT 1000 NOACK from "0", per entry.
 *
 * Figures are one timed pass per system and size, after a small unrecorded warm-up; the
 * `ratio` of a peer line is peer rate ÷ Waymark rate (send(), or consumer.next()) measured
 * minutes earlier in this run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { connect } from '../sdk/index';
import { loadChecksum } from '../engine/index';
import { countFlag, onlyFlag, emit, machineLine, now, progress, sig, eachFlag } from './common';
import { sdkRound as waymarkConsume } from './ws-phases/consume';
import { sdkRound as waymarkProduce } from './ws-phases/produce';
import { bodyRing, BrokerChild, phases, pin, settle, type Options as WsOptions } from './ws-phases/shared';

interface Options {
  quick: boolean;
  dir: string;
  pin: boolean;
  produceMessages: number;
  backlogMessages: number;
  window: number;
  only: Set<string>;
}

const usage = `usage: node dist/bench/peers.js [options]        (npm run bench:peers -- [options])

  --quick                smoke run: 200k produce messages, 200k backlog (default 2e6 and 2e6)
  --produce-messages N   messages per produce pass at 100 B (1 KiB sends a fifth)
  --backlog N            messages in each consume backlog
  --only LIST            systems, comma separated: waymark,nats,redis (default all)
  --no-pin               do not pin servers and client to one CPU each
  --help                 this text`;


function parseArgs(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = {
    quick,
    dir: path.resolve('.bench-data', `peers-${process.pid}`),
    pin: true,
    produceMessages: quick ? 200_000 : 2_000_000,
    backlogMessages: quick ? 200_000 : 2_000_000,
    window: 8_000,
    only: new Set(['waymark', 'nats', 'redis']),
  };
  const count = (flag: string, text: string | undefined): number => countFlag(flag, text, 1000);
  eachFlag(argv, usage, (flag, value) => {
    switch (flag) {
      case '--produce-messages':
        o.produceMessages = count(flag, value());
        break;
      case '--backlog':
        o.backlogMessages = count(flag, value());
        break;
      case '--only':
        o.only = onlyFlag(value(), ['waymark', 'nats', 'redis']);
        break;
      case '--no-pin':
        o.pin = false;
        break;
      default:
        return false;
    }
    return true;
  });
  return o;
}

// ------------------------------------------------------------------ helpers

function which(binary: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/local/sbin', '/sbin'])) {
    const full = path.join(dir, binary);
    try {
      fs.accessSync(full, fs.constants.X_OK);
      return full;
    } catch {
      // not here
    }
  }
  return null;
}

function optionalRequire<T>(name: string): T | null {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(name) as T;
  } catch {
    return null;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, proc: ChildProcess, timeoutMs = 10_000): Promise<void> {
  const deadline = now() + timeoutMs;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (now() > deadline) throw new Error(`nothing listens on ${port} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function stopProcess(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

function bodyPool(bytes: number): Uint8Array[] {
  return bodyRing(bytes); // the same bodies for every system
}

interface Figure {
  system: string;
  workload: 'produce' | 'consume';
  api: string;
  bodyBytes: number;
  messages: number;
  seconds: number;
}

function figureLine(f: Figure, waymark: Figure | undefined): Record<string, unknown> {
  const rate = f.messages / f.seconds;
  return {
    name: 'peer',
    ...f,
    seconds: sig(f.seconds, 4),
    msgsPerSecond: sig(rate, 4),
    mbPerSecond: sig((rate * f.bodyBytes) / 1e6, 4),
    ...(waymark && waymark !== f ? { waymarkApi: waymark.api, waymarkMsgsPerSecond: sig(waymark.messages / waymark.seconds, 4), ratioVsWaymark: sig(rate / (waymark.messages / waymark.seconds), 3) } : {}),
  };
}

// ------------------------------------------------------------------ Waymark

async function runWaymark(o: Options, sizes: number[]): Promise<Figure[]> {
  const broker = await BrokerChild.start(path.join(o.dir, 'waymark'), { pin: o.pin, cpuProf: false, profDir: o.dir });
  const out: Figure[] = [];
  try {
    const ws: WsOptions = {
      quick: o.quick, only: new Set(phases), dir: o.dir, keep: false, pin: o.pin, rounds: 1, bodySizes: sizes, produceMessages: o.produceMessages,
      sendWindowMessages: o.window, sendBatchMessages: 1000, compression: true, backlogMessages: o.backlogMessages, consumeBodyBytes: 100,
      latencyRate: 0, latencySeconds: 0, latencyWarmupSeconds: 0, brokerCpuProf: false, clientCpuProf: false, brokerNodeFlags: [],
    };
    const admin = await connect(broker.url, { clientName: 'bench-peers' });
    for (const bytes of sizes) {
      const messages = bytes >= 1024 ? o.produceMessages / 5 : o.produceMessages;
      const pool = bodyPool(bytes);
      for (const batchApi of [false, true]) {
        const topic = `peers-${bytes}-${batchApi ? 'batch' : 'send'}`;
        await admin.admin.createTopic(topic, { channels: 1 });
        await waymarkProduce(broker.url, topic, pool, Math.min(messages, 20_000), ws, batchApi); // warm-up
        settle();
        progress(`waymark: produce ${messages.toLocaleString('en')} × ${bytes} B with ${batchApi ? 'sendBatch' : 'send'}`);
        const seconds = await waymarkProduce(broker.url, topic, pool, messages, ws, batchApi);
        out.push({ system: 'waymark', workload: 'produce', api: batchApi ? 'producer.sendBatch(1000), ack after fdatasync' : 'producer.send, ack after fdatasync', bodyBytes: bytes, messages, seconds });
        await admin.admin.deleteTopic(topic);
      }
    }
    await admin.admin.createTopic('peers-backlog', { channels: 1 });
    progress(`waymark: backlog of ${o.backlogMessages.toLocaleString('en')} × 100 B`);
    await broker.call({ cmd: 'fill', topic: 'peers-backlog', messages: o.backlogMessages, bodyBytes: 100, batchMessages: 1000 });
    settle();
    const total = Math.ceil(o.backlogMessages / 1000) * 1000;
    const seconds = await waymarkConsume(broker.url, 'peers-backlog', 'peers', total);
    out.push({ system: 'waymark', workload: 'consume', api: 'stream-group consumer.next()', bodyBytes: 100, messages: total, seconds });
    admin.close();
  } finally {
    await broker.stop();
  }
  return out;
}

// ------------------------------------------------------------------ NATS JetStream

interface NatsModule {
  connect(options: { servers: string; maxReconnectAttempts?: number; noAsyncTraces?: boolean }): Promise<NatsConnection>;
}
interface NatsConnection {
  jetstream(): {
    consumers: { get(stream: string): Promise<{ consume(options: { max_messages: number }): Promise<AsyncIterable<{ data: Uint8Array }> & { stop(): void }> }> };
  };
  publish(subject: string, payload: Uint8Array, options: { reply: string }): void;
  subscribe(subject: string, options: { callback: (err: Error | null, msg: { data: Uint8Array }) => void }): unknown;
  jetstreamManager(): Promise<{ streams: { add(config: Record<string, unknown>): Promise<unknown>; delete(name: string): Promise<unknown> } }>;
  drain(): Promise<void>;
}

async function runNats(o: Options, sizes: number[], nats: NatsModule, binary: string, waymark: Figure[]): Promise<void> {
  const port = await freePort();
  const store = path.join(o.dir, 'nats');
  fs.mkdirSync(store, { recursive: true });
  const proc = spawn(binary, ['-js', '-sd', store, '-a', '127.0.0.1', '-p', String(port), '-l', path.join(o.dir, 'nats-server.log')], { stdio: ['ignore', 'ignore', 'inherit'] });
  try {
    await waitForPort(port, proc);
    const pinned = o.pin ? pin(proc.pid!, 0) : 'not pinned';
    emit({ name: 'peer-server', system: 'nats', binary, version: versionOf(binary, ['--version']), pinned, durability: 'JetStream file store; acknowledged once written, fsync in the background (sync_interval, default 2 min)' });
    // noAsyncTraces: nats.js otherwise captures a stack trace (an Error) per request, which the
    // client's docs say to turn off for JetStream publishers that care about speed.
    const nc = await nats.connect({ servers: `127.0.0.1:${port}`, maxReconnectAttempts: 0, noAsyncTraces: true });
    const js = nc.jetstream();
    const jsm = await nc.jetstreamManager();
    // Async publish as the Go client's PublishAsync does it: every message is a core publish
    // with its own reply subject under one inbox subscription, and JetStream answers each with
    // a PubAck there. (nats.js's js.publish() costs ~35 µs of client CPU per message here: it
    // makes a NatsError, stack included, for every request it settles — RequestOne.cancel.)
    let acked = 0;
    let failure: Error | null = null;
    let wake: (() => void) | null = null;
    const inbox = `_INBOX.peers${process.pid}`;
    nc.subscribe(`${inbox}.*`, {
      callback: (err, msg) => {
        // A PubAck is {"stream":…,"seq":…}; an error is {"error":{…}}.
        if (err) failure ??= err;
        else if (msg.data[2] === 0x65 && msg.data[3] === 0x72) failure ??= new Error(`nats: ${new TextDecoder().decode(msg.data)}`);
        acked++;
        if (wake) {
          const w = wake;
          wake = null;
          w();
        }
      },
    });
    const produce = async (subject: string, pool: Uint8Array[], count: number): Promise<number> => {
      const t0 = now();
      const base = acked;
      for (let i = 0; i < count; i++) {
        nc.publish(subject, pool[i % pool.length]!, { reply: `${inbox}.${i}` });
        while (i + 1 - (acked - base) > o.window && !failure) await new Promise<void>((resolve) => (wake = resolve));
        if (failure) throw failure;
      }
      while (acked - base < count && !failure) await new Promise<void>((resolve) => (wake = resolve));
      if (failure) throw failure;
      return (now() - t0) / 1000;
    };
    for (const bytes of sizes) {
      const messages = bytes >= 1024 ? o.produceMessages / 5 : o.produceMessages;
      const stream = `PEERS_${bytes}`;
      await jsm.streams.add({ name: stream, subjects: [`peers.${bytes}`], storage: 'file' });
      const pool = bodyPool(bytes);
      await produce(`peers.${bytes}`, pool, Math.min(messages, 20_000)); // warm-up
      settle();
      progress(`nats: produce ${messages.toLocaleString('en')} × ${bytes} B with async publish`);
      const seconds = await produce(`peers.${bytes}`, pool, messages);
      const f: Figure = { system: 'nats', workload: 'produce', api: 'JetStream async publish (reply inbox per message), file store', bodyBytes: bytes, messages, seconds };
      emit(figureLine(f, waymark.find((w) => w.workload === 'produce' && w.bodyBytes === bytes && w.api.startsWith('producer.send,'))));
      await jsm.streams.delete(stream);
    }
    await jsm.streams.add({ name: 'PEERS_BACKLOG', subjects: ['peers.backlog'], storage: 'file' });
    progress(`nats: backlog of ${o.backlogMessages.toLocaleString('en')} × 100 B`);
    await produce('peers.backlog', bodyPool(100), o.backlogMessages);
    settle();
    const consumer = await js.consumers.get('PEERS_BACKLOG');
    const t0 = now();
    const messages = await consumer.consume({ max_messages: 10_000 });
    let count = 0;
    for await (const m of messages) {
      if (m.data.length !== 100) throw new Error('nats: unexpected message');
      if (++count >= o.backlogMessages) break;
    }
    const f: Figure = { system: 'nats', workload: 'consume', api: 'ordered consumer, consume() per message', bodyBytes: 100, messages: count, seconds: (now() - t0) / 1000 };
    emit(figureLine(f, waymark.find((w) => w.workload === 'consume')));
    messages.stop();
    await nc.drain();
  } finally {
    await stopProcess(proc);
  }
}

// ------------------------------------------------------------------ Redis Streams

interface RedisClient {
  pipeline(): { xadd(...args: Array<string | Uint8Array>): unknown; exec(): Promise<Array<[Error | null, unknown]>> };
  xgroup(...args: string[]): Promise<unknown>;
  xreadgroupBuffer(...args: Array<string | number>): Promise<Array<[Buffer, Array<[Buffer, Buffer[]]>]> | null>;
  del(key: string): Promise<unknown>;
  quit(): Promise<unknown>;
}
type RedisCtor = new (options: { host: string; port: number; maxRetriesPerRequest?: number; enableOfflineQueue?: boolean }) => RedisClient;

async function runRedis(o: Options, sizes: number[], Redis: RedisCtor, binary: string, waymark: Figure[]): Promise<void> {
  const port = await freePort();
  const dir = path.join(o.dir, 'redis');
  fs.mkdirSync(dir, { recursive: true });
  const proc = spawn(binary, ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '', '--daemonize', 'no', '--protected-mode', 'no'], { stdio: ['ignore', 'ignore', 'inherit'] });
  try {
    await waitForPort(port, proc);
    const pinned = o.pin ? pin(proc.pid!, 0) : 'not pinned';
    emit({ name: 'peer-server', system: 'redis', binary, version: versionOf(binary, ['--version']), pinned, durability: 'AOF, appendfsync everysec: acknowledged in memory, fsynced once a second' });
    const redis = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
    const pipelineMessages = 1000;
    const produce = async (key: string, pool: Uint8Array[], count: number): Promise<number> => {
      const t0 = now();
      const perWindow = Math.max(1, Math.round(o.window / pipelineMessages));
      let previous: Promise<Array<[Error | null, unknown]>> | null = null;
      const check = (results: Array<[Error | null, unknown]>): void => {
        for (const [err] of results) if (err) throw err;
      };
      let pipelines = 0;
      for (let i = 0; i < count; ) {
        const pipeline = redis.pipeline();
        const n = Math.min(pipelineMessages, count - i);
        for (let j = 0; j < n; j++) pipeline.xadd(key, '*', 'b', pool[(i + j) % pool.length]!);
        i += n;
        const p = pipeline.exec();
        if (++pipelines % perWindow === 0) {
          if (previous) check(await previous);
          previous = p;
        } else p.then(check, () => undefined);
      }
      if (previous) check(await previous);
      return (now() - t0) / 1000;
    };
    for (const bytes of sizes) {
      const messages = bytes >= 1024 ? o.produceMessages / 5 : o.produceMessages;
      const key = `peers-${bytes}`;
      const pool = bodyPool(bytes);
      await produce(key, pool, Math.min(messages, 20_000)); // warm-up
      settle();
      progress(`redis: produce ${messages.toLocaleString('en')} × ${bytes} B with pipelined XADD`);
      const seconds = await produce(key, pool, messages);
      const f: Figure = { system: 'redis', workload: 'produce', api: 'XADD pipelined (1,000), appendfsync everysec', bodyBytes: bytes, messages, seconds };
      emit(figureLine(f, waymark.find((w) => w.workload === 'produce' && w.bodyBytes === bytes && w.api.startsWith('producer.send,'))));
      await redis.del(key);
    }
    progress(`redis: backlog of ${o.backlogMessages.toLocaleString('en')} × 100 B`);
    await produce('peers-backlog', bodyPool(100), o.backlogMessages);
    await redis.xgroup('CREATE', 'peers-backlog', 'peers', '0');
    settle();
    const t0 = now();
    let count = 0;
    while (count < o.backlogMessages) {
      const reply = await redis.xreadgroupBuffer('GROUP', 'peers', 'c1', 'COUNT', 1000, 'NOACK', 'STREAMS', 'peers-backlog', '>');
      if (!reply) break;
      for (const [, entries] of reply) {
        for (const [, fields] of entries) {
          if (fields[1]!.length !== 100) throw new Error('redis: unexpected entry');
          count++;
        }
      }
    }
    const f: Figure = { system: 'redis', workload: 'consume', api: 'XREADGROUP COUNT 1000 NOACK, per entry', bodyBytes: 100, messages: count, seconds: (now() - t0) / 1000 };
    emit(figureLine(f, waymark.find((w) => w.workload === 'consume')));
    await redis.quit();
  } finally {
    await stopProcess(proc);
  }
}

function versionOf(binary: string, args: string[]): string {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require('node:child_process') as typeof import('node:child_process')).execFileSync(binary, args, { encoding: 'utf8' }).trim().split('\n')[0]!;
  } catch {
    return 'unknown';
  }
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench:peers: ${(err as Error).message}\n`);
    process.exit(2);
  }
  await loadChecksum();
  fs.mkdirSync(o.dir, { recursive: true });
  const nproc = os.availableParallelism();
  const clientPinned = o.pin ? pin(process.pid, 1) : 'not pinned (--no-pin)';
  const sizes = [100, 1024];
  const natsBinary = which('nats-server');
  const redisBinary = which('redis-server');
  const natsClient = optionalRequire<NatsModule>('nats');
  const redisClient = optionalRequire<RedisCtor>('ioredis');
  emit(
    machineLine('machine', {
      bench: 'peers',
      nproc,
      quick: o.quick,
      dataDir: o.dir,
      client: `this process ${process.pid}, ${clientPinned}`,
      sizes: { produceMessages: o.produceMessages, produceMessages1KiB: o.produceMessages / 5, backlogMessages: o.backlogMessages, windowMessages: o.window, bodySizes: sizes },
    }),
  );
  const t0 = now();
  try {
    const waymark = o.only.has('waymark') ? await runWaymark(o, sizes) : [];
    for (const f of waymark) emit(figureLine(f, undefined));
    if (o.only.has('nats')) {
      if (!natsBinary) emit({ name: 'peer', system: 'nats', skipped: 'nats-server is not installed (apt-get install nats-server)' });
      else if (!natsClient) emit({ name: 'peer', system: 'nats', skipped: 'the npm package nats is not installed (npm install, with devDependencies)' });
      else await runNats(o, sizes, natsClient, natsBinary, waymark);
    }
    if (o.only.has('redis')) {
      if (!redisBinary) emit({ name: 'peer', system: 'redis', skipped: 'redis-server is not installed (apt-get install redis-server)' });
      else if (!redisClient) emit({ name: 'peer', system: 'redis', skipped: 'the npm package ioredis is not installed (npm install, with devDependencies)' });
      else await runRedis(o, sizes, (redisClient as unknown as { default?: RedisCtor }).default ?? redisClient, redisBinary, waymark);
    }
  } finally {
    fs.rmSync(o.dir, { recursive: true, force: true });
    try {
      fs.rmdirSync(path.dirname(o.dir));
    } catch {
      // not empty: leave it
    }
  }
  emit({ name: 'done', seconds: sig((now() - t0) / 1000, 3) });
}

main().then(
  () => process.exit(0), // client libraries may keep timers alive
  (err: unknown) => {
    process.stderr.write(`bench:peers failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
