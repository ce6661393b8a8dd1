/** `waymark verify`: runs engine/inspect's verifyStore and lists each fault as `file, position, what`. */
import { formatBytes, ProgressLine, verifyStore, type Fault } from '../engine/inspect';
import type { OptionSpec } from './args';
import type { Command } from './command';
import { counted, LineBuffer, shownPath } from './io';

export const threadsOption: OptionSpec = { type: 'integer', valueName: 'N', help: 'worker threads (default 2; 0 = do the work in this process)' };
export const jsonReportOption: OptionSpec = { type: 'boolean', help: 'print the whole report as one JSON object' };

export function formatFault(f: Fault): string {
  return `${shownPath(f.file)}, ${f.position ?? '-'}, ${f.what}`;
}

export const verifyCommand: Command = {
  spec: {
    name: 'verify',
    summary: 'Check every checksum, record, index file and checkpoint of a data folder; change nothing.',
    positionals: ['DIR'],
    options: { threads: threadsOption, json: jsonReportOption },
    details:
      'DIR is a store, topic or channel folder, or one segment (.log) or index file. Exit status: 0 when clean\n' +
      '(one summary line), 1 when anything is wrong (one line per fault: file, position, what; position - =\n' +
      'the whole file). A torn tail on an active segment is a fault: open would truncate it. Takes no lock:\n' +
      'on a folder a broker is writing, the active segments may change while they are read (a note says\n' +
      'when a live process holds the folder). Progress goes to stderr: redrawn in place on a terminal, else a\n' +
      'line every 10 s once the run has taken 10 s.',
  },
  async run(args, io) {
    const progress = new ProgressLine({ isTTY: io.errIsTTY, write: (text) => io.err(text) });
    const report = await verifyStore(args.positionals[0]!, { threads: args.flags.threads as number | undefined, onProgress: progress.update });
    progress.finish();
    const lines = new LineBuffer(io);
    if (args.flags.json === true) {
      lines.push(JSON.stringify(report));
    } else {
      for (const fault of report.faults) lines.push(formatFault(fault));
      for (const note of report.notes) lines.push(`note: ${note}`);
      const counts = [
        counted(report.channels, 'channel'),
        counted(report.segments, 'segment'),
        counted(report.batches, 'batch', 'batches'),
        counted(report.records, 'record'),
        formatBytes(report.bytes),
        `${counted(report.indexFilesChecked, 'index file')} checked`,
      ].join(', ');
      lines.push(report.ok ? `verify: ok (${counts})` : `verify: ${counted(report.faults.length, 'fault')} (${counts})`);
    }
    lines.flush();
    return report.ok ? 0 : 1;
  },
};
