/** `waymark produce`: sends one message (BODY, --count times), one message per stdin line, or all of stdin as one message (--raw). */
import * as readline from 'node:readline';
import { UsageError } from './args';
import type { Command } from './command';
import { connectForCommand, urlOption } from './broker-options';
import { LineBuffer } from './io';
import { WaymarkError, type SendResult } from '../sdk/index';
import { checkMessage } from '../engine/format/record-batch';
import { formatLimits } from '../engine/format/limits';

export const produceCommand: Command = {
  spec: {
    name: 'produce',
    summary: 'Send messages to a topic: BODY (repeated --count times), one message per line of stdin (BODY = - or absent), or all of stdin as one message (--raw).',
    positionals: [],
    optionalPositionals: ['BODY'],
    options: {
      topic: { type: 'string', valueName: 'T', help: 'the topic (required)' },
      key: { type: 'string', valueName: 'K', help: 'message key (routes to a channel by hash)' },
      channel: { type: 'integer', valueName: 'C', help: 'send to this channel' },
      count: { type: 'integer', valueName: 'N', min: 1, help: 'send BODY this many times (default 1)' },
      header: { type: 'string', valueName: 'NAME=VALUE', help: 'a header (one; for more, use the SDK)' },
      raw: { type: 'boolean', help: `send all of stdin as one message, its exact bytes (binary is fine; at most ${formatLimits.messageBytesMax} bytes)` },
      json: { type: 'boolean', help: 'print one JSON object per acknowledged message' },
      url: urlOption,
    },
    details:
      'Prints channel, offset and msgId of each message once the broker has made it durable. From stdin, lines are sent as they are read (as UTF-8 text, without their line ends); a line the broker would refuse (over 8 MiB, say) stops the run before it is sent: the lines before it are sent and printed, none after it, and the command exits 2 naming the line. When the broker refuses a message (the topic was deleted, say), printing stops there: the lines printed are exactly those acknowledged before it, and the error names the line to resend from. At most 32,768 messages (64 MiB) are unacknowledged at a time: reading and sending wait for acknowledgements. When stdout is closed (| head), reading (or sending BODY) stops and the command exits 1 saying how many were sent. With --raw, stdin is read to its end and sent as one message with its exact bytes (empty stdin: one empty message); stdin over 8 MiB (the limit of one message) sends nothing and exits 2 (MESSAGE_TOO_LARGE).',
  },
  async run(args, io) {
    const topic = args.flags.topic as string | undefined;
    if (!topic) throw new UsageError('--topic is required');
    const body = args.positionals[0];
    const count = (args.flags.count as number | undefined) ?? 1;
    if (args.flags.count !== undefined && (body === undefined || body === '-')) throw new UsageError('--count needs a BODY');
    const raw = args.flags.raw === true;
    if (raw && body !== undefined && body !== '-') throw new UsageError('--raw sends stdin as one message: give no BODY (or -)');
    let headers: Record<string, string> | undefined;
    if (args.flags.header !== undefined) {
      const text = args.flags.header as string;
      const eq = text.indexOf('=');
      if (eq <= 0) throw new UsageError(`--header needs NAME=VALUE, not ${JSON.stringify(text)}`);
      headers = { [text.slice(0, eq)]: text.slice(eq + 1) };
    }
    const key = args.flags.key as string | undefined;
    // --raw: all of stdin, read and checked before connecting, so a refused one sends nothing.
    let rawBody: Buffer | null = null;
    if (raw) {
      rawBody = await readAllBounded(process.stdin, formatLimits.messageBytesMax);
      checkMessage({ body: rawBody, key, headers });
    }
    const client = await connectForCommand(args.flags.url);
    const out = new LineBuffer(io);
    // Written once the acknowledgements that came together are gathered, not at the end: stdin
    // may be endless (a pipe from a log), and its acknowledgements are wanted as they come.
    // When stdout goes away (`… | head -2`), reading stops: acknowledgements that cannot be
    // printed are no record of what was stored, and sending on blind was 20,000 lines stored
    // with exit 0 (helper-47).
    let flushing = false;
    let outputGone = false;
    const print = (r: SendResult): void => {
      if (!out.push(args.flags.json ? JSON.stringify(r) : `${r.channel} ${r.offset} ${r.msgId}`)) outputGone = true;
      if (flushing) return;
      flushing = true;
      setImmediate(() => {
        flushing = false;
        if (!out.flush()) outputGone = true;
      });
    };
    try {
      const producer = await client.producer({ topic, channel: args.flags.channel as number | undefined });
      // Acknowledgements are printed in input order and stop at the first failure; the read
      // loop stops at a refused line (checkMessage) before sending it.
      const acks = new InOrderAcks<SendResult>(print, rawBody !== null || (body !== undefined && body !== '-') ? 'message' : 'line');
      let refused: WaymarkError | null = null;
      const send = (message: string | Uint8Array): void => acks.add(producer.send({ body: message, key, headers }), typeof message === 'string' ? message.length : message.byteLength);
      if (rawBody !== null) {
        send(rawBody);
      } else if (body !== undefined && body !== '-') {
        // At most a window unacknowledged (InOrderAcks.room): sent all at once, --count 10^9
        // queued every message before anything went out and ran out of memory (helper-59).
        for (let i = 0; i < count; i++) {
          const wait = acks.room();
          if (wait) await wait;
          if (acks.failed || outputGone) break;
          send(body);
        }
      } else {
        // Lines are sent as they are read (stdin may be endless). A line the broker would refuse
        // (checkMessage: the SDK's own limits) stops the read before it is sent: the lines
        // before it are sent and their acknowledgements printed, no line after it is sent.
        const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
        let lineNumber = 0;
        for await (const text of lines) {
          const wait = acks.room(); // stdin as fast as it comes (`yes |`) would be held whole
          if (wait) await wait;
          if (acks.failed || outputGone) break;
          lineNumber++;
          try {
            checkMessage({ body: text, key, headers });
          } catch (err) {
            if (!(err instanceof WaymarkError)) throw err;
            refused = new WaymarkError(err.code, `line ${lineNumber}: ${err.message}; ${sentBefore(lineNumber - 1)}`);
            break;
          }
          send(text);
        }
        lines.close();
      }
      await acks.settled();
      if (!out.flush()) outputGone = true;
      // A failed send comes before the refused line: it is the one the user resends from.
      const failure = acks.error() ?? refused;
      if (failure !== null) throw failure;
      await producer.close();
      if (outputGone) {
        const what = acks.what;
        io.err(`waymark: produce: stdout was closed, so ${what === 'line' ? 'reading' : 'sending'} stopped: ${acks.count === 1 ? `1 ${what} was` : `${acks.count} ${what}s were`} sent and acknowledged, not all of them printed\n`);
        return 1;
      }
      return 0;
    } finally {
      client.close();
    }
  },
};

/**
 * All of `input` as one buffer. Past `bytesMax` it stops reading (nothing more is held: stdin
 * may be endless) and fails with MESSAGE_TOO_LARGE.
 */
async function readAllBounded(input: NodeJS.ReadableStream, bytesMax: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of input) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    size += bytes.length;
    if (size > bytesMax) {
      throw new WaymarkError('MESSAGE_TOO_LARGE', `stdin is over ${bytesMax} bytes, the limit of one message (--raw); nothing was sent`);
    }
    chunks.push(bytes);
  }
  return Buffer.concat(chunks, size);
}

/**
 * Acknowledgements printed in the order the messages were sent (they come back per channel,
 * so lines sent to different channels came back interleaved and a script could not match
 * them to its input), stopping at the first failure: the lines printed are exactly the ones
 * acknowledged before the first that failed, the line to resend from. An acknowledgement that
 * comes after the failure is not printed (it was, and a script resending from the failed line
 * stored the later ones twice).
 */
export class InOrderAcks<T> {
  private chain: Promise<void> = Promise.resolve();
  private sent = 0;
  private failedAt = 0;
  private cause: unknown = null;
  /** Sent and not yet printed or passed over, and their bytes (bodies). */
  private pending = 0;
  private pendingBytes = 0;
  private wake: (() => void) | null = null;

  /**
   * `what` names one input in the error: 'line' (stdin) or 'message' (BODY --count N). At
   * most `windowMessages` and `windowBytes` (but always one) are unacknowledged: room() waits.
   */
  constructor(
    private readonly print: (result: T) => void,
    readonly what: 'line' | 'message',
    private readonly windowMessages = produceWindowMessages,
    private readonly windowBytes = produceWindowBytes,
  ) {}

  /** Null when another may be sent now; else a promise that resolves once one has settled. */
  room(): Promise<void> | null {
    if (this.pending < this.windowMessages && (this.pendingBytes < this.windowBytes || this.pending === 0)) return null;
    return new Promise((resolve) => (this.wake = resolve));
  }

  /** How many were added (sent). */
  get count(): number {
    return this.sent;
  }

  /** True once an acknowledgement in order has failed. */
  get failed(): boolean {
    return this.failedAt > 0;
  }

  add(ack: Promise<T>, bytes = 0): void {
    const n = ++this.sent;
    this.pending++;
    this.pendingBytes += bytes;
    ack.catch(() => undefined); // taken below, in order; not an unhandled rejection meanwhile
    this.chain = this.chain
      .then(() => ack)
      .then(
        (result) => {
          this.settle(bytes);
          if (this.failedAt === 0) this.print(result);
        },
        (err: unknown) => {
          this.settle(bytes);
          if (this.failedAt > 0) return;
          this.failedAt = n;
          this.cause = err;
        },
      );
  }

  /** One has been printed or passed over: room for another (room()). */
  private settle(bytes: number): void {
    this.pending--;
    this.pendingBytes -= bytes;
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Resolves once every acknowledgement so far is printed or passed over; never rejects. */
  settled(): Promise<void> {
    return this.chain;
  }

  /**
   * The first failure, saying which input failed, how many before it were acknowledged and
   * what became of the ones sent after it; the cause itself when it was the only one sent.
   */
  error(): unknown {
    if (this.failedAt === 0) return null;
    if (this.sent === 1 || !(this.cause instanceof WaymarkError)) return this.cause;
    const before = this.failedAt - 1;
    const after = this.sent - this.failedAt;
    const acked = before === 0 ? 'none before it was acknowledged' : `the ${before === 1 ? `${this.what} before it was` : `${before} ${this.what}s before it were`} acknowledged (printed)`;
    const later = after === 0 ? '' : `; ${after === 1 ? `the ${this.what} sent after it is` : `the ${after} ${this.what}s sent after it are`} not printed and may or may not be stored`;
    return new WaymarkError(this.cause.code, `${this.what} ${this.failedAt}: ${this.cause.message}; ${acked}${later}`);
  }
}

/**
 * What `waymark produce` leaves unacknowledged at most: enough for the SDK to fill its
 * batches on every channel (1,000 messages, 16 in flight), and a bound on memory and on what
 * is sent past a reader that has gone away (`| head`).
 */
export const produceWindowMessages = 32_768;
export const produceWindowBytes = 64 * 1024 * 1024;

/** What a run stopped at a refused line had sent. */
function sentBefore(lines: number): string {
  if (lines === 0) return 'nothing was sent';
  return `the ${lines === 1 ? 'line' : `${lines} lines`} before it ${lines === 1 ? 'was' : 'were'} sent, none after it`;
}
