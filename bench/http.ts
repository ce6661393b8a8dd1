/**
 * HTTP produce benchmark: `npm run bench:http` (or `npm run bench:http -- --quick`).
 *
 * autocannon (100 connections, 10 s, one request in flight per connection) POSTs a 100-byte
 * body to `/v1/topics/T/messages` of a broker started with `startServer` in a child process
 * (sync "batch": each answer comes after fdatasync; data in .bench-data/http-<pid>/), and,
 * with the very same autocannon settings in the same run, to the ceiling: a bare
 * uWebSockets.js handler that reads the body and answers 200 (bench/http-ceiling.ts). The
 * server under test is pinned to CPU 0, autocannon (this process) to CPU 1. Rounds alternate
 * which target goes first; the ratio is the median over rounds of (broker requests/s ÷
 * ceiling requests/s in the same round). Each target gets a short unrecorded warm-up first.
 *
 * Prints JSON lines on stdout (progress on stderr): `machine`, one `http` line per target and
 * round, an `http-summary` line with the ratio, then `goals`.
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { countFlag, dirFlag, emit, machineLine, median, now, progress, sig, eachFlag } from './common';
import { BrokerChild, pin } from './ws-phases/shared';

interface AutocannonResult {
  duration: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  '2xx': number;
  requests: { average: number; total: number; sent: number };
  latency: { p50: number; p90: number; p99: number; max: number; average: number };
}
type Autocannon = (options: Record<string, unknown>) => Promise<AutocannonResult>;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const autocannon = require('autocannon') as Autocannon;

interface Options {
  quick: boolean;
  dir: string;
  keep: boolean;
  pin: boolean;
  rounds: number;
  connections: number;
  seconds: number;
  warmupSeconds: number;
  bodyBytes: number;
  channels: number;
  brokerCpuProf: boolean;
}

const usage = `usage: node dist/bench/http.js [options]        (npm run bench:http -- [options])

  --quick              smoke run: 1 round of 3 s per target (default 2 rounds of 10 s)
  --rounds N           rounds, targets alternating (2; quick 1)
  --seconds N          autocannon duration per target and round (10; quick 3)
  --connections N      autocannon connections (100)
  --body-bytes N       request body size (100)
  --channels N         channels of topic T (1)
  --dir PATH           where the broker's data goes (default .bench-data/http-<pid>; removed at the end)
  --keep               keep the data folder
  --no-pin             do not pin server and autocannon to one CPU each
  --broker-cpu-prof    write a V8 CPU profile of the broker process into .bench-data/
  --help               this text`;


function parseArgs(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = {
    quick,
    dir: path.resolve('.bench-data', `http-${process.pid}`),
    keep: false,
    pin: true,
    rounds: quick ? 1 : 2,
    connections: 100,
    seconds: quick ? 3 : 10,
    warmupSeconds: quick ? 1 : 2,
    bodyBytes: 100,
    channels: 1,
    brokerCpuProf: false,
  };
  const count = countFlag;
  eachFlag(argv, usage, (flag, value) => {
    switch (flag) {
      case '--rounds':
        o.rounds = count(flag, value());
        break;
      case '--seconds':
        o.seconds = count(flag, value());
        break;
      case '--connections':
        o.connections = count(flag, value());
        break;
      case '--body-bytes':
        o.bodyBytes = count(flag, value(), 0);
        break;
      case '--channels':
        o.channels = count(flag, value());
        break;
      case '--dir':
        o.dir = dirFlag(value(), `http-${process.pid}`);
        break;
      case '--keep':
        o.keep = true;
        break;
      case '--no-pin':
        o.pin = false;
        break;
      case '--broker-cpu-prof':
        o.brokerCpuProf = true;
        break;
      default:
        return false;
    }
    return true;
  });
  return o;
}

async function startCeiling(pinIt: boolean): Promise<{ proc: ChildProcess; port: number; pinned: string }> {
  const proc = fork(path.join(__dirname, 'http-ceiling.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve, reject) => {
    proc.once('message', (m: { listening?: number; error?: string }) => (m.listening ? resolve(m.listening) : reject(new Error(`ceiling: ${m.error}`))));
    proc.once('exit', (code) => reject(new Error(`ceiling exited with ${code} before listening`)));
  });
  return { proc, port, pinned: pinIt ? pin(proc.pid!, 0) : 'not pinned (--no-pin)' };
}

/** CPU seconds (user + system) a process has used, from /proc (Linux); NaN elsewhere. */
function procCpuSeconds(pid: number): number {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return NaN;
  }
}

/** Runs `work` and reports the CPU share that `pid` and this process (autocannon) used meanwhile. */
async function busy<T>(pid: number, work: () => Promise<T>): Promise<{ result: T; serverBusy: number; autocannonBusy: number }> {
  const server0 = procCpuSeconds(pid);
  const self0 = process.cpuUsage();
  const t0 = now();
  const result = await work();
  const wall = (now() - t0) / 1000;
  const self = process.cpuUsage(self0);
  return { result, serverBusy: sig((procCpuSeconds(pid) - server0) / wall, 3), autocannonBusy: sig((self.user + self.system) / 1e6 / wall, 3) };
}

async function cannon(url: string, o: Options, body: Buffer, seconds: number): Promise<AutocannonResult> {
  return autocannon({
    url,
    method: 'POST',
    connections: o.connections,
    pipelining: 1,
    duration: seconds,
    body,
    headers: { 'content-type': 'application/octet-stream' },
  });
}

function figures(r: AutocannonResult): Record<string, number> {
  return {
    requestsPerSecond: sig(r['2xx'] / r.duration, 4),
    requestsPerSecondAverage: sig(r.requests.average, 4),
    ok: r['2xx'],
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    latencyP50Ms: r.latency.p50,
    latencyP90Ms: r.latency.p90,
    latencyP99Ms: r.latency.p99,
    latencyMaxMs: r.latency.max,
    latencyMeanMs: sig(r.latency.average, 3),
    seconds: sig(r.duration, 3),
  };
}

async function main(): Promise<void> {
  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench:http: ${(err as Error).message}\n`);
    process.exit(2);
  }
  fs.mkdirSync(o.dir, { recursive: true });
  const nproc = os.availableParallelism();
  const broker = await BrokerChild.start(path.join(o.dir, 'broker'), { pin: o.pin, cpuProf: o.brokerCpuProf, profDir: path.dirname(o.dir) });
  const ceiling = await startCeiling(o.pin);
  const clientPinned = o.pin ? pin(process.pid, 1) : 'not pinned (--no-pin)';
  const cleanUp = async (): Promise<void> => {
    ceiling.proc.kill('SIGTERM');
    await broker.stop();
    if (o.keep) return;
    fs.rmSync(o.dir, { recursive: true, force: true });
    try {
      fs.rmdirSync(path.dirname(o.dir));
    } catch {
      // not empty: leave it
    }
  };
  process.on('SIGINT', () => {
    void cleanUp().finally(() => process.exit(130));
  });
  const t0 = now();
  try {
    const topic = 'T';
    const created = await fetch(`http://127.0.0.1:${broker.port}/v1/topics/${topic}`, { method: 'PUT', body: JSON.stringify({ channels: o.channels }) });
    if (created.status !== 201) throw new Error(`PUT /v1/topics/${topic}: ${created.status} ${await created.text()}`);
    const targets = {
      ceiling: `http://127.0.0.1:${ceiling.port}/v1/topics/${topic}/messages`,
      broker: `http://127.0.0.1:${broker.port}/v1/topics/${topic}/messages`,
    };
    emit(
      machineLine('machine', {
        bench: 'http',
        nproc,
        execArgv: process.execArgv,
        quick: o.quick,
        dataDir: o.dir,
        layout: { broker: `child process ${broker.pid}, ${broker.pinned}`, ceiling: `child process ${ceiling.proc.pid}, ${ceiling.pinned}`, autocannon: `this process ${process.pid}, ${clientPinned}` },
        sync: 'batch (each answer after fdatasync)',
        sizes: { rounds: o.rounds, seconds: o.seconds, connections: o.connections, pipelining: 1, bodyBytes: o.bodyBytes, channels: o.channels, warmupSeconds: o.warmupSeconds },
      }),
    );
    const body = crypto.randomBytes(o.bodyBytes);
    for (const [name, url] of Object.entries(targets)) {
      progress(`http: warm-up ${name} for ${o.warmupSeconds} s`);
      await cannon(url, o, body, o.warmupSeconds);
    }
    const results: Record<'ceiling' | 'broker', Array<Record<string, number>>> = { ceiling: [], broker: [] };
    for (let round = 0; round < o.rounds; round++) {
      const order: Array<'ceiling' | 'broker'> = round % 2 === 0 ? ['ceiling', 'broker'] : ['broker', 'ceiling'];
      for (const target of order) {
        progress(`http round ${round + 1}/${o.rounds}: ${target}, ${o.connections} connections, ${o.seconds} s`);
        const r = await busy(target === 'broker' ? broker.pid : ceiling.proc.pid!, () => cannon(targets[target], o, body, o.seconds));
        const f = { ...figures(r.result), serverBusy: r.serverBusy, autocannonBusy: r.autocannonBusy };
        results[target].push(f);
        emit({ name: 'http', target, round: round + 1, route: 'POST /v1/topics/T/messages', bodyBytes: o.bodyBytes, ...f });
      }
    }
    const ratios = results.broker.map((b, i) => b.requestsPerSecond! / results.ceiling[i]!.requestsPerSecond!);
    const ratio = sig(median(ratios), 3);
    const hw = await (await fetch(`http://127.0.0.1:${broker.port}/v1/topics/${topic}`)).json() as { channelStates: Array<{ highWatermark: number }> };
    emit({
      name: 'http-summary',
      brokerRequestsPerSecond: sig(median(results.broker.map((r) => r.requestsPerSecond!)), 4),
      brokerLatencyP99Ms: results.broker.map((r) => r.latencyP99Ms),
      brokerBusy: results.broker.map((r) => r.serverBusy),
      ceilingRequestsPerSecond: sig(median(results.ceiling.map((r) => r.requestsPerSecond!)), 4),
      ceilingLatencyP99Ms: results.ceiling.map((r) => r.latencyP99Ms),
      ceilingBusy: results.ceiling.map((r) => r.serverBusy),
      autocannonBusy: [...results.ceiling, ...results.broker].map((r) => r.autocannonBusy),
      ratioPerRound: ratios.map((x) => sig(x, 3)),
      ratio,
      messagesStored: hw.channelStates.reduce((a, c) => a + c.highWatermark, 0),
    });
    const goals = [{ goal: 'POST /v1/topics/T/messages requests/s vs the bare µWS ceiling', target: '≥ 0.5', value: String(ratio), met: ratio >= 0.5 }];
    emit({ name: 'goals', met: goals.filter((g) => g.met).length, missed: goals.filter((g) => !g.met).length, goals, seconds: sig((now() - t0) / 1000, 3) });
  } finally {
    await cleanUp();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:http failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
