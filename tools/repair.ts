/** `waymark repair`: runs engine/inspect's repairStore and prints what it dropped, patched and rewrote. */
import * as path from 'node:path';
import { formatBytes, ProgressLine, repairStore } from '../engine/inspect';
import type { Command } from './command';
import { counted, LineBuffer, shownPath } from './io';
import { formatFault, jsonReportOption, threadsOption } from './verify';

const actionWords = { truncate: 'truncated', rewrite: 'rewrote', remove: 'removed', patch: 'patched in place' } as const;

export const repairCommand: Command = {
  spec: {
    name: 'repair',
    summary: 'Truncate torn tails, drop only damaged batches, rebuild index files and checkpoints.',
    positionals: ['DIR'],
    options: { threads: threadsOption, json: jsonReportOption },
    details:
      'DIR is a store, topic or channel folder. repair takes the folder lock, so it fails while a broker runs on it.\n' +
      'Every dropped byte range is copied to <segment>.dropped-<position> first. A segment with a damaged batch in\n' +
      'the middle is rewritten without it, split where its offsets now jump; the offsets of a dropped batch hold\n' +
      'no message afterwards. A wrong offset or broker time in a batch header (outside the checksum) is written\n' +
      'back from its neighbours rather than dropped. Exit status: 0 when repaired, 1 when something could not be.\n' +
      'Progress goes to stderr: redrawn in place on a terminal, else a line every 10 s once the run has taken 10 s.',
  },
  async run(args, io) {
    const progress = new ProgressLine({ isTTY: io.errIsTTY, write: (text) => io.err(text) });
    const report = await repairStore(args.positionals[0]!, { threads: args.flags.threads as number | undefined, onProgress: progress.update });
    progress.finish();
    const lines = new LineBuffer(io);
    if (args.flags.json === true) {
      lines.push(JSON.stringify(report));
      lines.flush();
      return report.problems.length === 0 ? 0 : 1;
    }
    let droppedBytes = 0;
    for (const c of report.shortened) {
      lines.push(`short ${shownPath(c.file)}: checkpoint.json vouched for ${c.vouchedBytes} bytes, the file holds ${c.fileBytes}: the last ${c.vouchedBytes - c.fileBytes} bytes were lost before repair ran (nothing left to save)`);
    }
    for (const m of report.missing) {
      lines.push(`missing ${shownPath(m.file)}: checkpoint.json listed it, offsets ${m.from}..${m.to - 1}; it was gone before repair ran, with no removal under way (its messages are lost)`);
    }
    for (const d of report.dropped) {
      droppedBytes += d.bytes;
      lines.push(`dropped ${shownPath(d.file)}, ${d.position}, ${d.bytes} bytes: ${d.reason}${d.savedTo ? ` (saved to ${path.basename(d.savedTo)})` : ''}`);
    }
    for (const p of report.patched) lines.push(`patched ${shownPath(p.file)}, ${p.position}, ${p.field} ${p.from} -> ${p.to}: ${p.reason}`);
    for (const c of report.changed) {
      const into = c.into.length > 0 ? ` -> ${c.into.map((f) => path.basename(f)).join(', ')}` : '';
      lines.push(`${actionWords[c.action]} ${shownPath(c.file)}${into}`);
    }
    for (const f of report.orphansRemoved) lines.push(`removed ${shownPath(f)}: an index file without its log`);
    for (const g of report.gaps) lines.push(`gap ${g.channel}: offsets ${g.from}..${g.to - 1} hold no message now`);
    for (const t of report.topicsRebuilt) {
      const saved = t.savedTo ? `; the old file is kept as ${path.basename(t.savedTo)}` : '';
      const created = t.createdAt > 0 ? `created ${new Date(t.createdAt).toISOString()} as the damaged file says` : 'creation time unknown (producers and consumers made before the repair must be made again)';
      lines.push(`rebuilt ${shownPath(t.file)}: ${t.channels} channels from the channel folders, no retention, default segment sizes, no owner, ${created} (was: ${t.reason}${saved})`);
    }
    for (const f of report.foldersRemoved) lines.push(`removed ${shownPath(f)}: an empty folder without topic.json`);
    for (const r of report.channelsRaised) lines.push(`raised ${shownPath(r.file)}: channels ${r.from} -> ${r.to}, to cover channel folders beyond it that hold segments`);
    for (const d of report.channelsCreated) lines.push(`created ${shownPath(d)}: an empty channel folder topic.json counts (its data, if it had any, is gone)`);
    if (report.storeMarked) lines.push(`marked store.json: format ${report.storeMarked.from} -> ${report.storeMarked.to} (repair writes segments of this format: an end mark after each)`);
    for (const p of report.problems) lines.push(`not repaired: ${formatFault(p)}`);
    const counts =
      `${counted(report.channels, 'channel')}, ${report.segmentsBefore} -> ${counted(report.segmentsAfter, 'segment')}, ${counted(report.recordsKept, 'record')} kept, ` +
      `dropped ${counted(report.dropped.length, 'range')} (${formatBytes(droppedBytes)}), patched ${counted(report.patched.length, 'header field')}, ` +
      `${counted(report.indexFilesWritten, 'index file')} and ${counted(report.checkpointsWritten, 'checkpoint')} written`;
    lines.push(report.problems.length === 0 ? `repair: done (${counts})` : `repair: ${counted(report.problems.length, 'problem')} left (${counts})`);
    lines.flush();
    return report.problems.length === 0 ? 0 : 1;
  },
};
