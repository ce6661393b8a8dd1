/**
 * Engine benchmark: `npm run bench:engine` (full sizes) or `npm run bench:engine -- --quick`.
 *
 * Prints JSON lines on stdout (progress goes to stderr): first a `machine` line, then one
 * line per figure set, each with the baseline measured in the same process and run and the
 * ratio to it, then a `goals` line. BENCHMARKS.md has the table and how to read it.
 *
 *   phase   what                                             baseline (same run)
 *   append  store.append of 1,000-message batches, sync      fs.write + fdatasync of the same
 *           "batch"; one append in flight (the goal) and     bytes per batch to a plain file,
 *           several (group commit); store.appendBatch of     one batch in flight; the copy
 *           pre-encoded batches (the SDK path)               floor: raw, each batch first
 *                                                            made by copying its bodies
 *   read    store.readBatches and store.read from offset 0   fs.read of the same segment files
 *           of a 1 GiB channel, maxBytes 1 MiB; warm, and    in the same chunk size, warm and
 *           cold when the page cache can be dropped          cold alike
 *   lookup  lookupMsgId / lookupKey among 5M messages        one fs.read of a batch-sized chunk
 *                                                            at a random position in the log
 *   open    openStore of a 5 GiB store after a clean close   listing + stat of the files; a raw
 *           and after SIGKILL of a child appending to it;    read of the active segment
 *           then the first read and lookups after it
 *   channels openStore and close of 600 topics × 16 small      one atomic checkpoint-sized file
 *           channels (per-channel file work, not data)       write per channel folder, 32 at once
 *   small   store.appendBatch of one-message batches, one    O_DSYNC writes of the same bytes
 *           at a time, sync "batch" (the latency path)       that grow a file, and into a file
 *                                                            zeroed beforehand
 *   upkeep  the longest event-loop stall (a 1 ms ticker)     the same ticker over: fs.write +
 *           during appends through rolls, a retention pass,  fdatasync of the same bytes; unlink
 *           a topic delete                                   / rm of as many same-sized files
 *
 * Rounds alternate the order of engine and baseline so that a burst of noise from the other
 * processes on the machine does not land on one side only; a ratio is the median over rounds
 * of (engine rate ÷ baseline rate in the same round), rates are totals over all rounds. A
 * full GC runs before each timed pass (settle()). Cold figures drop the page cache before
 * every pass, engine and baseline alike. Every data folder is removed at the end (unless
 * --keep); a phase removes its data before the next one starts. MB = 10^6 bytes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { limits, loadChecksum } from '../engine/index';
import { countFlag, dirFlag, onlyFlag, UsageError, dropCaches, emit, formatBytes, freeBytes, machineLine, now, sig, eachFlag } from './common';
import { appendPhase } from './engine-phases/append';
import { lookupPhase } from './engine-phases/lookup';
import { channelsPhase } from './engine-phases/channels';
import { childWriter, openPhase, type WriterConfig } from './engine-phases/open';
import { readPhase } from './engine-phases/read';
import { smallPhase } from './engine-phases/small';
import { upkeepPhase } from './engine-phases/upkeep';
import { goals, phases, type Options } from './engine-phases/shared';

const usage = `usage: node dist/bench/engine.js [options]        (npm run bench:engine -- [options])

  --quick                 small smoke run (about a minute): the sizes below shrink
  --only LIST             phases to run, comma separated: append,read,lookup,open,channels,
                          small,upkeep (default all)
  --dir PATH              where data goes (default .bench-data/engine-<pid>; removed at the end)
  --keep                  keep the data folder
  --rounds N              rounds per figure, engine and baseline alternating (3; quick 2)
  --append-batches N      batches per round and per side in the append phase (200; quick 20)
  --batch-messages N      messages per batch (1000)
  --in-flight N           appends in flight for the group-commit lines and for filling (8)
  --body-sizes LIST       body sizes in bytes (100,1024)
  --read-bytes SIZE       bytes of the channel read from offset 0 (1GiB; quick 64MiB)
  --read-chunk SIZE       maxBytes of each read and the baseline's chunk (1MiB)
  --decode-bytes SIZE     bytes from offset 0 decoded by the store.read figures (256MiB; quick
                          64MiB): store.read is CPU-bound, its rate does not need the whole GiB
  --lookup-messages N     messages among which lookups run (5e6; quick 200k)
  --lookup-samples N      lookups per figure (10000; quick 1000)
  --open-bytes SIZE       log bytes of the store that is reopened (5GiB; quick 256MiB)
  --open-body-bytes N     body size of the messages filling that store (100)
  --many-topics N         topics of the store the channels phase opens and closes (600; quick 60)
  --many-channels N       channels per topic there (16)
  --small-appends N       one-message appends per round and side in the small phase (5000;
                          quick 1000)
  --no-cold               skip the cold (page cache dropped) figures
  --help                  this text`;


function parseArgs(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = {
    quick,
    only: new Set(phases),
    dir: path.resolve('.bench-data', `engine-${process.pid}`),
    keep: false,
    rounds: quick ? 2 : 3,
    appendBatches: quick ? 20 : 200,
    batchMessages: 1000,
    inFlight: 8,
    bodySizes: [100, 1024],
    readBytes: quick ? 64 * 1024 ** 2 : 1024 ** 3,
    readChunkBytes: 1024 ** 2,
    decodeBytes: -1,
    lookupMessages: quick ? 200_000 : 5_000_000,
    lookupSamples: quick ? 1000 : 10_000,
    openBytes: quick ? 256 * 1024 ** 2 : 5 * 1024 ** 3,
    openBodyBytes: 100,
    manyTopics: quick ? 60 : 600,
    manyChannels: 16,
    smallAppends: quick ? 1000 : 5000,
    cold: true,
  };
  const count = countFlag;
  eachFlag(argv, usage, (flag, value) => {
    switch (flag) {
      case '--only':
        o.only = onlyFlag(value(), phases);
        break;
      case '--dir':
        o.dir = dirFlag(value(), `engine-${process.pid}`);
        break;
      case '--keep':
        o.keep = true;
        break;
      case '--rounds':
        o.rounds = count(flag, value());
        break;
      case '--append-batches':
        o.appendBatches = count(flag, value());
        break;
      case '--batch-messages':
        o.batchMessages = count(flag, value());
        break;
      case '--in-flight':
        o.inFlight = count(flag, value());
        break;
      case '--body-sizes':
        o.bodySizes = (value() ?? '').split(',').map((s) => count(flag, s, 0));
        break;
      case '--read-bytes':
        o.readBytes = count(flag, value());
        break;
      case '--read-chunk':
        o.readChunkBytes = count(flag, value());
        break;
      case '--decode-bytes':
        o.decodeBytes = count(flag, value());
        break;
      case '--lookup-messages':
        o.lookupMessages = count(flag, value());
        break;
      case '--lookup-samples':
        o.lookupSamples = count(flag, value());
        break;
      case '--open-bytes':
        o.openBytes = count(flag, value());
        break;
      case '--open-body-bytes':
        o.openBodyBytes = count(flag, value(), 0);
        break;
      case '--many-topics':
        o.manyTopics = count(flag, value());
        break;
      case '--many-channels':
        o.manyChannels = count(flag, value());
        break;
      case '--small-appends':
        o.smallAppends = count(flag, value());
        break;
      case '--no-cold':
        o.cold = false;
        break;
      default:
        return false;
    }
    return true;
  });
  if (o.decodeBytes < 0) o.decodeBytes = Math.min(o.readBytes, 256 * 1024 ** 2);
  if (o.bodySizes.length === 0) throw new UsageError('--body-sizes needs at least one size');
  if (o.batchMessages > limits.batchRecordCountMax) throw new UsageError(`--batch-messages is at most ${limits.batchRecordCountMax}`);
  return o;
}

// ------------------------------------------------------------------ main

function estimateDiskBytes(o: Options): number {
  // Peak of one phase at a time (each removes its data), with index files (~35% for 100 B messages).
  const perPhase = [
    o.only.has('append') ? 2 * o.appendBatches * o.batchMessages * (Math.max(...o.bodySizes) + 64) * 1.4 : 0,
    o.only.has('read') ? o.readBytes * 1.4 : 0,
    o.only.has('lookup') ? o.lookupMessages * 160 * 1.4 : 0,
    o.only.has('open') ? (o.openBytes + 2 * limits.segmentBytesDefault + 96 * 1024 ** 2) * 1.4 : 0,
    o.only.has('channels') ? o.manyTopics * o.manyChannels * 32 * 1024 : 0, // ~24 KB a channel (230 MB for 9,601)
    o.only.has('upkeep') ? 2 * 5 * limits.segmentBytesDefault * 1.1 : 0, // two topics of five 64 MiB segments
  ];
  return Math.max(...perPhase);
}

async function main(): Promise<void> {
  const childAt = process.argv.indexOf('--child-writer');
  if (childAt >= 0) return childWriter(JSON.parse(process.argv[childAt + 1]!) as WriterConfig);

  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (err) {
    // Bad flags and bad sizes alike: one line, exit 2 (DESIGN §1's rule for the CLI).
    process.stderr.write(`bench:engine: ${(err as Error).message}\n`);
    process.exit(2);
  }
  fs.mkdirSync(o.dir, { recursive: true });
  const need = estimateDiskBytes(o);
  const free = freeBytes(o.dir);
  if (free < need + 5 * 1024 ** 3) {
    process.stderr.write(`bench:engine: ${o.dir} has ${formatBytes(free)} free; this run needs about ${formatBytes(need)} plus 5 GiB to spare\n`);
    fs.rmSync(o.dir, { recursive: true, force: true });
    process.exit(1);
  }
  const coldWhy = o.cold ? dropCaches() : 'off (--no-cold)';
  const cold = coldWhy === null;
  const cleanUp = (): void => {
    if (o.keep) return;
    fs.rmSync(o.dir, { recursive: true, force: true });
    try {
      fs.rmdirSync(path.dirname(o.dir)); // .bench-data/ itself, when nothing else is in it
    } catch {
      // not empty (another run, or --keep data): leave it
    }
  };
  process.on('SIGINT', () => {
    cleanUp();
    process.exit(130);
  });
  emit(
    machineLine('machine', {
      bench: 'engine',
      quick: o.quick,
      dataDir: o.dir,
      diskFreeBytes: free,
      coldCache: cold ? 'yes: /proc/sys/vm/drop_caches works; cold figures run after dropping it' : `no: ${coldWhy}`,
      sizes: {
        rounds: o.rounds,
        appendBatches: o.appendBatches,
        batchMessages: o.batchMessages,
        inFlight: o.inFlight,
        bodySizes: o.bodySizes,
        readBytes: o.readBytes,
        readChunkBytes: o.readChunkBytes,
        decodeBytes: o.decodeBytes,
        lookupMessages: o.lookupMessages,
        lookupSamples: o.lookupSamples,
        openBytes: o.openBytes,
        openBodyBytes: o.openBodyBytes,
      },
    }),
  );
  await loadChecksum(); // the bench encodes batches itself (openStore would load it too)
  const t0 = now();
  try {
    if (o.only.has('append')) await appendPhase(o);
    if (o.only.has('read')) await readPhase(o, cold);
    if (o.only.has('lookup')) await lookupPhase(o, cold);
    if (o.only.has('open')) await openPhase(o, cold);
    if (o.only.has('channels')) await channelsPhase(o);
    if (o.only.has('small')) await smallPhase(o);
    if (o.only.has('upkeep')) await upkeepPhase(o);
  } finally {
    cleanUp();
  }
  emit({ name: 'goals', met: goals.filter((g) => g.met).length, missed: goals.filter((g) => !g.met).length, goals, seconds: sig((now() - t0) / 1000, 3) });
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:engine failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
