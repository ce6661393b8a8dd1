/** `waymark consume`: reads a topic as a consumer group and prints each message. */
import { WaymarkError } from '../engine/format/errors';
import { UsageError } from './args';
import type { Command } from './command';
import { connectForCommand, urlOption } from './broker-options';
import { LineBuffer } from './io';
import type { Message, StartAt } from '../sdk/index';

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
      json: { type: 'boolean', help: 'print one JSON object per message (body as UTF-8 text, or bodyBase64 with --base64)' },
      base64: { type: 'boolean', help: 'print bodies in base64: every byte as it is (binary bodies, text that is not UTF-8)' },
      url: urlOption,
    },
    details: 'Lines: channel offset key body, one message a line: a body\'s backslashes, line feeds and carriage returns are written \\\\, \\n and \\r, and bytes that are not UTF-8 text come out as U+FFFD (use --base64 for them). The group position is committed every second and at exit (--max reached, SIGINT or SIGTERM): a later run starts after the last message printed. If the connection to the broker is lost it says so on stderr and exits 1; messages printed since the last commit are read again by the next run.',
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
    else if (/^\d+$/.test(from)) {
      // Past 2^53 - 1 a number is rounded (99999999999999999999 read as 100000000000000000000):
      // refused rather than read as another offset. No channel holds one so high.
      if (!Number.isSafeInteger(Number(from))) throw new UsageError(`--from ${from}: an offset is at most ${Number.MAX_SAFE_INTEGER}`);
      start = { offsets: {} };
    } else throw new UsageError(`--from must be committed, earliest, latest or an offset, not ${JSON.stringify(from)}`);
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
      // What ends the run besides --max: a signal (a normal end, committed) or a lost
      // connection (a failure: the command connects without reconnecting, so no message would
      // ever come and the process would drain its event loop and exit 0, as if done).
      let ended = null as 'signal' | WaymarkError | null; // (a cast: set in callbacks, so TS must not narrow it to null)
      let wake: () => void = () => undefined;
      let lastPrinted: Message | null = null;
      const interrupted = new Promise<null>((resolve) => (wake = () => resolve(null)));
      const onSignal = (): void => {
        ended ??= 'signal';
        wake();
      };
      const stopWatching = client.on('disconnect', () => {
        ended ??= new WaymarkError('CONNECTION_LOST', `lost the connection to ${client.url}; the group resumes from its last commit`);
        wake();
      });
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        // Every message taken from the consumer is printed before anything else happens. The
        // consumer commits what the application is done with: each message once the next is
        // asked for, and the last one printed is committed explicitly below. The last next()
        // may be left waiting when a signal ends the run: a message it takes after that is in
        // hand, neither printed nor committed (the next run of the group reads it).
        let seen = 0;
        while (seen < max && ended === null) {
          let r;
          try {
            r = await Promise.race([consumer.next(), interrupted]);
          } catch (err) {
            // The consumer saw the lost connection too: said below, once. (A cast: `ended` is set in callbacks.)
            if ((ended as 'signal' | WaymarkError | null) instanceof WaymarkError) break;
            throw err;
          }
          if (r === null || r.done) break;
          const m = r.value;
          const ok = out.push(messageLine(m, args.flags.json === true, args.flags.base64 === true));
          seen++;
          if (!ok || !out.flush()) break; // flushed per message: a live tail shows each as it comes
          lastPrinted = m;
        }
        out.flush();
      } finally {
        process.removeListener('SIGINT', onSignal);
        process.removeListener('SIGTERM', onSignal);
        stopWatching();
      }
      if (ended instanceof WaymarkError) {
        client.close(); // first: a commit on a connection that will never come back would wait for its timeout
        await consumer.close();
        throw ended;
      }
      if (lastPrinted) await consumer.commit(lastPrinted); // printed: done
      await consumer.close(); // commits the other channels' printed positions
      return 0;
    } finally {
      client.close();
    }
  },
};

/**
 * One message as one line. A body with a line feed in it came out as two lines, the second
 * one reading like another message; backslashes are escaped too, so the text can be undone.
 */
export function messageLine(m: Message, json: boolean, base64: boolean): string {
  const bytes = Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength);
  if (json) {
    const { body: _body, ...rest } = m;
    return JSON.stringify(base64 ? { ...rest, bodyBase64: bytes.toString('base64') } : { ...rest, body: bytes.toString('utf8') });
  }
  const body = base64 ? bytes.toString('base64') : bytes.toString('utf8').replace(/[\\\n\r]/g, (c) => (c === '\\' ? '\\\\' : c === '\n' ? '\\n' : '\\r'));
  return `${m.channel} ${m.offset} ${m.key ?? '-'} ${body}`;
}
