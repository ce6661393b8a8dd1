/**
 * The broker process of bench/ws.ts: `startServer` on a free loopback port with data in the
 * given folder (sync "batch": acknowledged after fdatasync, the default), plus the
 * in-process baselines, run on request over the IPC channel:
 *
 *   engineAppend  store.appendBatch of pre-encoded batches (the SDK's format), `inFlight` at
 *                 a time — what the broker's storage does with no network in front of it
 *   fill          the consume backlog, the same way (8 in flight)
 *   engineRead    store.readBatches of a whole topic from offset 0 in push-sized chunks
 *   fsyncLatency  write + fdatasync of `bytes` to a plain file, back to back, one at a time:
 *                 the floor of an acknowledged-after-fdatasync produce
 *   engineAppendLatency  appendBatch of one-message batches at a fixed rate: latency to durable
 *   echoStart     a bare µWS WebSocket server answering every binary message with 16 bytes:
 *                 the transport with no broker behind it
 *
 * Not a user tool: started by bench/ws.ts with fork() (IPC), stopped with SIGTERM.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import uWS from 'uWebSockets.js';
import { startServer, type RunningServer } from '../../server/index';
import { percentile, sig } from '../common';
import { paced } from '../pacer';
import { makeBatches, settle, type BrokerCommand } from './shared';

let server: RunningServer;
let dataDir = '';
const t0 = performance.now();

async function engineAppend(c: Extract<BrokerCommand, { cmd: 'engineAppend' }>): Promise<Record<string, number>> {
  const store = server.store;
  const batches = makeBatches(Math.min(c.batchCount, 64), c.batchMessages, c.bodyBytes, c.compression);
  settle();
  let next = 0;
  let bytes = 0;
  const started = performance.now();
  // `inFlight` appends at a time, like the SDK producer's in-flight batches. appendBatch owns
  // (patches) its batch, so each append gets a copy, as the broker's session copies a frame.
  const lane = async (): Promise<void> => {
    while (next < c.batchCount) {
      const batch = batches[next++ % batches.length]!.slice();
      bytes += batch.length;
      await store.appendBatch(c.topic, 0, batch);
    }
  };
  await Promise.all(Array.from({ length: c.inFlight }, lane));
  const seconds = (performance.now() - started) / 1000;
  return { seconds, messages: c.batchCount * c.batchMessages, storedBytes: bytes };
}

async function fill(c: Extract<BrokerCommand, { cmd: 'fill' }>): Promise<Record<string, number>> {
  const batchCount = Math.ceil(c.messages / c.batchMessages);
  const r = await engineAppend({ cmd: 'engineAppend', topic: c.topic, batchCount, batchMessages: c.batchMessages, bodyBytes: c.bodyBytes, compression: true, inFlight: 8 });
  return { ...r, highWatermark: server.store.channelState(c.topic, 0).highWatermark };
}

async function engineRead(c: Extract<BrokerCommand, { cmd: 'engineRead' }>): Promise<Record<string, number>> {
  const store = server.store;
  const end = store.channelState(c.topic, 0).highWatermark;
  settle();
  let offset = store.channelState(c.topic, 0).logStartOffset;
  let bytes = 0;
  const started = performance.now();
  while (offset < end) {
    const read = await store.readBatches(c.topic, 0, { offset, maxBytes: c.maxBytes });
    if (read.batchCount === 0) break;
    bytes += read.bytes.length;
    offset = read.nextOffset;
  }
  return { seconds: (performance.now() - started) / 1000, messages: offset, bytes };
}

async function fsyncLatency(c: Extract<BrokerCommand, { cmd: 'fsyncLatency' }>): Promise<Record<string, number>> {
  const file = path.join(dataDir, 'fsync-latency.bin');
  const fd = fs.openSync(file, 'w');
  const buf = Buffer.alloc(c.bytes, 7);
  const samples: number[] = [];
  const started = performance.now();
  let position = 0;
  try {
    // Back to back, one at a time: the duration of one write + fdatasync of one small
    // message, the least an acknowledged-after-fdatasync produce can wait.
    while (performance.now() - started < c.seconds * 1000) {
      const t = performance.now();
      await new Promise<void>((resolve, reject) => fs.write(fd, buf, 0, buf.length, position, (err) => (err ? reject(err) : resolve())));
      await new Promise<void>((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
      position += buf.length;
      samples.push(performance.now() - t);
    }
  } finally {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  }
  const sorted = Float64Array.from(samples).sort();
  return { samples: sorted.length, p50_ms: sig(percentile(sorted, 0.5), 3), p99_ms: sig(percentile(sorted, 0.99), 3), max_ms: sig(sorted[sorted.length - 1]!, 3) };
}

/**
 * store.appendBatch of one-message batches at a fixed rate: the latency from each message's
 * due time to durable, with no network, protocol or SDK in front of the engine. Paced as the
 * SDK's latency pass is (bench/pacer.ts: a worker thread wakes this one at each due time).
 * Until session 7 a 1 ms timer appended the ≈ rate/1000 messages due at each tick: bursts of
 * ten, of which nine waited for the first one's fdatasync, which made this floor's median
 * about two fdatasyncs instead of one and a half.
 */
async function engineAppendLatency(c: Extract<BrokerCommand, { cmd: 'engineAppendLatency' }>): Promise<Record<string, number>> {
  const store = server.store;
  const batch = makeBatches(1, 1, c.bodyBytes, false)[0]!;
  const count = Math.round(c.rate * c.seconds);
  const intervalMs = 1000 / c.rate;
  const samples = new Float64Array(count);
  let done = 0;
  let failure: unknown = null;
  const t0 = performance.now() + 50;
  let finished!: () => void;
  const allDone = new Promise<void>((resolve) => (finished = resolve));
  let sent = 0;
  let pacing = true;
  const settled = (): void => {
    if (++done === sent && !pacing) finished();
  };
  await paced(t0, intervalMs, count, (due) => {
    const i = sent++;
    store.appendBatch(c.topic, 0, batch.slice()).then(
      () => {
        samples[i] = performance.now() - due;
        settled();
      },
      (err: unknown) => {
        failure ??= err;
        settled();
      },
    );
    return failure === null;
  });
  pacing = false;
  if (done < sent) await allDone;
  if (failure) throw failure;
  const warm = samples.subarray(Math.min(count - 1, c.rate)).sort(); // the first second is warm-up
  return { samples: warm.length, p50_ms: sig(percentile(warm, 0.5), 3), p90_ms: sig(percentile(warm, 0.9), 3), p99_ms: sig(percentile(warm, 0.99), 3), max_ms: sig(warm[warm.length - 1]!, 3) };
}

let echoPort = 0;

function echoStart(): Promise<Record<string, number>> {
  if (echoPort) return Promise.resolve({ port: echoPort });
  const ack = new Uint8Array(16); // about a ProduceOk frame's size
  const app = uWS.App();
  app.ws('/echo', {
    maxPayloadLength: 64 * 1024 * 1024,
    maxBackpressure: 64 * 1024 * 1024,
    compression: uWS.DISABLED,
    idleTimeout: 120,
    message: (ws) => {
      ws.send(ack, true);
    },
  });
  return new Promise((resolve, reject) => {
    app.listen('127.0.0.1', 0, (socket) => {
      if (!socket) return reject(new Error('echo server cannot listen'));
      echoPort = uWS.us_socket_local_port(socket as unknown as uWS.us_socket);
      resolve({ port: echoPort });
    });
  });
}

async function run(c: BrokerCommand): Promise<Record<string, number | string>> {
  switch (c.cmd) {
    case 'engineAppend':
      return engineAppend(c);
    case 'fill':
      return fill(c);
    case 'engineRead':
      return engineRead(c);
    case 'fsyncLatency':
      return fsyncLatency(c);
    case 'engineAppendLatency':
      return engineAppendLatency(c);
    case 'echoStart':
      return echoStart();
    case 'cpu': {
      const u = process.cpuUsage();
      return { cpuMicros: u.user + u.system, wallMs: performance.now() - t0 };
    }
    case 'gc':
      settle();
      return {};
    case 'deleteTopic':
      if (server.store.hasTopic(c.topic)) await server.store.deleteTopic(c.topic);
      return {};
  }
}

async function main(): Promise<void> {
  const at = process.argv.indexOf('--data');
  dataDir = process.argv[at + 1]!;
  if (at < 0 || !dataDir || !process.send) throw new Error('bench/ws-phases/broker.js is started by bench/ws.js (fork, --data DIR)');
  server = await startServer({ data: dataDir, port: 0, host: '127.0.0.1', sync: 'batch' });
  process.on('message', (message: BrokerCommand & { id: number }) => {
    run(message).then(
      (ok) => process.send!({ id: message.id, ok }),
      (err: unknown) => process.send!({ id: message.id, error: (err as Error).stack ?? String(err) }),
    );
  });
  const stop = (): void => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('disconnect', stop); // the bench process died: do not linger
  process.send({ listening: server.port }); // once the handlers are in place
}

main().catch((err: unknown) => {
  process.send?.({ error: (err as Error).stack ?? String(err) });
  process.stderr.write(`bench ws broker: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
