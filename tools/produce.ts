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
      'Prints channel, offset and msgId of each message once the broker has made it durable. From stdin, lines are sent as they are read (as UTF-8 text, without their line ends); a line the broker would refuse (over 8 MiB, say) stops the run before it is sent: the lines before it are sent and printed, none after it, and the command exits 2 naming the line. With --raw, stdin is read to its end and sent as one message with its exact bytes (empty stdin: one empty message); stdin over 8 MiB (the limit of one message) sends nothing and exits 2 (MESSAGE_TOO_LARGE).',
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
    const print = (r: SendResult): void => {
      out.push(args.flags.json ? JSON.stringify(r) : `${r.channel} ${r.offset} ${r.msgId}`);
    };
    try {
      const producer = await client.producer({ topic, channel: args.flags.channel as number | undefined });
      // Every send's failure is taken at once (a rejection left for Promise.all after the read
      // loop came out as an unhandled rejection and a stack trace); the first one stops the run.
      let failure: unknown = null;
      const sends: Array<Promise<void>> = [];
      // Printed in input order: acknowledgements come back per channel, so lines sent to
      // different channels printed interleaved (a, e, b, f, …), and a script could not match
      // them to its input.
      let printed: Promise<void> = Promise.resolve();
      const send = (message: string | Uint8Array): void => {
        const sent = producer.send({ body: message, key, headers });
        sent.catch(() => undefined); // taken below, in order; not an unhandled rejection meanwhile
        printed = printed.then(() => sent).then(print, (err: unknown) => void (failure ??= err));
        sends.push(printed);
      };
      if (rawBody !== null) {
        send(rawBody);
      } else if (body !== undefined && body !== '-') {
        for (let i = 0; i < count; i++) send(body);
      } else {
        // Lines are sent as they are read (stdin may be endless). A line the broker would refuse
        // (checkMessage: the SDK's own limits) stops the read before it is sent: the lines
        // before it are sent and their acknowledgements printed, no line after it is sent.
        const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
        let lineNumber = 0;
        for await (const text of lines) {
          lineNumber++;
          try {
            checkMessage({ body: text, key, headers });
          } catch (err) {
            if (!(err instanceof WaymarkError)) throw err;
            failure ??= new WaymarkError(err.code, `line ${lineNumber}: ${err.message}; ${sentBefore(lineNumber - 1)}`);
          }
          if (failure !== null) break;
          send(text);
        }
        lines.close();
      }
      await Promise.all(sends);
      out.flush();
      if (failure !== null) throw failure;
      await producer.close();
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

/** What a run stopped at a refused line had sent. */
function sentBefore(lines: number): string {
  if (lines === 0) return 'nothing was sent';
  return `the ${lines === 1 ? 'line' : `${lines} lines`} before it ${lines === 1 ? 'was' : 'were'} sent, none after it`;
}
