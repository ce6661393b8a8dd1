/** `waymark produce`: sends one message (BODY, --count times) or one message per stdin line. */
import * as readline from 'node:readline';
import { UsageError } from './args';
import type { Command } from './command';
import { connectForCommand, urlOption } from './broker-options';
import { LineBuffer } from './io';
import type { SendResult } from '../sdk/index';

export const produceCommand: Command = {
  spec: {
    name: 'produce',
    summary: 'Send messages to a topic: BODY (repeated --count times), or one message per line of stdin (BODY = - or absent).',
    positionals: [],
    optionalPositionals: ['BODY'],
    options: {
      topic: { type: 'string', valueName: 'T', help: 'the topic (required)' },
      key: { type: 'string', valueName: 'K', help: 'message key (routes to a channel by hash)' },
      channel: { type: 'integer', valueName: 'C', help: 'send to this channel' },
      count: { type: 'integer', valueName: 'N', min: 1, help: 'send BODY this many times (default 1)' },
      header: { type: 'string', valueName: 'NAME=VALUE', help: 'a header (one; for more, use the SDK)' },
      json: { type: 'boolean', help: 'print one JSON object per acknowledged message' },
      url: urlOption,
    },
    details: 'Prints channel, offset and msgId of each message once the broker has made it durable.',
  },
  async run(args, io) {
    const topic = args.flags.topic as string | undefined;
    if (!topic) throw new UsageError('--topic is required');
    const body = args.positionals[0];
    const count = (args.flags.count as number | undefined) ?? 1;
    if (args.flags.count !== undefined && (body === undefined || body === '-')) throw new UsageError('--count needs a BODY');
    let headers: Record<string, string> | undefined;
    if (args.flags.header !== undefined) {
      const text = args.flags.header as string;
      const eq = text.indexOf('=');
      if (eq <= 0) throw new UsageError(`--header needs NAME=VALUE, not ${JSON.stringify(text)}`);
      headers = { [text.slice(0, eq)]: text.slice(eq + 1) };
    }
    const client = await connectForCommand(args.flags.url);
    const out = new LineBuffer(io);
    const print = (r: SendResult): void => {
      out.push(args.flags.json ? JSON.stringify(r) : `${r.channel} ${r.offset} ${r.msgId}`);
    };
    try {
      const producer = await client.producer({ topic, channel: args.flags.channel as number | undefined });
      const key = args.flags.key as string | undefined;
      const sends: Array<Promise<void>> = [];
      if (body !== undefined && body !== '-') {
        for (let i = 0; i < count; i++) sends.push(producer.send({ body, key, headers }).then(print));
      } else {
        const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
        for await (const text of lines) sends.push(producer.send({ body: text, key, headers }).then(print));
      }
      await Promise.all(sends);
      await producer.close();
      out.flush();
      return 0;
    } finally {
      client.close();
    }
  },
};
