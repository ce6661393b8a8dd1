/** `waymark dump`: formats engine/inspect's dumpPath, one line (or JSON object) per item. */
import { dumpPath, type DumpItem } from '../engine/inspect';
import type { Command } from './command';
import { counted, LineBuffer, shownPath, shownTime } from './io';

function shownKey(key: string | null, keyHex: string | undefined): string {
  if (keyHex !== undefined) return `0x${keyHex}`;
  if (key === null) return '-';
  return /^[\x21-\x7e]+$/.test(key) && !key.includes('"') ? key : JSON.stringify(key);
}

export function formatDumpItem(item: DumpItem): string {
  switch (item.type) {
    case 'segment':
      return `# ${shownPath(item.file)} (${item.bytes} bytes, base offset ${item.baseOffset})`;
    case 'record': {
      const where = item.topic !== null ? `${item.topic}/${item.channel} ` : '';
      const extra = [item.deliverAt !== null ? ` deliverAt=${shownTime(item.deliverAt)}` : '', item.headerCount > 0 ? ` headers=${item.headerCount}` : '', item.control ? ' control' : ''].join('');
      return (
        `${where}offset=${item.offset} position=${item.position} msgId=${item.msgId} key=${shownKey(item.key, item.keyHex)} ` +
        `brokerTime=${shownTime(item.brokerTimestamp)} bodyBytes=${item.bodyBytes}${extra} checksum=${item.checksum}`
      );
    }
    case 'damage':
      return `# ${shownPath(item.file)} position ${item.position}: ${item.torn ? 'torn tail' : 'damaged'}, ${item.bytes} bytes: ${item.reason}`;
    case 'index': {
      // (a file shorter than its header has no slot count to show)
      const kix = item.kind === 'kix' && item.slotCount !== undefined ? ` slots=${item.slotCount} slotsUsed=${item.slotsUsed} baseTime=${shownTime(item.baseTimestamp!)}` : '';
      const problem = item.problem ? ` PROBLEM: ${item.problem}` : '';
      const builtFor = item.logBytes === null || item.logBytes === undefined ? '' : ` logBytes=${item.logBytes}`;
      return `# ${shownPath(item.file)}: ${item.kind} magic=${JSON.stringify(item.magic)} version=${item.version} baseOffset=${item.baseOffset} entries=${item.entryCount}${builtFor}${kix} (${item.fileBytes} bytes)${problem}`;
    }
    case 'kix-entry':
      return `entry=${item.entry} keyHash=${item.keyHash} offset=${item.offset} position=${item.position} time=${shownTime(item.timestamp)} prev=${item.prevEntry ?? '-'}`;
    case 'oix-entry':
      return `entry=${item.entry} offset=${item.offset} position=${item.position}`;
    case 'tix-entry':
      return `entry=${item.entry} time=${shownTime(item.timestamp)} offset=${item.offset}`;
  }
}

export const dumpCommand: Command = {
  spec: {
    name: 'dump',
    summary: 'Print the records of a segment, channel, topic or store, or the entries of index files.',
    positionals: ['PATH'],
    options: {
      json: { type: 'boolean', help: 'one JSON object per line (type: segment, record, damage, index, kix-entry, oix-entry, tix-entry)' },
      from: { type: 'integer', valueName: 'OFFSET', help: 'skip records (and index entries) below this offset, per channel' },
      max: { type: 'integer', valueName: 'N', min: 1, help: 'stop after N records (or index entries)' },
      index: { type: 'boolean', help: 'dump the index files (.kix, .oix, .tix) of the segments under PATH instead of records' },
    },
    details:
      'Each record line shows topic/channel, offset, position, msgId (hex), key, broker time, body length and\n' +
      "its batch's checksum status (ok or BAD). Damage does not stop the dump: a batch whose checksum fails is\n" +
      'shown with checksum=BAD, and after a corrupt header the dump goes on at the next good batch.\n' +
      'A PATH ending in .kix, .oix or .tix is dumped as an index file.',
  },
  async run(args, io) {
    const json = args.flags.json === true;
    const lines = new LineBuffer(io);
    const summary = await dumpPath(
      args.positionals[0]!,
      { from: args.flags.from as number | undefined, max: args.flags.max as number | undefined, index: args.flags.index === true },
      (item) => lines.push(json ? JSON.stringify(item) : formatDumpItem(item)),
    );
    if (!json && !summary.stopped) {
      const parts =
        summary.indexFiles > 0
          ? [counted(summary.indexFiles, 'index file'), counted(summary.indexEntries, 'entry', 'entries')]
          : [
              counted(summary.segments, 'segment'),
              `${counted(summary.batches + summary.badBatches, 'batch', 'batches')} (${summary.badBatches} BAD)`,
              counted(summary.records, 'record'),
              counted(summary.damagedRanges, 'damaged range'),
            ];
      lines.push(`# ${parts.join(', ')}`);
    }
    lines.flush();
    return 0;
  },
};
