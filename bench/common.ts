/**
 * Shared helpers of the benchmarks in bench/: JSON-line output, the machine line, sizes and
 * flags, percentiles, page-cache dropping, and message bodies that lz4 cannot trivially
 * shrink.
 *
 * House rule (STYLE.md "Benchmarks compare"): every figure is measured next to a baseline in
 * the same process and run, and reported as a ratio, because the machines are noisy.
 */
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

export type Json = Record<string, unknown>;

/** A bad flag of a benchmark entry point: printed as one line, exit 2. */
export class UsageError extends Error {}

/** A whole-number flag value (sizes like 64MiB or 5e6 allowed), at least `min`. */
export function countFlag(flag: string, text: string | undefined, min = 1): number {
  if (text === undefined) throw new UsageError(`${flag} needs a value`);
  const value = parseSize(text);
  if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`${flag} must be a whole number ≥ ${min}, not ${text}`);
  return value;
}

/**
 * The flag loop every entry point shares: `--quick` is skipped (read before, it sets the
 * defaults), `--help`/`-h` prints `usage` and exits 0, every other flag goes to `on` with a
 * way to take its value; `on` returns false for a flag it does not know (a UsageError).
 */
export function eachFlag(argv: readonly string[], usage: string, on: (flag: string, value: () => string | undefined) => boolean): void {
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    if (flag === '--quick') continue;
    if (flag === '--help' || flag === '-h') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    }
    if (!on(flag, () => argv[++i])) throw new UsageError(`unknown option ${flag} (see --help)`);
  }
}

/** `--only a,b`: a non-empty subset of `allowed`. */
export function onlyFlag<T extends string>(text: string | undefined, allowed: readonly T[]): Set<T> {
  const list = (text ?? '').split(',').filter(Boolean);
  const bad = list.filter((p) => !allowed.includes(p as T));
  if (list.length === 0 || bad.length > 0) throw new UsageError(`--only takes ${allowed.join(',')}, not ${bad.join(',') || 'nothing'}`);
  return new Set(list as T[]);
}

/** `--dir PATH`: the benchmark's own folder inside PATH. */
export function dirFlag(text: string | undefined, name: string): string {
  if (!text) throw new UsageError('--dir needs a path');
  return path.resolve(text, name);
}

/**
 * A full garbage collection before a timed pass, so that the garbage a previous pass left is
 * not collected on the next pass's clock; each pass still pays for its own. Uses V8's gc()
 * exposed at run time; a no-op if that is refused.
 */
const fullGc: (() => void) | null = (() => {
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc') as () => void;
  } catch {
    return null;
  }
})();

export function settle(): void {
  fullGc?.();
}

/**
 * Waits for the file system to write back what earlier phases left (`sync`): a phase that
 * times fdatasyncs must not start while the kernel is still flushing or freeing what the
 * previous phase wrote or deleted (the consume phase ends by deleting a 1.3 GB backlog;
 * latency measured right after it had p99 19-38 ms with the engine floor itself at p99
 * 4.8 ms and max 72 ms, against 2.4-3.1 ms when run on its own).
 */
export function quiesceDisk(): void {
  try {
    execFileSync('sync', { stdio: 'ignore' });
  } catch {
    // no sync(1): nothing to wait for that we can wait for
  }
}

/** The JSON lines of a results file (other lines, e.g. progress, skipped): the report scripts' input. */
export function loadJsonLines<T = Record<string, unknown>>(file: string): T[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as T);
}

/** One result line on stdout. Nothing else goes to stdout (progress goes to stderr). */
export function emit(line: Json): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

export function progress(text: string): void {
  process.stderr.write(`[bench] ${new Date().toISOString().slice(11, 19)} ${text}\n`);
}

/** Rounds to `digits` significant digits (figures, not accounting). */
export function sig(value: number, digits = 4): number {
  if (!Number.isFinite(value) || value === 0) return value;
  return Number(value.toPrecision(digits));
}

const sizeUnits: Record<string, number> = { '': 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1024 ** 2, g: 1e9, gb: 1e9, gib: 1024 ** 3 };

/** Parses `1GiB`, `512MiB`, `5e6`, `100k`, `1000`. */
export function parseSize(text: string): number {
  const match = /^([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)$/i.exec(text.trim());
  const unit = match ? sizeUnits[match[2]!.toLowerCase()] : undefined;
  if (!match || unit === undefined) throw new Error(`not a size: ${JSON.stringify(text)} (use e.g. 1000, 100k, 512MiB, 1GiB)`);
  return Math.round(Number(match[1]) * unit);
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${sig(bytes / 1024 ** 3, 3)} GiB`;
  if (bytes >= 1024 ** 2) return `${sig(bytes / 1024 ** 2, 3)} MiB`;
  if (bytes >= 1024) return `${sig(bytes / 1024, 3)} KiB`;
  return `${bytes} B`;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length)));
  return sorted[rank - 1]!;
}

export function latencySummary(samplesMs: ArrayLike<number> | Samples, unit: 'us' | 'ms'): Json {
  const sorted = (samplesMs instanceof Samples ? samplesMs.values().slice() : Float64Array.from(samplesMs)).sort();
  const scale = unit === 'us' ? 1000 : 1;
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    [`p50_${unit}`]: sig(percentile(sorted, 0.5) * scale, 3),
    [`p90_${unit}`]: sig(percentile(sorted, 0.9) * scale, 3),
    [`p99_${unit}`]: sig(percentile(sorted, 0.99) * scale, 3),
    [`max_${unit}`]: sig(sorted[sorted.length - 1]! * scale, 3),
    [`mean_${unit}`]: sig((sum / sorted.length) * scale, 3),
    samples: sorted.length,
  };
}

/**
 * The p99 of each consecutive block of `perBlock` samples, in ms (samples in the order they
 * were taken: at a fixed rate, a block is a stretch of time). Where a phase's tail sits —
 * spread evenly, or in a few seconds after something else the machine did — tells a
 * disturbance from a steady cost.
 */
export function blockP99s(samples: Samples, perBlock: number): number[] {
  const values = samples.values();
  const out: number[] = [];
  for (let at = 0; at + perBlock <= values.length; at += perBlock) {
    out.push(sig(percentile(values.slice(at, at + perBlock).sort(), 0.99), 3));
  }
  return out;
}

/**
 * A preallocated list of samples: recording one allocates nothing (a growing number[] is
 * garbage that lives through the whole run, and its copies on growth are promoted).
 */
export class Samples {
  private readonly data: Float64Array;
  length = 0;

  constructor(capacity: number) {
    this.data = new Float64Array(capacity);
  }

  push(value: number): void {
    if (this.length === this.data.length) throw new Error(`Samples: more than the ${this.data.length} samples it was made for`);
    this.data[this.length++] = value;
  }

  values(): Float64Array {
    return this.data.subarray(0, this.length);
  }
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The machine line: first line of every benchmark's output. */
export function machineLine(name: string, extra: Json = {}): Json {
  const cpus = os.cpus();
  const build = buildInfo();
  return {
    name,
    date: new Date().toISOString(),
    nproc: os.availableParallelism(),
    node: process.version,
    v8: process.versions.v8,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    cpu: cpus[0]?.model ?? 'unknown',
    memGiB: sig(os.totalmem() / 1024 ** 3, 3),
    loadavg: os.loadavg().map((l) => sig(l, 3)),
    // The build that runs (dist/build-info.json, written by npm run build): a copy of dist/
    // run later names the commit it was compiled from, not the one checked out now.
    commit: build.commit,
    engineDirty: build.engineDirty,
    builtAt: build.builtAt,
    argv: process.argv.slice(2),
    ...extra,
  };
}

function buildInfo(): { commit: string; engineDirty: boolean | string; builtAt: string } {
  try {
    const info = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'build-info.json'), 'utf8')) as { commit?: unknown; engineDirty?: unknown; builtAt?: unknown };
    return {
      commit: typeof info.commit === 'string' ? info.commit : 'unknown',
      engineDirty: typeof info.engineDirty === 'boolean' ? info.engineDirty : 'unknown',
      builtAt: typeof info.builtAt === 'string' ? info.builtAt : 'unknown',
    };
  } catch {
    return { commit: 'unknown', engineDirty: 'unknown', builtAt: 'unknown' }; // built without the stamp step
  }
}

export function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

/**
 * Writes back dirty pages and drops the page cache (needs root and a writable /proc/sys).
 * Returns null when it worked, else why not. It slows every process on the machine for a
 * moment (nothing else): callers only use it when asked for cold figures.
 */
export function dropCaches(): string | null {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return null;
  } catch (err) {
    return (err as Error).message.split('\n')[0]!;
  }
}

export type BodyKind = 'random' | 'text';

/**
 * Body sources: `random` is crypto-random bytes (lz4 gains nothing, so compression on only
 * costs the attempt); `text` is JSON-ish event text with random ids and numbers (lz4
 * shrinks it to roughly half). Bodies are views at random positions into one pool.
 */
export class BodySource {
  private readonly pool: Buffer;

  constructor(
    readonly kind: BodyKind,
    poolBytes = 16 * 1024 * 1024,
  ) {
    this.pool = kind === 'random' ? crypto.randomBytes(poolBytes) : textPool(poolBytes);
  }

  body(bytes: number): Uint8Array {
    const at = Math.floor(Math.random() * (this.pool.length - bytes));
    return this.pool.subarray(at, at + bytes);
  }
}

const words = ['checkout', 'cart', 'search', 'login', 'logout', 'view', 'click', 'refund', 'payment', 'shipping', 'profile', 'invoice', 'coupon', 'review', 'wishlist', 'stock'];

function textPool(bytes: number): Buffer {
  const parts: string[] = [];
  let length = 0;
  while (length < bytes) {
    const event = JSON.stringify({
      user: `u${crypto.randomInt(1e7)}`,
      event: words[crypto.randomInt(words.length)],
      path: `/${words[crypto.randomInt(words.length)]}/${crypto.randomInt(1e6)}`,
      ts: 1_760_000_000_000 + crypto.randomInt(1e9),
      session: crypto.randomBytes(8).toString('hex'),
      amount: crypto.randomInt(1e6) / 100,
    });
    parts.push(event);
    length += event.length + 1;
  }
  return Buffer.from(parts.join('\n'), 'latin1').subarray(0, bytes);
}

/** Sizes of the .log files of a channel folder, in offset order. */
export function segmentFiles(dir: string): Array<{ file: string; bytes: number }> {
  return fs
    .readdirSync(dir)
    .filter((name) => /^\d{20}\.log$/.test(name))
    .sort()
    .map((name) => ({ file: `${dir}/${name}`, bytes: fs.statSync(`${dir}/${name}`).size }));
}

export function dirBytes(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = `${dir}/${entry.name}`;
    total += entry.isDirectory() ? dirBytes(full) : fs.statSync(full).size;
  }
  return total;
}

export function now(): number {
  return performance.now();
}
