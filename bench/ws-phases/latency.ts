/**
 * Latency phase of bench/ws.ts: end-to-end, produce → consumer, at a fixed rate (10,000
 * messages a second by default) of 100 B messages. One SDK producer and one stream-group
 * consumer (start "latest"), each on its own connection, in a fresh client process
 * (latency-client.ts: not this one, whose heap the earlier phases shaped); the producer's
 * defaults (lingerMs 0: a batch goes at the end of the current turn; acknowledged after
 * fdatasync). Message i is due at t0 + i / rate; the sender (bench/pacer.ts: woken at each
 * due time by a worker thread, so the client's event loop never blocks) sends every
 * message when it is due, with its due time in the body. The
 * latency of a message is (consumer has it) − (its due time), so time the sender spent behind
 * schedule counts too (no coordinated omission). The first seconds are warm-up, not counted.
 *
 * Floors measured in the same run, at the same rate:
 *   engine store.appendBatch of one-message batches in the broker process, paced the same
 *          way, from the due time: the engine's own latency to durable at this rate, no
 *          network or SDK;
 *   echo   a produce frame of one 100 B message sent with `ws` to a bare µWS server in the
 *          broker process, answered with 16 bytes, paced the same way, from the due time:
 *          one round trip through the transport (a produce → push also crosses the
 *          loopback twice);
 *   fsync  the duration of one write + fdatasync of one message's bytes to a plain file in
 *          the broker process, back to back: what an acknowledged-after-fdatasync produce
 *          cannot beat (at 10,000 msg/s the broker's group commit puts several messages in
 *          one fdatasync).
 */
import { fork } from 'node:child_process';
import * as path from 'node:path';
import { WebSocket } from 'ws';
import { connect } from '../../sdk/index';
import { encodeBatch } from '../../engine/index';
import { encodeFrame } from '../../protocol/frames';
import { blockP99s, emit, latencySummary, now, progress, quiesceDisk, Samples, sig, type Json } from '../common';
import { paced } from '../pacer';
import { brokerBusy, pin, type BrokerChild, type Options } from './shared';

/** Warm-up of the floors (they run after the SDK pass, in processes already warm). */
const floorWarmupMs = 1000;

export async function latencyPhase(o: Options, broker: BrokerChild): Promise<{ p50: number; p99: number; max: number }> {
  const topic = 'latency';
  quiesceDisk(); // the consume phase just deleted its backlog (see quiesceDisk)
  const admin = await connect(broker.url, { clientName: 'bench-admin' });
  await admin.admin.createTopic(topic, { channels: 1 });
  admin.close();

  progress(`latency: SDK produce → consume at ${o.latencyRate.toLocaleString('en')} msg/s for ${o.latencyWarmupSeconds} s of warm-up, then ${o.latencySeconds} s measured (a fresh client process)`);
  const params: LatencyParams = { latencyRate: o.latencyRate, latencySeconds: o.latencySeconds, latencyWarmupSeconds: o.latencyWarmupSeconds };
  const { result: sdk, brokerBusy: busy } = await brokerBusy(broker, () => sdkLatencyInChild(broker.url, topic, params, o));
  const floorSeconds = Math.min(o.latencySeconds, 10);
  progress(`latency: engine floor (appendBatch of one-message batches in the broker process) at the same rate for ${floorSeconds} s`);
  await broker.call({ cmd: 'gc' });
  const engine = await brokerBusy(broker, () => broker.call({ cmd: 'engineAppendLatency', topic, rate: o.latencyRate, seconds: floorSeconds, bodyBytes: 100 }));

  progress(`latency: echo floor at the same rate for ${floorSeconds} s`);
  const echoPort = ((await broker.call({ cmd: 'echoStart' })) as { port: number }).port;
  const echo = await echoLatency(echoPort, o.latencyRate, floorSeconds);
  progress(`latency: fdatasync floor, back to back, for ${floorSeconds} s`);
  const fsync = await broker.call({ cmd: 'fsyncLatency', seconds: floorSeconds, bytes: 128 });

  emit({
    name: 'latency',
    what: 'produce → consumer, from the due time',
    rate: o.latencyRate,
    seconds: o.latencySeconds,
    warmupSeconds: o.latencyWarmupSeconds,
    bodyBytes: 100,
    ...sdk,
    brokerBusy: busy,
    engineFloor: { ...engine.result, brokerBusy: engine.brokerBusy },
    echoFloor: latencySummary(echo, 'ms'),
    fsyncFloor: fsync,
  });
  await broker.call({ cmd: 'deleteTopic', topic });
  return { p50: sdk.p50_ms as number, p99: sdk.p99_ms as number, max: sdk.max_ms as number };
}

/** What the SDK pass needs of the options (they cross a process boundary). */
export interface LatencyParams {
  latencyRate: number;
  latencySeconds: number;
  latencyWarmupSeconds: number;
}

/**
 * Runs sdkLatency in a fresh child process (latency-client.ts says why), pinned as this
 * process is; with --client-cpu-prof it writes its own profile next to this process's.
 */
async function sdkLatencyInChild(url: string, topic: string, params: LatencyParams, o: Options): Promise<Json> {
  const execArgv = [...process.execArgv, ...(o.clientCpuProf ? ['--cpu-prof', `--cpu-prof-dir=${path.dirname(o.dir)}`] : [])];
  const child = fork(path.join(__dirname, 'latency-client.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
  if (o.pin) pin(child.pid!, 1);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    return await new Promise<Json>((resolve, reject) => {
      child.once('message', (m: { result?: Json; error?: string }) => (m.result ? resolve(m.result) : reject(new Error(`latency client: ${m.error}`))));
      child.once('exit', (code, signal) => reject(new Error(`latency client exited (${signal ?? code}) before answering`)));
      child.send({ url, topic, params });
    });
  } finally {
    await exited;
  }
}

/** The pass's figures: the from-due summary (the goal's), per-second p99s, and the other views. */
export function summarizeSdkLatency(sdk: SdkLatency, params: LatencyParams): Json {
  return {
    ...latencySummary(sdk.fromDue, 'ms'),
    // p99 of each measured second, in order (messages arrive in the order they were due).
    p99_bySecond_ms: blockP99s(sdk.fromDue, params.latencyRate),
    fromSendCall: latencySummary(sdk.fromSend, 'ms'),
    produceAck: latencySummary(sdk.acks, 'ms'),
    received: sdk.received,
    sent: sdk.sent,
    produceRequests: sdk.produceRequests,
  };
}

export interface SdkLatency {
  fromDue: Samples;
  fromSend: Samples;
  /** send() call → its promise resolved (durable on the broker). */
  acks: Samples;
  sent: number;
  received: number;
  /** Produce frames the broker saw (its metrics): how many batches the producer made. */
  produceRequests: number;
}

export async function sdkLatency(url: string, topic: string, o: LatencyParams): Promise<SdkLatency> {
  const producerClient = await connect(url, { clientName: 'bench-latency-producer' });
  const consumerClient = await connect(url, { clientName: 'bench-latency-consumer' });
  try {
    const producer = await producerClient.producer({ topic });
    const consumer = await consumerClient.consumer({ topic, group: 'bench-latency', start: 'latest' });
    const count = Math.round(o.latencyRate * (o.latencyWarmupSeconds + o.latencySeconds));
    const warmupMs = o.latencyWarmupSeconds * 1000;
    const intervalMs = 1000 / o.latencyRate;
    // Preallocated: the harness itself should add as little garbage as it can (see Samples).
    const fromDue = new Samples(count);
    const fromSend = new Samples(count);
    // Times go into and out of bodies through one scratch pair (no DataView per message).
    const scratch = new Float64Array(2);
    const scratchBytes = new Uint8Array(scratch.buffer);
    let received = 0;
    const t0 = now() + 50;
    // The callback style (consumer.run): messages that arrive together are handed over without
    // a promise each, as a consuming application would take them.
    let allReceived!: () => void;
    const receivedAll = new Promise<void>((resolve) => (allReceived = resolve));
    const receiving = consumer.run((message) => {
      const at = now();
      const body = message.body;
      for (let b = 0; b < 16; b++) scratchBytes[b] = body[b]!;
      const due = scratch[0]!;
      if (due - t0 >= warmupMs) {
        fromDue.push(at - due);
        fromSend.push(at - scratch[1]!);
      }
      if (++received === count) allReceived();
    });
    receiving.catch(() => undefined); // a failure surfaces where `receiving` is awaited below, not as an unhandled rejection
    let acked = 0;
    let failure: unknown = null;
    const acks = new Samples(count);
    const produceFrames0 = await produceFrames(url);
    await paced(t0, intervalMs, count, (due) => {
      const body = new Uint8Array(100); // a new body per message, as an application would have
      const sentAt = now();
      scratch[0] = due;
      scratch[1] = sentAt;
      body.set(scratchBytes, 0);
      producer.send({ body }).then(
        () => {
          acked++;
          if (due - t0 >= warmupMs) acks.push(now() - sentAt);
        },
        (err: unknown) => (failure = err),
      );
      return !failure;
    });
    if (failure) throw failure;
    await producer.flush();
    for (let i = 0; i < 100 && acked < count && !failure; i++) await new Promise((resolve) => setImmediate(resolve));
    if (failure || acked < count) throw failure ?? new Error(`${count - acked} sends unacknowledged after flush`);
    // Everything is acknowledged; give the consumer a moment for the tail, then stop.
    await Promise.race([receivedAll, receiving, new Promise((resolve) => setTimeout(resolve, 5000))]);
    await consumer.close();
    await producer.close();
    return { fromDue, fromSend, acks, sent: count, received, produceRequests: (await produceFrames(url)) - produceFrames0 };
  } finally {
    producerClient.close();
    consumerClient.close();
  }
}

/** The broker's count of produce frames so far (from /metrics on the same port). */
async function produceFrames(wsUrl: string): Promise<number> {
  const text = await (await fetch(wsUrl.replace(/^ws/, 'http').replace(/\/v1\/ws$/, '/metrics'))).text();
  const m = /^waymark_frames_total\{type="produce"\} (\d+)/m.exec(text);
  return m ? Number(m[1]) : 0; // no line yet: no produce frame so far
}

/** Round trips of one-message produce frames to the bare echo server, at the rate, one at a time when due. */
async function echoLatency(port: number, ratePerSecond: number, seconds: number): Promise<number[]> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/echo`, { perMessageDeflate: false });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const frame = encodeFrame({ id: 1, produce: { topic: 'echo', channel: 0, batch: encodeBatch([{ body: new Uint8Array(100) }]).batch } });
  const samples: number[] = [];
  const intervalMs = 1000 / ratePerSecond;
  const count = Math.round(ratePerSecond * seconds);
  const dues: number[] = [];
  let answered = 0;
  const t0 = now() + 50;
  ws.on('message', () => {
    const due = dues[answered++]!;
    if (due - t0 >= floorWarmupMs) samples.push(now() - due);
  });
  await paced(t0, intervalMs, count, (due) => {
    dues.push(due);
    ws.send(frame, { binary: true });
    return true;
  });
  while (answered < count) await new Promise((resolve) => setTimeout(resolve, 5));
  ws.close();
  return samples.map((x) => sig(x, 6));
}
