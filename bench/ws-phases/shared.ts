/**
 * What the phases of bench/ws.ts share: the options, the broker child process and its
 * commands (IPC), CPU pinning, CPU-use accounting, and pre-encoded batches.
 *
 * Process layout (2 cores, one each): the broker runs in a child process started with
 * `startServer` from the same compiled tree, pinned to CPU 0 with taskset when there is
 * more than one CPU; the client (SDK, load driver, timing) is this process, pinned to CPU 1.
 * The in-process baselines (engine appendBatch, engine readBatches, fdatasync latency, the
 * raw µWS echo server) run in the broker child, so they use the broker's core and the same
 * store code as the broker.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { encodeBatch, lz4Codec, type MessageInput } from '../../engine/index';
import { BodySource, sig, type Json } from '../common';
export { settle } from '../common';

export type Phase = 'produce' | 'consume' | 'latency';
export const phases: Phase[] = ['produce', 'consume', 'latency'];

export interface Options {
  quick: boolean;
  only: Set<Phase>;
  dir: string;
  keep: boolean;
  pin: boolean;
  rounds: number;
  bodySizes: number[];
  /** Messages per produce round, per body size (bodies ≥ 1 KiB use a fifth: same bytes order). */
  produceMessages: number;
  /** Messages a producer hands to send() before awaiting the oldest window. */
  sendWindowMessages: number;
  /** Use producer.sendBatch (arrays of this many messages) as well as send(); 0 = send() only. */
  sendBatchMessages: number;
  compression: boolean;
  backlogMessages: number;
  consumeBodyBytes: number;
  latencyRate: number;
  latencySeconds: number;
  latencyWarmupSeconds: number;
  brokerCpuProf: boolean;
  clientCpuProf: boolean;
  /** Extra node flags for the broker child (e.g. --trace-gc). */
  brokerNodeFlags: string[];
}


// ------------------------------------------------------------------ pinning

/** Pins every thread of `pid` to one CPU; returns a note for the machine line. */
export function pin(pid: number, cpu: number): string {
  // os.cpus(), not availableParallelism(): the latter shrinks once this process is pinned.
  if (os.cpus().length < 2) return 'not pinned (one CPU)';
  try {
    execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
    return `cpu ${cpu}`;
  } catch (err) {
    return `not pinned (${(err as Error).message.split('\n')[0]})`;
  }
}

// ------------------------------------------------------------------ CPU use

/** CPU seconds (user + system) of this process since `from`, and the wall seconds. */
export class CpuClock {
  private readonly cpu0 = process.cpuUsage();
  private readonly t0 = performance.now();

  busy(): { cpuSeconds: number; wallSeconds: number; busy: number } {
    const d = process.cpuUsage(this.cpu0);
    const cpuSeconds = (d.user + d.system) / 1e6;
    const wallSeconds = (performance.now() - this.t0) / 1000;
    return { cpuSeconds, wallSeconds, busy: sig(cpuSeconds / wallSeconds, 3) };
  }
}

// ------------------------------------------------------------------ batches

/**
 * `count` pre-encoded batches of `batchMessages` messages with `bodyBytes` random bodies, no
 * keys, as the SDK producer encodes them (lz4 when `compression` and it pays). The engine
 * baseline appends copies of these; the echo baseline sends them as they are.
 */
export function makeBatches(count: number, batchMessages: number, bodyBytes: number, compression: boolean, bodies = new BodySource('random')): Uint8Array[] {
  const batches: Uint8Array[] = [];
  for (let b = 0; b < count; b++) {
    const messages: MessageInput[] = [];
    for (let i = 0; i < batchMessages; i++) messages.push({ body: bodies.body(bodyBytes) });
    batches.push(encodeBatch(messages, { codec: compression ? lz4Codec : null, producerId: -1 }).batch);
  }
  return batches;
}

/**
 * The bodies a producer sends: `count` distinct random bodies (incompressible), back to back
 * in one buffer, handed out in turn. Back to back, like bodies a producer has just made and
 * that are still in the CPU cache: random views into a 16 MiB pool (BodySource, as
 * bench:engine uses) made every body a cache miss and cost the SDK producer about a quarter
 * of its rate on this machine (1.09 M vs 1.40 M msg/s for sendBatch with the network
 * replaced by an immediate ack) — a property of the pool, not of the SDK.
 */
export function bodyRing(bodyBytes: number, count = 1024): Uint8Array[] {
  const pool = crypto.randomBytes(bodyBytes * count);
  return Array.from({ length: count }, (_, i) => pool.subarray(i * bodyBytes, (i + 1) * bodyBytes));
}

// ------------------------------------------------------------------ the broker child

export type BrokerCommand =
  | { cmd: 'engineAppend'; topic: string; batchCount: number; batchMessages: number; bodyBytes: number; compression: boolean; inFlight: number }
  | { cmd: 'fill'; topic: string; messages: number; bodyBytes: number; batchMessages: number }
  | { cmd: 'engineRead'; topic: string; maxBytes: number }
  | { cmd: 'fsyncLatency'; seconds: number; bytes: number }
  | { cmd: 'engineAppendLatency'; topic: string; rate: number; seconds: number; bodyBytes: number }
  | { cmd: 'echoStart' }
  | { cmd: 'cpu' }
  | { cmd: 'gc' }
  | { cmd: 'deleteTopic'; topic: string };

interface Reply {
  id: number;
  ok?: Json;
  error?: string;
}

/** The broker child process, driven over IPC. */
export class BrokerChild {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (value: Json) => void; reject: (err: Error) => void }>();

  private constructor(
    private readonly proc: ChildProcess,
    readonly port: number,
    readonly pinned: string,
  ) {
    proc.on('message', (message: Reply) => {
      const w = this.waiting.get(message.id);
      if (!w) return;
      this.waiting.delete(message.id);
      if (message.error !== undefined) w.reject(new Error(`broker child: ${message.error}`));
      else w.resolve(message.ok ?? {});
    });
    proc.once('exit', (code, signal) => {
      for (const w of this.waiting.values()) w.reject(new Error(`broker child exited (${code ?? signal})`));
      this.waiting.clear();
    });
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  get pid(): number {
    return this.proc.pid ?? 0;
  }

  /** Starts `node <this tree>/bench/ws-phases/broker.js --data DIR` and waits for it to listen. */
  static async start(data: string, options: { pin: boolean; cpuProf: boolean; profDir: string; nodeFlags?: string[] }): Promise<BrokerChild> {
    const script = path.join(__dirname, 'broker.js');
    const execArgv = [...(options.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${options.profDir}`] : []), ...(options.nodeFlags ?? [])];
    const proc = fork(script, ['--data', data], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
    const port = await new Promise<number>((resolve, reject) => {
      proc.once('message', (m: { listening?: number; error?: string }) => (m.listening ? resolve(m.listening) : reject(new Error(`broker child: ${m.error}`))));
      proc.once('exit', (code) => reject(new Error(`broker child exited with ${code} before listening`)));
    });
    const pinned = options.pin ? pin(proc.pid!, 0) : 'not pinned (--no-pin)';
    return new BrokerChild(proc, port, pinned);
  }

  call(command: BrokerCommand): Promise<Json> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.proc.send({ id, ...command });
    });
  }

  /** Graceful stop (SIGTERM: the broker closes its store); resolves when the process is gone. */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    this.proc.kill('SIGTERM');
    await exited;
  }
}

/** Measures the broker child's CPU use over an async section. */
export async function brokerBusy<T>(broker: BrokerChild, work: () => Promise<T>): Promise<{ result: T; brokerBusy: number }> {
  const a = (await broker.call({ cmd: 'cpu' })) as { cpuMicros: number; wallMs: number };
  const result = await work();
  const b = (await broker.call({ cmd: 'cpu' })) as { cpuMicros: number; wallMs: number };
  return { result, brokerBusy: sig((b.cpuMicros - a.cpuMicros) / 1000 / (b.wallMs - a.wallMs), 3) };
}

