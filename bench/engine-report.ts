/**
 * Turns the JSON lines of one or more runs of bench/engine.ts into the Markdown tables of
 * BENCHMARKS.md. With several runs, each cell shows the runs' figures side by side
 * ("run 1 / run 2"), so that run-to-run noise stays visible.
 *
 *   node dist/bench/engine-report.js run1.jsonl [run2.jsonl …]
 */
import { loadJsonLines } from './common';

type Line = Record<string, unknown>;


function num(value: unknown): string {
  if (typeof value !== 'number') return value === undefined ? '–' : String(value);
  if (Math.abs(value) >= 1e6) return `${(value / 1e6).toPrecision(3)} M`;
  if (Math.abs(value) >= 1e4) return `${(value / 1e3).toPrecision(3)} k`;
  return String(Number(value.toPrecision(3)));
}

/** One cell: the same field of the matching line in every run. */
function cell(runs: Line[][], match: (l: Line) => boolean, field: string, format: (v: unknown) => string = num): string {
  return runs.map((lines) => format(lines.find(match)?.[field])).join(' / ');
}

function table(header: string[], rows: string[][]): string {
  return [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

function main(): void {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    process.stderr.write('usage: node dist/bench/engine-report.js run1.jsonl [run2.jsonl …]\n');
    process.exit(2);
  }
  const runs = files.map((file) => loadJsonLines<Line>(file));
  const first = runs[0]!;
  const out: string[] = [];
  const machines = runs.map((r) => r.find((l) => l.name === 'machine') ?? {});
  out.push(`Runs: ${machines.map((m, i) => `run ${i + 1} ${String(m.date)} (commit ${String(m.commit)}${m.engineDirty === true ? ' + uncommitted engine changes' : ''}, load ${JSON.stringify(m.loadavg)})`).join('; ')}.`);
  out.push('');

  const appends = first.filter((l) => l.name === 'append');
  if (appends.length > 0) {
    out.push('### Append (sync "batch", 1,000-message batches)');
    out.push('');
    const rows = appends.map((a) => {
      const same = (l: Line): boolean => l.name === 'append' && l.api === a.api && l.bodyBytes === a.bodyBytes && l.bodies === a.bodies && l.compression === a.compression && l.mode === a.mode;
      return [
        String(a.api).replace('store.', ''),
        `${String(a.bodyBytes)} B ${String(a.bodies)}`,
        a.compression ? 'on' : 'off',
        `${String(a.mode)}${a.mode === 'in-flight' ? ` (${String(a.inFlight)})` : ''}`,
        cell(runs, same, 'msgPerSec'),
        cell(runs, same, 'storedMBps'),
        cell(runs, same, 'raw_MBps'),
        `**${cell(runs, same, 'ratio_vs_raw')}**`,
        cell(runs, same, 'p50_ms'),
        cell(runs, same, 'p99_ms'),
        a.goal ? `${String(a.goal)}: ${runs.map((r) => (r.find(same)?.met ? 'met' : 'missed')).join(' / ')}` : '',
      ];
    });
    out.push(table(['api', 'bodies', 'lz4', 'mode', 'msg/s', 'stored MB/s', 'raw MB/s', 'ratio vs raw', 'p50 ms', 'p99 ms', 'goal'], rows));
    out.push('');
  }

  const reads = first.filter((l) => l.name === 'read');
  if (reads.length > 0) {
    out.push('### Read from offset 0 (maxBytes 1 MiB)');
    out.push('');
    const rows = reads.map((r) => {
      const same = (l: Line): boolean => l.name === 'read' && l.api === r.api && l.bodyBytes === r.bodyBytes && l.cache === r.cache;
      return [
        String(r.api).replace('store.', ''),
        `${String(r.bodyBytes)} B`,
        String(r.cache),
        cell(runs, same, 'MBps'),
        cell(runs, same, 'msgPerSec'),
        cell(runs, same, 'raw_MBps'),
        `**${cell(runs, same, 'ratio_vs_raw')}**`,
        r.api === 'store.readBatches' ? cell(runs, same, 'ratio_vs_raw_fresh') : '',
        cell(runs, same, r.api === 'store.readBatches' ? 'fsBytesPerByteReturned' : 'fsBytesPerByteDecoded'),
        r.api === 'store.readBatches' && r.cache === 'warm' ? cell(runs, same, 'firstPass_MBps') : '',
        r.goal ? `${String(r.goal)}: ${runs.map((x) => (x.find(same)?.met ? 'met' : 'missed')).join(' / ')}` : '',
      ];
    });
    out.push(table(['api', 'messages', 'cache', 'MB/s', 'msg/s', 'raw MB/s', 'ratio vs raw', 'ratio vs raw (fresh buffers)', 'bytes read per byte used', 'first pass MB/s', 'goal'], rows));
    out.push('');
  }

  const lookups = first.filter((l) => l.name === 'lookup');
  if (lookups.length > 0) {
    out.push('### Lookup');
    out.push('');
    const rows = lookups.map((k) => {
      const same = (l: Line): boolean => l.name === 'lookup' && l.by === k.by && l.cache === k.cache;
      return [
        String(k.by),
        String(k.cache),
        cell(runs, same, 'messages'),
        cell(runs, same, 'segments'),
        cell(runs, same, 'p50_us'),
        `**${cell(runs, same, 'p99_us')}**`,
        cell(runs, same, 'max_us'),
        cell(runs, same, 'raw_pread_p50_us'),
        cell(runs, same, 'raw_pread_p99_us'),
        k.by === 'key' ? cell(runs, same, 'hitsPerLookup') : k.by === 'msgId' ? cell(runs, same, 'found') : '0',
        k.goal ? `p99 ${String(k.goal)} µs: ${runs.map((x) => (x.find(same)?.met ? 'met' : 'missed')).join(' / ')}` : '',
      ];
    });
    out.push(table(['by', 'cache', 'messages', 'segments', 'p50 µs', 'p99 µs', 'max µs', 'raw pread p50 µs', 'raw pread p99 µs', 'found', 'goal'], rows));
    out.push('');
  }

  const opens = first.filter((l) => l.name === 'open');
  if (opens.length > 0) {
    out.push('### Open (recovery)');
    out.push('');
    const rows = opens.map((o) => {
      const same = (l: Line): boolean => l.name === 'open' && l.after === o.after && l.cache === o.cache;
      return [
        String(o.after),
        String(o.cache),
        cell(runs, same, 'logBytes', (v) => (typeof v === 'number' ? `${(v / 1024 ** 3).toFixed(2)} GiB` : '–')),
        cell(runs, same, 'segments'),
        cell(runs, same, 'activeSegmentBytes', (v) => (typeof v === 'number' ? `${(v / 1024 ** 2).toFixed(1)} MiB` : '–')),
        `**${cell(runs, same, 'seconds')}**`,
        cell(runs, same, 'baseline_listStat_ms'),
        cell(runs, same, 'baseline_readActive_ms'),
        cell(runs, same, 'open_vs_readActive'),
        cell(runs, same, 'firstReadBatches_ms'),
        cell(runs, same, 'firstLookupAbsent_ms'),
        cell(runs, same, 'secondLookupAbsent_ms'),
        `${String(o.goal)} s: ${runs.map((x) => (x.find(same)?.met ? 'met' : 'missed')).join(' / ')}`,
      ];
    });
    out.push(table(['after', 'cache', 'log', 'segments', 'active segment', 'open s', 'list+stat ms', 'read active ms', 'open ÷ read active', 'then 1st read ms', 'then 1st lookup ms', '2nd lookup ms', 'goal'], rows));
    out.push('');
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

main();
