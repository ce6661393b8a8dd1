/** A real broker process on a free loopback port, for the server/SDK/CLI tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { connect, type Client, type ConnectOptions, type Message } from '../sdk/index';
import { loadChecksum } from '../engine/format/index';
import { tempDir } from './helpers';

const child = path.join(__dirname, 'fixtures', 'broker-child.js');

export class BrokerProcess {
  private proc: ChildProcess | null = null;
  port = 0;

  constructor(readonly data: string) {}

  get url(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.proc?.pid ?? 0;
  }

  /** Starts the broker (on the same port as before when restarting) and waits until it listens. */
  async start(): Promise<void> {
    const proc = spawn(process.execPath, [child, this.data, String(this.port || 0)], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.proc = proc;
    this.port = await new Promise<number>((resolve, reject) => {
      const lines = readline.createInterface({ input: proc.stdout! });
      lines.on('line', (line) => {
        const m = /^listening (\d+)$/.exec(line);
        if (m) {
          lines.close();
          resolve(Number(m[1]));
        }
      });
      proc.once('exit', (code) => reject(new Error(`broker exited with ${code} before listening`)));
    });
  }

  /** Stops it: SIGTERM for a graceful stop, SIGKILL for a crash. Resolves when the process is gone. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<number | null> {
    const proc = this.proc;
    if (!proc) return null;
    this.proc = null;
    if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    proc.kill(signal);
    return exited;
  }

  async restart(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    await this.stop(signal);
    await this.start();
  }
}

/** fetch with a JSON body decoded (status and parsed body). */
export async function httpJson(url: string, init: RequestInit = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(url, init);
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (metrics)
  }
  return { status: res.status, body };
}

import WebSocket from 'ws';
import { decodeFrame, encodeFrame, type Frame, type FrameInit } from '../protocol/frames';

/** A bare protocol client: raw frames in, replies by id, pushes and close events recorded. */
export class RawClient {
  private ws!: WebSocket;
  private readonly replies = new Map<number, (frame: Frame) => void>();
  readonly pushes: Frame[] = [];
  readonly unsolicited: Frame[] = [];
  closeCode: number | null = null;
  closeReason = '';
  private closed!: Promise<void>;
  private nextId = 1;

  static async open(url: string, hello = true): Promise<RawClient> {
    const c = new RawClient();
    c.ws = new WebSocket(url);
    c.closed = new Promise((resolve) =>
      c.ws.on('close', (code, reason) => {
        c.closeCode = code;
        c.closeReason = reason.toString();
        resolve();
      }),
    );
    c.ws.on('message', (data: Buffer) => {
      const frame = decodeFrame(data);
      if (frame.id === 0) {
        if (frame.push || frame.pack) c.pushes.push(frame);
        else c.unsolicited.push(frame);
        c.onFrame?.(frame);
        return;
      }
      const waiter = c.replies.get(frame.id);
      c.replies.delete(frame.id);
      waiter?.(frame);
    });
    await new Promise<void>((resolve, reject) => {
      c.ws.once('open', () => resolve());
      c.ws.once('error', reject);
    });
    if (hello) await c.request({ hello: { client: 'raw-test', protocolVersion: 1 } });
    return c;
  }

  onFrame: ((frame: Frame) => void) | null = null;

  /** Sends a request and resolves with its reply (Error replies included). */
  request(body: Omit<FrameInit, 'id'>, id = this.nextId++): Promise<Frame> {
    return new Promise((resolve) => {
      this.replies.set(id, resolve);
      this.ws.send(encodeFrame({ ...body, id }));
    });
  }

  /** Sends arbitrary bytes (binary or text). */
  sendRaw(data: Uint8Array | string): void {
    this.ws.send(data, { binary: typeof data !== 'string' });
  }

  /** Resolves with the next unsolicited frame (an Error with id 0). */
  nextUnsolicited(): Promise<Frame> {
    if (this.unsolicited.length > 0) return Promise.resolve(this.unsolicited.shift()!);
    return new Promise((resolve) => {
      const previous = this.onFrame;
      this.onFrame = (frame) => {
        if (frame.id === 0 && !frame.push && !frame.pack) {
          this.onFrame = previous;
          this.unsolicited.splice(this.unsolicited.indexOf(frame), 1);
          resolve(frame);
        }
      };
    });
  }

  whenClosed(): Promise<void> {
    return this.closed;
  }

  /** Stops reading from the socket (a consumer too slow to keep up), and starts again. */
  pauseReading(): void {
    (this.ws as unknown as { _socket: { pause(): void } })._socket.pause();
  }

  resumeReading(): void {
    (this.ws as unknown as { _socket: { resume(): void } })._socket.resume();
  }

  close(): Promise<void> {
    this.ws.close();
    return this.closed;
  }
}

/**
 * Registers the suite's before/after hooks: one broker process and one client connected to
 * it (unless `connect: false`) for all of the suite's tests. `client()` is valid from the
 * suite's first test on.
 */
export function brokerForSuite(options: { connect?: boolean; connectOptions?: ConnectOptions } = {}): { broker: BrokerProcess; client(): Client } {
  const broker = new BrokerProcess(tempDir());
  let client: Client | null = null;
  before(async () => {
    await loadChecksum();
    await broker.start();
    if (options.connect !== false) client = await connect(broker.url, options.connectOptions);
  });
  after(async () => {
    client?.close();
    // A test may have paused the broker (SIGSTOP) and failed before resuming it.
    if (broker.pid) process.kill(broker.pid, 'SIGCONT');
    await broker.stop();
  });
  return { broker, client: () => client! };
}

/** SIGKILLs the broker and resolves once `client` has seen its connection go. */
export async function killAndLose(broker: BrokerProcess, client: Client): Promise<void> {
  const lost = new Promise<void>((resolve) => client.on('disconnect', () => resolve()));
  await broker.stop('SIGKILL');
  await lost;
}

/** Starts the broker again and resolves once `client` has reconnected (its listeners have run). */
export async function startAndReconnect(broker: BrokerProcess, client: Client): Promise<void> {
  const back = new Promise<void>((resolve) => client.on('reconnect', () => resolve()));
  await broker.start();
  await back;
}

/**
 * A send whose batch went out and got no answer before the broker died (SIGSTOP, then
 * SIGKILL): once this resolves the producer holds it for a resend. Returns the send's promise.
 */
export async function heldForResend<T>(broker: BrokerProcess, client: Client, send: () => Promise<T>): Promise<{ pending: Promise<T> }> {
  process.kill(broker.pid, 'SIGSTOP'); // the request goes out, no reply comes
  const pending = send();
  for (let turn = 0; turn < 2; turn++) await new Promise((resolve) => setImmediate(resolve)); // its batch is sealed and sent in the next turn
  await killAndLose(broker, client);
  return { pending }; // wrapped: an awaited promise of a promise would wait for the send itself
}

/** The next `count` messages of a consumer (next() directly: no loop to leave). */
export async function take(consumer: { next(): Promise<IteratorResult<Message>> }, count: number): Promise<Message[]> {
  const out: Message[] = [];
  while (out.length < count) {
    const r = await consumer.next();
    if (r.done) throw new Error(`consumer ended after ${out.length} of ${count} messages`);
    out.push(r.value);
  }
  return out;
}

/** A message body as UTF-8 text. */
export const text = (m: Message): string => Buffer.from(m.body).toString('utf8');
