/**
 * Tables for BENCHMARKS.md from the JSON lines of bench:ws and bench:http runs:
 *
 *   node dist/bench/ws-report.js ws-run1.jsonl ws-run2.jsonl http-run1.jsonl http-run2.jsonl
 *
 * Files are matched to runs by their order per bench (first ws file = run 1, …); each cell
 * shows "run 1 / run 2". Prints Markdown on stdout.
 */
import { loadJsonLines } from './common';

type Line = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any


function num(value: unknown): string {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '–';
  if (Math.abs(value) >= 1e6) return `${(value / 1e6).toPrecision(3)} M`;
  if (Math.abs(value) >= 1e4) return `${Math.round(value / 1e3)} k`;
  if (Math.abs(value) >= 100) return String(Math.round(value));
  return String(Number(value.toPrecision(3)));
}

function cells(values: unknown[], bold = false): string {
  const text = values.map(num).join(' / ');
  return bold ? `**${text}**` : text;
}

function main(): void {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    process.stderr.write('usage: node dist/bench/ws-report.js WS_RUN.jsonl… HTTP_RUN.jsonl…\n');
    process.exit(2);
  }
  const ws: Line[][] = [];
  const http: Line[][] = [];
  for (const file of files) {
    const lines = loadJsonLines<Line>(file);
    const bench = lines.find((l) => l.name === 'machine')?.bench;
    if (bench === 'ws') ws.push(lines);
    else if (bench === 'http') http.push(lines);
  }
  const out: string[] = [];
  const pick = (runs: Line[][], pred: (l: Line) => boolean): Line[] => runs.map((lines) => lines.find(pred) ?? {});

  if (ws.length > 0) {
    out.push('#### Produce (one producer, one connection, acknowledged after fdatasync)', '');
    out.push('| api | body | msg/s | MB/s | engine msg/s | ratio vs engine | echo msg/s | ratio vs echo | client busy | broker busy |');
    out.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    const keys = new Set<string>();
    for (const lines of ws) for (const l of lines) if (l.name === 'produce') keys.add(`${l.api}|${l.bodyBytes}`);
    for (const key of keys) {
      const [api, body] = key.split('|');
      const rows = pick(ws, (l) => l.name === 'produce' && l.api === api && String(l.bodyBytes) === body);
      out.push(
        `| ${api} | ${Number(body) >= 1024 ? `${Number(body) / 1024} KiB` : `${body} B`} | ${cells(rows.map((r) => r.msgsPerSecond))} | ${cells(rows.map((r) => r.mbPerSecond))} | ${cells(rows.map((r) => r.engine?.msgsPerSecond))} | ${cells(rows.map((r) => r.ratioVsEngine), true)} | ${cells(rows.map((r) => r.echo?.msgsPerSecond))} | ${cells(rows.map((r) => r.ratioVsEcho))} | ${cells(rows.map((r) => Math.max(...(r.clientBusy ?? [NaN]))))} | ${cells(rows.map((r) => Math.max(...(r.brokerBusy ?? [NaN]))))} |`,
      );
    }
    out.push('', '#### Consume (stream group, from the earliest offset of the backlog)', '');
    out.push('| api | backlog | msg/s | MB/s | wire msg/s | ratio vs wire | engine readBatches msg/s | ratio vs engine | client busy | broker busy |');
    out.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    const consumeApis = new Set<string>();
    for (const lines of ws) for (const l of lines) if (l.name === 'consume') consumeApis.add(String(l.api));
    for (const api of consumeApis) {
      const c = pick(ws, (l) => l.name === 'consume' && String(l.api) === api);
      out.push(
        `| ${api} | ${cells(c.map((r) => r.backlogMessages))} × ${c.find((r) => r.name)!.bodyBytes} B | ${cells(c.map((r) => r.msgsPerSecond))} | ${cells(c.map((r) => r.mbPerSecond))} | ${cells(c.map((r) => r.wire?.msgsPerSecond))} | ${cells(c.map((r) => r.ratioVsWire), true)} | ${cells(c.map((r) => r.engine?.msgsPerSecond))} | ${cells(c.map((r) => r.ratioVsEngine))} | ${cells(c.map((r) => Math.max(...(r.clientBusy ?? [NaN]))))} | ${cells(c.map((r) => Math.max(...(r.brokerBusy ?? [NaN]))))} |`,
      );
    }
    out.push('', '#### End-to-end latency, produce → consumer, ms', '');
    out.push('| what | p50 | p90 | p99 | max |');
    out.push('| --- | --- | --- | --- | --- |');
    const l = pick(ws, (x) => x.name === 'latency');
    if (l.some((r) => r.name)) {
      const row = (label: string, get: (r: Line) => Line | undefined, bold = false): void => {
        out.push(`| ${label} | ${cells(l.map((r) => get(r)?.p50_ms))} | ${cells(l.map((r) => get(r)?.p90_ms))} | ${cells(l.map((r) => get(r)?.p99_ms), bold)} | ${cells(l.map((r) => get(r)?.max_ms))} |`);
      };
      row(`SDK, from the due time (${l[0]!.rate} msg/s)`, (r) => r, true);
      row('SDK, from the send() call', (r) => r.fromSendCall);
      row('SDK, send() → acknowledged', (r) => r.produceAck);
      row('engine floor: appendBatch of one-message batches, same rate, in the broker', (r) => r.engineFloor);
      row('echo floor: one WS round trip through µWS + ws', (r) => r.echoFloor);
      out.push(`| fdatasync floor: write + fdatasync of 128 B, back to back | ${cells(l.map((r) => r.fsyncFloor?.p50_ms))} | – | ${cells(l.map((r) => r.fsyncFloor?.p99_ms))} | ${cells(l.map((r) => r.fsyncFloor?.max_ms))} |`);
      out.push('', `Broker busy during the SDK run: ${cells(l.map((r) => r.brokerBusy))}; during the engine floor: ${cells(l.map((r) => r.engineFloor?.brokerBusy))}. Produce requests for ${l[0]!.sent} messages: ${cells(l.map((r) => r.produceRequests))}.`);
    }
    out.push('', '#### Goals', '');
    for (const [i, lines] of ws.entries()) {
      const g = lines.find((x) => x.name === 'goals');
      if (g) out.push(`run ${i + 1}: ${(g.goals as Line[]).map((x) => `${x.goal}: ${x.value} (${x.target}) ${x.met ? 'met' : 'missed'}`).join('; ')}`, '');
    }
  }
  if (http.length > 0) {
    out.push('#### HTTP produce, autocannon 100 connections', '');
    out.push('| target | requests/s | p50 ms | p99 ms | max ms | server busy | autocannon busy |');
    out.push('| --- | --- | --- | --- | --- | --- | --- |');
    for (const target of ['ceiling', 'broker']) {
      for (const round of [1, 2]) {
        const rows = pick(http, (x) => x.name === 'http' && x.target === target && x.round === round);
        if (!rows.some((r) => r.name)) continue;
        out.push(`| ${target} (round ${round}) | ${cells(rows.map((r) => r.requestsPerSecond))} | ${cells(rows.map((r) => r.latencyP50Ms))} | ${cells(rows.map((r) => r.latencyP99Ms))} | ${cells(rows.map((r) => r.latencyMaxMs))} | ${cells(rows.map((r) => r.serverBusy))} | ${cells(rows.map((r) => r.autocannonBusy))} |`);
      }
    }
    const s = pick(http, (x) => x.name === 'http-summary');
    out.push('', `Ratio broker ÷ ceiling (median of rounds): ${cells(s.map((r) => r.ratio), true)}; per round: ${s.map((r) => (r.ratioPerRound ?? []).join(', ')).join(' / ')}.`);
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

main();
