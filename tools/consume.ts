/** `waymark consume`: reads a topic as a consumer group and prints each message. */
import { UsageError } from './args';
import type { Command } from './command';
import { connectForCommand, urlOption } from './broker-options';
import { LineBuffer } from './io';
import type { StartAt } from '../sdk/index';

export const consumeCommand: Command = {
  spec: {
    name: 'consume',
    summary: 'Read messages of a topic as a consumer group and print them.',
    positionals: [],
    options: {
      topic: { type: 'string', valueName: 'T', help: 'the topic (required)' },
      group: { type: 'string', valueName: 'G', help: 'the consumer group (required); its position is committed as it goes' },
      from: { type: 'string', valueName: 'WHERE', help: 'committed (default, else earliest), earliest, latest, or an OFFSET in every channel (clamped to each channel\'s range)' },
      channel: { type: 'integer', valueName: 'C', help: 'read only this channel' },
      max: { type: 'integer', valueName: 'N', min: 1, help: 'stop after N messages (default: run until Ctrl-C)' },
      json: { type: 'boolean', help: 'print one JSON object per message (body as UTF-8 text)' },
      url: urlOption,
    },
    details: 'Lines: channel offset key body. The group position is committed every second and at exit.',
  },
  async run(args, io) {
    const topic = args.flags.topic as string | undefined;
    const group = args.flags.group as string | undefined;
    if (!topic) throw new UsageError('--topic is required');
    if (!group) throw new UsageError('--group is required');
    const from = (args.flags.from as string | undefined) ?? 'committed';
    const channel = args.flags.channel as number | undefined;
    let start: StartAt;
    if (from === 'committed' || from === 'earliest' || from === 'latest') start = from;
    else if (/^\d+$/.test(from)) start = { offsets: {} };
    else throw new UsageError(`--from must be committed, earliest, latest or an offset, not ${JSON.stringify(from)}`);
    const client = await connectForCommand(args.flags.url);
    try {
      const channels = channel !== undefined ? [channel] : undefined;
      if (typeof start === 'object' && 'offsets' in start) {
        const info = await client.admin.describeTopic(topic);
        // One OFFSET for every channel: a channel whose range does not hold it starts at its nearer end (said on stderr).
        const wanted = Number(from);
        for (const c of channels ?? info.channelStates.map((s) => s.channel)) {
          const range = info.channelStates.find((s) => s.channel === c);
          const offset = range ? Math.min(Math.max(wanted, range.logStartOffset), range.highWatermark) : wanted;
          if (offset !== wanted) io.err(`channel ${c}: offset ${wanted} is ${offset > wanted ? `before its first offset` : `past its end (next offset ${offset})`}; starting at ${offset}\n`);
          start.offsets[c] = offset;
        }
      }
      const consumer = await client.consumer({ topic, group, channels, start, fallback: 'earliest' });
      const max = (args.flags.max as number | undefined) ?? Infinity;
      const out = new LineBuffer(io);
      let stopping = false;
      const onSignal = (): void => {
        stopping = true;
        void consumer.close();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      let seen = 0;
      while (seen < max && !stopping) {
        const r = await consumer.next();
        if (r.done) break;
        const m = r.value;
        const body = Buffer.from(m.body).toString('utf8');
        const ok = out.push(args.flags.json ? JSON.stringify({ ...m, body }) : `${m.channel} ${m.offset} ${m.key ?? '-'} ${body}`);
        seen++;
        if (!ok) break;
        out.flush(); // a live tail shows each message as it comes
      }
      out.flush();
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
      await consumer.close();
      return 0;
    } finally {
      client.close();
    }
  },
};
