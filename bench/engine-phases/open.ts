/**
 * Phase 4 of bench/engine.ts: open (recovery) after a clean close and after SIGKILL.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { limits, MsgIdGenerator, msgIdToHex, openStore } from '../../engine/index';
import { BodySource, dirBytes, dropCaches, emit, formatBytes, median, now, progress, segmentFiles, sig, type Json } from '../common';
import { channelBytes, goal, messagePool, settle, type Options } from './shared';


export interface WriterConfig {
  dir: string;
  topic: string;
  /** Log bytes the channel must hold before the writer reports ready. */
  targetBytes: number;
  /** Bytes this writer must append before it reports ready. */
  freshBytesMin: number;
  bodyBytes: number;
  batchMessages: number;
  inFlight: number;
}

/** The child: appends until the target is reached and the active segment is ¾ full, says so, and keeps appending until killed. */
export async function childWriter(config: WriterConfig): Promise<void> {
  const store = await openStore(config.dir);
  if (!store.hasTopic(config.topic)) await store.createTopic(config.topic, { channels: 1 });
  const channelDir = path.join(config.dir, 'topics', config.topic, '0');
  const pool = messagePool(new BodySource('random'), config.bodyBytes, config.batchMessages);
  const startBytes = channelBytes(store, config.topic);
  // A bound on the runaway case (the parent died without killing us).
  const stopBytes = Math.max(startBytes, config.targetBytes) + config.freshBytesMin + 2 * limits.segmentBytesDefault + 1024 ** 3;
  let ready = false;
  const check = (): void => {
    if (process.ppid === 1) process.exit(3);
    const bytes = channelBytes(store, config.topic);
    if (ready || bytes < config.targetBytes || bytes - startBytes < config.freshBytesMin) return;
    const files = segmentFiles(channelDir);
    const active = files[files.length - 1]!;
    const sealedMax = files.slice(0, -1).reduce((a, f) => Math.max(a, f.bytes), 0) || limits.segmentBytesDefault;
    if (active.bytes < 0.75 * sealedMax) return;
    ready = true;
    process.stdout.write(`${JSON.stringify({ ready: true, logBytes: bytes, activeBytes: active.bytes, segments: files.length })}\n`);
  };
  let i = 0;
  const loop = async (): Promise<void> => {
    while (channelBytes(store, config.topic) < stopBytes) {
      await store.append(config.topic, 0, pool.batches[i++ % pool.batches.length]!);
      check();
    }
  };
  await Promise.all(Array.from({ length: config.inFlight }, loop));
  // Over the bound without being killed: stop writing, wait to be killed.
  setInterval(() => process.ppid === 1 && process.exit(3), 1000);
}

/** Starts a writer child, waits for "ready", kills it with SIGKILL. */
async function crashWriter(config: WriterConfig): Promise<Json> {
  // The child runs the bench's entry script (engine.js) in its --child-writer mode.
  const entry = require.main?.filename ?? process.argv[1]!;
  const child = spawn(process.execPath, [entry, '--child-writer', JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: child.stdout! });
  const ready = await new Promise<Json>((resolve, reject) => {
    lines.on('line', (line) => resolve(JSON.parse(line) as Json));
    void exited.then(({ code, signal }) => reject(new Error(`writer child exited (code ${code}, signal ${signal}) before it was ready`)));
  });
  child.kill('SIGKILL');
  const { signal } = await exited;
  if (signal !== 'SIGKILL') throw new Error(`writer child ended by ${signal}, not SIGKILL`);
  return ready;
}

export async function openPhase(o: Options, cold: boolean): Promise<void> {
  const dir = path.join(o.dir, 'open');
  const topic = 'open';
  const channelDir = path.join(dir, 'topics', topic, '0');
  fs.rmSync(dir, { recursive: true, force: true });
  const writer: WriterConfig = { dir, topic, targetBytes: o.openBytes, freshBytesMin: 0, bodyBytes: o.openBodyBytes, batchMessages: o.batchMessages, inFlight: o.inFlight };
  progress(`open: a child appends ${formatBytes(o.openBytes)} of ${o.openBodyBytes} B messages, keeps appending, and is killed with SIGKILL`);
  const t0 = now();
  const killedAt = await crashWriter(writer);
  progress(`open: child killed after ${sig((now() - t0) / 1000, 3)} s at ${JSON.stringify(killedAt)}`);

  // Baselines: what any open must at least do (list and stat), and the I/O floor of scanning the active segment.
  const listStat = (): number => {
    const t = now();
    for (const name of fs.readdirSync(channelDir)) fs.statSync(path.join(channelDir, name));
    return now() - t;
  };
  const readActive = (): { ms: number; bytes: number } => {
    const files = segmentFiles(channelDir);
    const active = files[files.length - 1]!;
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024); // the scanner's window
    const t = now();
    const fd = fs.openSync(active.file, 'r');
    let position = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, position);
      if (n === 0) break;
      position += n;
    }
    fs.closeSync(fd);
    return { ms: now() - t, bytes: position };
  };
  const absentMsgId = (): string => msgIdToHex(new MsgIdGenerator().next());
  const timeOpen = async (): Promise<{
    seconds: number;
    closeSeconds: number;
    findings: Json[];
    logBytes: number;
    segments: number;
    activeBytes: number;
    firstUse: Json;
  }> => {
    settle();
    const t = now();
    const store = await openStore(dir);
    const seconds = (now() - t) / 1000;
    const info = store.describeTopic(topic).channelInfo[0]!;
    const files = segmentFiles(channelDir);
    const findings = store.recoveryReport.map((f) => ({ kind: f.kind, bytesDropped: f.bytesDropped, reason: f.reason }));
    // Open is lazy about sealed segments; their index files are loaded on first use. What
    // that costs: the first read from the oldest offset (one segment), then a lookup of an
    // absent msgId (it walks every segment), then a second one (all loaded).
    const tr = now();
    await store.readBatches(topic, 0, { offset: info.logStartOffset, maxBytes: o.readChunkBytes });
    const firstReadMs = now() - tr;
    const tl = now();
    await store.lookupMsgId(topic, absentMsgId());
    const firstLookupMs = now() - tl;
    const tl2 = now();
    await store.lookupMsgId(topic, absentMsgId());
    const secondLookupMs = now() - tl2;
    const tc = now();
    await store.close();
    return {
      seconds,
      closeSeconds: (now() - tc) / 1000,
      findings,
      logBytes: info.bytes,
      segments: info.segments,
      activeBytes: files[files.length - 1]!.bytes,
      firstUse: { firstReadBatches_ms: sig(firstReadMs, 3), firstLookupAbsent_ms: sig(firstLookupMs, 3), secondLookupAbsent_ms: sig(secondLookupMs, 3) },
    };
  };
  const emitOpen = (after: 'sigkill' | 'clean close', cache: 'warm' | 'cold', runs: Array<Awaited<ReturnType<typeof timeOpen>>>, baseListMs: number, baseRead: { ms: number; bytes: number }): void => {
    const seconds = median(runs.map((r) => r.seconds));
    const last = runs[runs.length - 1]!;
    emit({
      name: 'open',
      after,
      cache,
      seconds: sig(seconds, 3),
      runs: runs.map((r) => sig(r.seconds, 3)),
      logBytes: last.logBytes,
      storeBytes: dirBytes(dir),
      segments: last.segments,
      activeSegmentBytes: last.activeBytes,
      bodyBytes: o.openBodyBytes,
      findings: runs[0]!.findings,
      closeSeconds: sig(median(runs.map((r) => r.closeSeconds)), 3),
      ...runs[0]!.firstUse,
      baseline_listStat_ms: sig(baseListMs, 3),
      baseline_readActive_ms: sig(baseRead.ms, 3),
      baseline_readActive_bytes: baseRead.bytes,
      open_vs_readActive: sig((seconds * 1000) / baseRead.ms, 3),
      ...goal(`open after ${after} (${cache}), s`, seconds, '< 2', seconds < 2),
    });
  };

  try {
    // Warm: the files were just written, the page cache holds them.
    const listWarm = listStat();
    const readWarm = readActive();
    progress('open: after SIGKILL, warm');
    const crashRun = await timeOpen();
    emitOpen('sigkill', 'warm', [crashRun], listWarm, readWarm);
    progress('open: after clean close, warm');
    const cleanRuns = [];
    for (let r = 0; r < o.rounds; r++) cleanRuns.push(await timeOpen());
    emitOpen('clean close', 'warm', cleanRuns, listStat(), readActive());

    if (cold) {
      progress('open: after clean close, cold');
      dropCaches();
      const listCold = listStat();
      dropCaches();
      const readCold = readActive();
      dropCaches();
      emitOpen('clean close', 'cold', [await timeOpen()], listCold, readCold);
      progress('open: a second writer child appends more and is killed; then open cold');
      await crashWriter({ ...writer, targetBytes: 0, freshBytesMin: 32 * 1024 * 1024 });
      dropCaches();
      const listCold2 = listStat();
      dropCaches();
      const readCold2 = readActive();
      dropCaches();
      emitOpen('sigkill', 'cold', [await timeOpen()], listCold2, readCold2);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
