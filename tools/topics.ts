/** `waymark topics list|create|describe|delete`: topic administration over the protocol. */
import { formatHelp, optionUsage, parseArgs, UsageError, type CommandSpec } from './args';
import type { Command } from './command';
import { connectForCommand, urlOption } from './broker-options';
import type { TopicDescription } from '../sdk/index';

const json = { type: 'boolean', help: 'print JSON' } as const;

const actions: Record<string, CommandSpec> = {
  list: { name: 'topics list', summary: 'List the topics.', positionals: [], options: { url: urlOption, json } },
  create: {
    name: 'topics create',
    summary: 'Create a topic.',
    positionals: ['NAME'],
    options: {
      channels: { type: 'integer', valueName: 'N', min: 1, help: 'channels (default 1)' },
      'retention-ms': { type: 'integer', valueName: 'MS', help: 'delete whole segments older than this (default: keep)' },
      'retention-bytes': { type: 'integer', valueName: 'BYTES', help: 'keep at most this many bytes per channel (default: no bound)' },
      owner: { type: 'string', valueName: 'TEXT', help: 'who owns the topic' },
      url: urlOption,
      json,
    },
  },
  describe: { name: 'topics describe', summary: 'Show a topic and its channels.', positionals: ['NAME'], options: { url: urlOption, json } },
  delete: { name: 'topics delete', summary: 'Delete a topic and all its messages.', positionals: ['NAME'], options: { url: urlOption } },
};

function line(t: TopicDescription): string {
  return `${t.name}  channels=${t.channels}  retentionMs=${t.retentionMs || '-'}  retentionBytes=${t.retentionBytes || '-'}${t.owner ? `  owner=${t.owner}` : ''}`;
}

export const topicsCommand: Command = {
  spec: {
    name: 'topics',
    summary: 'List, create, describe and delete topics.',
    positionals: ['list|create|describe|delete'],
    options: { url: urlOption },
    details:
      Object.values(actions)
        .map((a) => {
          const flags = Object.entries(a.options)
            .filter(([name]) => name !== 'url' && name !== 'json')
            .map(([name, o]) => ` ${optionUsage(name, o)}`);
          return `  waymark ${a.name}${a.positionals.map((p) => ` ${p}`).join('')}${flags.join('')} — ${a.summary}`;
        })
        .join('\n') + '\nEach action has its own --help (waymark topics create --help).',
  },
  raw: true,
  async run(args, io) {
    // Options may come before the action (`waymark topics --url U create T`): they are kept
    // for the action's own parse, with the value of --url.
    const argv = args.positionals;
    const lead: string[] = [];
    let at = 0;
    while (at < argv.length && argv[at]!.startsWith('--') && argv[at] !== '--help') {
      lead.push(argv[at]!);
      if (argv[at] === '--url' && at + 1 < argv.length) lead.push(argv[++at]!);
      at++;
    }
    const action = argv[at];
    const rest = [...lead, ...argv.slice(at + 1)];
    const spec = action ? actions[action] : undefined;
    if (!spec) throw new UsageError(action ? `unknown action ${JSON.stringify(action)}: use list, create, describe or delete` : 'missing action: list, create, describe or delete');
    const parsed = parseArgs(spec, rest);
    if (parsed.help) {
      io.out(formatHelp(spec));
      return 0;
    }
    const client = await connectForCommand(parsed.flags.url);
    try {
      const name = parsed.positionals[0]!;
      if (action === 'list') {
        const topics = await client.admin.listTopics();
        // A list carries no channel states (describe does): no "channelStates": [] that reads as "no channels".
        const listed = topics.map(({ channelStates: _none, ...topic }) => topic);
        io.out(parsed.flags.json ? `${JSON.stringify(listed)}\n` : topics.map((t) => `${line(t)}\n`).join('') || '(no topics)\n');
      } else if (action === 'create') {
        const t = await client.admin.createTopic(name, {
          channels: (parsed.flags.channels as number | undefined) ?? 1,
          retentionMs: parsed.flags['retention-ms'] as number | undefined,
          retentionBytes: parsed.flags['retention-bytes'] as number | undefined,
          owner: parsed.flags.owner as string | undefined,
        });
        io.out(parsed.flags.json ? `${JSON.stringify(t)}\n` : `created ${line(t)}\n`);
      } else if (action === 'describe') {
        const t = await client.admin.describeTopic(name);
        if (parsed.flags.json) io.out(`${JSON.stringify(t)}\n`);
        else io.out([line(t), ...t.channelStates.map(channelLine)].join('\n') + '\n');
      } else {
        await client.admin.deleteTopic(name);
        io.out(`deleted ${name}\n`);
      }
      return 0;
    } finally {
      client.close();
    }
  },
};

/** `channel 1: 3 messages, offsets 4..6 (next 7), 512 bytes in 1 segment`: both ends of the range are messages. */
function channelLine(c: { channel: number; logStartOffset: number; highWatermark: number; bytes: number; segments: number }): string {
  const count = c.highWatermark - c.logStartOffset;
  const range = count === 0 ? `no messages (next offset ${c.highWatermark})` : `${count} message${count === 1 ? '' : 's'}, offsets ${c.logStartOffset}..${c.highWatermark - 1} (next ${c.highWatermark})`;
  return `  channel ${c.channel}: ${range}, ${c.bytes} bytes in ${c.segments} segment${c.segments === 1 ? '' : 's'}`;
}
