/**
 * WebSocket benchmark: `npm run bench:ws` (full sizes) or `npm run bench:ws -- --quick`.
 *
 * The broker runs in a child process (`startServer` from this compiled tree, sync "batch":
 * acknowledged after fdatasync, data in .bench-data/ws-<pid>/), pinned to CPU 0; this
 * process is the client (the SDK), pinned to CPU 1 — on a 2-core machine, one core each.
 * Prints JSON lines on stdout (progress on stderr): a `machine` line first, then one line per
 * figure set with its baselines measured in the same run and the ratios to them, then a
 * `goals` line. BENCHMARKS.md has the tables and how to read them.
 *
 *   phase    what                                           baselines (same run)
 *   produce  one SDK producer, one connection, one-channel  engine: store.appendBatch of the
 *            topic, 100 B and 1 KiB random bodies,          same batches in the broker process,
 *            producer.send() per message (and              16 in flight; echo: the same produce
 *            producer.sendBatch), acked after fdatasync     frames to a bare µWS echo server
 *   consume  a stream-group consumer reads a backlog of     wire: the same subscription counting
 *            10M 100 B messages from the earliest offset    records without decoding; engine:
 *            with consumer.next()                           store.readBatches of the backlog
 *   latency  produce → consumer at 10,000 msg/s, from       echo round trip and write+fdatasync
 *            each message's due time                        of one message at the same rate
 *
 * Rounds alternate the order of SDK and baselines; a ratio is the median over rounds of
 * (SDK rate ÷ baseline rate in the same round). A full GC runs in both processes before each
 * timed pass. MB = 10^6 bytes of message bodies.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadChecksum } from '../engine/index';
import { countFlag, dirFlag, onlyFlag, UsageError, emit, formatBytes, freeBytes, machineLine, median, now, sig, eachFlag } from './common';
import { consumePhase } from './ws-phases/consume';
import { latencyPhase } from './ws-phases/latency';
import { producePhase } from './ws-phases/produce';
import { BrokerChild, phases, pin, type Options } from './ws-phases/shared';

const usage = `usage: node dist/bench/ws.js [options]        (npm run bench:ws -- [options])

  --quick                   small smoke run (about a minute): the sizes below shrink
  --only LIST               phases to run, comma separated: produce,consume,latency (default all)
  --dir PATH                where the broker's data goes (default .bench-data/ws-<pid>; removed at the end)
  --keep                    keep the data folder
  --no-pin                  do not pin broker and client to one CPU each (taskset)
  --rounds N                rounds per figure, SDK and baselines alternating (3; quick 2)
  --body-sizes LIST         produce body sizes in bytes (100,1024)
  --produce-messages N      messages per produce round at 100 B (3e6; quick 300k); bodies of
                            1 KiB and more send a fifth as many
  --send-window N           messages handed to send() before awaiting the window before (8000:
                            8,000-16,000 outstanding; BENCHMARKS.md has the sweep that chose it)
  --send-batch N            also run producer.sendBatch with arrays of N messages (1000; 0 = off)
  --no-compression          producers (and the baselines' batches) without lz4
  --backlog N               messages in the consume backlog (10e6; quick 1e6)
  --consume-body-bytes N    body size of the backlog (100)
  --latency-rate N          messages a second in the latency phase (10000)
  --latency-seconds N       seconds of the latency phase that are measured (20; quick 5)
  --latency-warmup-seconds N  seconds of the same traffic before them, not measured (5; quick 2):
                            the broker's and client's JIT and heap settle first
  --broker-cpu-prof         write a V8 CPU profile of the broker process (into the data folder's parent)
  --client-cpu-prof         same for this process, and for the latency phase's client process
  --broker-node-flags "F…"  node flags for the broker process, space separated (e.g. "--trace-gc")
  --help                    this text`;


function parseArgs(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = {
    quick,
    only: new Set(phases),
    dir: path.resolve('.bench-data', `ws-${process.pid}`),
    keep: false,
    pin: true,
    rounds: quick ? 2 : 3,
    bodySizes: [100, 1024],
    produceMessages: quick ? 300_000 : 3_000_000,
    sendWindowMessages: 8_000,
    sendBatchMessages: 1000,
    compression: true,
    backlogMessages: quick ? 1_000_000 : 10_000_000,
    consumeBodyBytes: 100,
    latencyRate: 10_000,
    latencySeconds: quick ? 5 : 20,
    latencyWarmupSeconds: quick ? 2 : 5,
    brokerCpuProf: false,
    clientCpuProf: false,
    brokerNodeFlags: [],
  };
  const count = countFlag;
  eachFlag(argv, usage, (flag, value) => {
    switch (flag) {
      case '--only':
        o.only = onlyFlag(value(), phases);
        break;
      case '--dir':
        o.dir = dirFlag(value(), `ws-${process.pid}`);
        break;
      case '--keep':
        o.keep = true;
        break;
      case '--no-pin':
        o.pin = false;
        break;
      case '--rounds':
        o.rounds = count(flag, value());
        break;
      case '--body-sizes':
        o.bodySizes = (value() ?? '').split(',').map((s) => count(flag, s));
        break;
      case '--produce-messages':
        o.produceMessages = count(flag, value(), 1000);
        break;
      case '--send-window':
        o.sendWindowMessages = count(flag, value());
        break;
      case '--send-batch':
        o.sendBatchMessages = count(flag, value(), 0);
        break;
      case '--no-compression':
        o.compression = false;
        break;
      case '--backlog':
        o.backlogMessages = count(flag, value(), 1000);
        break;
      case '--consume-body-bytes':
        o.consumeBodyBytes = count(flag, value(), 16);
        break;
      case '--latency-rate':
        o.latencyRate = count(flag, value());
        break;
      case '--latency-seconds':
        o.latencySeconds = count(flag, value(), 2);
        break;
      case '--latency-warmup-seconds':
        o.latencyWarmupSeconds = count(flag, value(), 1);
        break;
      case '--broker-cpu-prof':
        o.brokerCpuProf = true;
        break;
      case '--client-cpu-prof':
        o.clientCpuProf = true;
        break;
      case '--broker-node-flags':
        o.brokerNodeFlags = (value() ?? '').split(/\s+/).filter(Boolean);
        break;
      default:
        return false;
    }
    return true;
  });
  if (o.bodySizes.length === 0) throw new UsageError('--body-sizes needs at least one size');
  return o;
}

function estimateDiskBytes(o: Options): number {
  // One produce topic at a time (each is deleted after its round), or the consume backlog; index files ~35 %.
  const produce = o.only.has('produce') ? Math.max(...o.bodySizes.map((b) => (b >= 1024 ? o.produceMessages / 5 : o.produceMessages) * (b + 40))) * 1.4 : 0;
  const consume = o.only.has('consume') ? o.backlogMessages * (o.consumeBodyBytes + 40) * 1.4 : 0;
  return Math.max(produce, consume);
}

interface Goal {
  goal: string;
  target: string;
  value: string;
  met: boolean;
}

async function main(): Promise<void> {
  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench:ws: ${(err as Error).message}\n`);
    process.exit(2);
  }
  fs.mkdirSync(o.dir, { recursive: true });
  const need = estimateDiskBytes(o);
  const free = freeBytes(o.dir);
  if (free < need + 5 * 1024 ** 3) {
    process.stderr.write(`bench:ws: ${o.dir} has ${formatBytes(free)} free; this run needs about ${formatBytes(need)} plus 5 GiB to spare\n`);
    fs.rmSync(o.dir, { recursive: true, force: true });
    process.exit(1);
  }
  if (o.clientCpuProf) {
    const inspector = await import('node:inspector');
    const session = new inspector.Session();
    session.connect();
    session.post('Profiler.enable');
    session.post('Profiler.start');
    process.once('beforeExit', () => undefined);
    clientProfile = () =>
      new Promise((resolve) =>
        session.post('Profiler.stop', (err, result) => {
          if (!err) fs.writeFileSync(path.join(path.dirname(o.dir), `ws-client-${process.pid}.cpuprofile`), JSON.stringify(result.profile));
          resolve();
        }),
      );
  }
  await loadChecksum(); // the baselines encode batches here
  const nproc = os.availableParallelism(); // before pinning narrows what this process sees
  const broker = await BrokerChild.start(path.join(o.dir, 'broker'), { pin: o.pin, cpuProf: o.brokerCpuProf, profDir: path.dirname(o.dir), nodeFlags: o.brokerNodeFlags });
  const clientPinned = o.pin ? pin(process.pid, 1) : 'not pinned (--no-pin)';
  const cleanUp = async (): Promise<void> => {
    await broker.stop();
    if (clientProfile) await clientProfile();
    if (o.keep) return;
    fs.rmSync(o.dir, { recursive: true, force: true });
    try {
      fs.rmdirSync(path.dirname(o.dir));
    } catch {
      // not empty (another run, profiles, or --keep data): leave it
    }
  };
  process.on('SIGINT', () => {
    void cleanUp().finally(() => process.exit(130));
  });
  emit(
    machineLine('machine', {
      bench: 'ws',
      nproc,
      execArgv: process.execArgv, // node flags of the client process (e.g. --max-semi-space-size)
      quick: o.quick,
      dataDir: o.dir,
      diskFreeBytes: free,
      layout: { broker: `child process ${broker.pid}, ${broker.pinned}`, client: `this process ${process.pid}, ${clientPinned}` },
      sync: 'batch (acknowledged after fdatasync)',
      sizes: {
        rounds: o.rounds,
        bodySizes: o.bodySizes,
        produceMessages: o.produceMessages,
        sendWindowMessages: o.sendWindowMessages,
        sendBatchMessages: o.sendBatchMessages,
        compression: o.compression,
        backlogMessages: o.backlogMessages,
        consumeBodyBytes: o.consumeBodyBytes,
        latencyRate: o.latencyRate,
        latencySeconds: o.latencySeconds,
        latencyWarmupSeconds: o.latencyWarmupSeconds,
      },
    }),
  );
  const goals: Goal[] = [];
  const t0 = now();
  try {
    if (o.only.has('produce')) {
      for (const r of await producePhase(o, broker)) {
        const m = median(r.msgsPerSecond);
        const mb = median(r.mbPerSecond);
        if (r.bodyBytes === 100) goals.push({ goal: `produce 100 B (${r.api})`, target: '≥ 1,000,000 msg/s', value: `${sig(m, 3)} msg/s`, met: m >= 1e6 });
        if (r.bodyBytes === 1024) goals.push({ goal: `produce 1 KiB (${r.api})`, target: '≥ 300 MB/s', value: `${sig(mb, 3)} MB/s`, met: mb >= 300 });
      }
    }
    if (o.only.has('consume')) {
      for (const { api, rates } of await consumePhase(o, broker)) {
        const m = median(rates);
        if (o.consumeBodyBytes === 100) goals.push({ goal: `consume 100 B from a ${o.backlogMessages.toLocaleString('en')}-message backlog (${api})`, target: '≥ 2,000,000 msg/s', value: `${sig(m, 3)} msg/s`, met: m >= 2e6 });
      }
    }
    if (o.only.has('latency')) {
      const l = await latencyPhase(o, broker);
      goals.push({ goal: `end-to-end latency p99 at ${o.latencyRate.toLocaleString('en')} msg/s`, target: '≤ 2 ms', value: `${l.p99} ms (p50 ${l.p50}, max ${l.max})`, met: l.p99 <= 2 });
    }
  } finally {
    await cleanUp();
  }
  emit({ name: 'goals', met: goals.filter((g) => g.met).length, missed: goals.filter((g) => !g.met).length, goals, seconds: sig((now() - t0) / 1000, 3) });
}

let clientProfile: (() => Promise<void>) | null = null;


main().catch((err: unknown) => {
  process.stderr.write(`bench:ws failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
