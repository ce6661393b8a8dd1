/**
 * Checksums and key hashes. xxh64 (batch checksums) comes from xxhash-wasm: its WebAssembly
 * module loads asynchronously once, and `loadChecksum()` must resolve before xxh64 is called
 * (openStore and connect do it). In Node, inputs from `nativeXxh64MinBytes` up go to
 * @node-rs/xxhash instead: it hashes the caller's bytes where they are, while the
 * WebAssembly call first copies them into its own memory — for a 1 MiB batch 0.08 ms against
 * 0.18 ms (0.24 ms with the batch not in cache), measured in Node 20 on the bench machine;
 * below a few KiB the native call's fixed cost (about 130 ns against 75 ns at 60 bytes) loses.
 * Same algorithm, same seed: a test holds the two equal at every length. In a browser (or
 * wherever the native module is absent) everything goes through WebAssembly.
 *
 * xxh32 (key hashes: a msgId, a key, a trace id — 16 to a few hundred bytes) is plain
 * JavaScript: for inputs that short the call into WebAssembly and the copy there cost more
 * than the hash (about 120–260 ns against 22–37 ns for a 16-byte msgId, measured in Node 20),
 * and the append path hashes every record's keys. A test holds it equal to xxhash-wasm's h32
 * at every length and seed. Works in Node and in browsers.
 */
import xxhash from 'xxhash-wasm';

type Hasher = Awaited<ReturnType<typeof xxhash>>;
let hasher: Hasher | null = null;
let loading: Promise<void> | null = null;

/** From this many bytes up, xxh64 uses the native hasher when there is one. */
export const nativeXxh64MinBytes = 4096;
interface NativeXxhash {
  xxh64(input: Uint8Array, seed?: bigint): bigint;
  Xxh64: new () => { update(input: Uint8Array): unknown; digest(): bigint };
}
const native = loadNative();
const nativeXxh64: ((bytes: Uint8Array) => bigint) | null = native ? (bytes) => native.xxh64(bytes) : null;
const NativeXxh64 = native?.Xxh64 ?? null;

function loadNative(): NativeXxhash | null {
  try {
    if (typeof process === 'undefined' || !process.versions?.node) return null;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('@node-rs/xxhash') as NativeXxhash;
  } catch {
    return null; // not installed or no binary for this platform: WebAssembly does it all
  }
}

export function loadChecksum(): Promise<void> {
  if (hasher) return Promise.resolve();
  loading ??= xxhash().then((h) => {
    hasher = h;
  });
  return loading;
}

function get(): Hasher {
  if (!hasher) throw new Error('checksum module not loaded: await loadChecksum() first');
  return hasher;
}

/** xxh64 (seed 0) of the bytes, as an unsigned 64-bit bigint. */
export function xxh64(bytes: Uint8Array): bigint {
  if (nativeXxh64 !== null && bytes.length >= nativeXxh64MinBytes) return nativeXxh64(bytes);
  return get().h64Raw(bytes);
}

/** An xxh64 (seed 0) fed in pieces: the same value as xxh64 of the pieces joined. */
export interface Xxh64Stream {
  update(bytes: Uint8Array): void;
  digest(): bigint;
}

/**
 * A streaming xxh64: the native hasher's when there is one (it hashes each piece where it is),
 * else WebAssembly's. (`implementation` is for the test that holds both equal to xxh64.)
 */
export function xxh64Stream(implementation: 'native' | 'wasm' = NativeXxh64 !== null ? 'native' : 'wasm'): Xxh64Stream {
  if (implementation === 'native') {
    if (NativeXxh64 === null) throw new Error('xxh64Stream: no native hasher here');
    const state = new NativeXxh64();
    return { update: (bytes) => void state.update(bytes), digest: () => state.digest() };
  }
  const state = get().create64();
  return { update: (bytes) => void state.update(bytes), digest: () => state.digest() };
}

/** xxhash-wasm's xxh64 and the native one (null when absent), for the test that holds them equal. */
export function xxh64Implementations(): { wasm: (bytes: Uint8Array) => bigint; native: ((bytes: Uint8Array) => bigint) | null } {
  return { wasm: (bytes) => get().h64Raw(bytes), native: nativeXxh64 };
}

/** xxh32 of the bytes with a seed; the key index uses the seed to separate kinds of key. */
export function xxh32(bytes: Uint8Array, seed: number): number {
  return xxh32Range(bytes, 0, bytes.length, seed);
}

const prime1 = 0x9e3779b1 | 0;
const prime2 = 0x85ebca77 | 0;
const prime3 = 0xc2b2ae3d | 0;
const prime4 = 0x27d4eb2f | 0;
const prime5 = 0x165667b1 | 0;

/** XXH32 (the reference algorithm, little-endian lanes) of bytes[start, end) with a seed, unsigned. */
export function xxh32Range(bytes: Uint8Array, start: number, end: number, seed: number): number {
  const length = end - start;
  let i = start;
  let h: number;
  if (length >= 16) {
    let v1 = (seed + prime1 + prime2) | 0;
    let v2 = (seed + prime2) | 0;
    let v3 = seed | 0;
    let v4 = (seed - prime1) | 0;
    for (const last = end - 16; i <= last; i += 16) {
      v1 = Math.imul(rotl((v1 + Math.imul(lane(bytes, i), prime2)) | 0, 13), prime1);
      v2 = Math.imul(rotl((v2 + Math.imul(lane(bytes, i + 4), prime2)) | 0, 13), prime1);
      v3 = Math.imul(rotl((v3 + Math.imul(lane(bytes, i + 8), prime2)) | 0, 13), prime1);
      v4 = Math.imul(rotl((v4 + Math.imul(lane(bytes, i + 12), prime2)) | 0, 13), prime1);
    }
    h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0;
  } else {
    h = (seed + prime5) | 0;
  }
  h = (h + length) | 0;
  for (; i + 4 <= end; i += 4) h = Math.imul(rotl((h + Math.imul(lane(bytes, i), prime3)) | 0, 17), prime4);
  for (; i < end; i++) h = Math.imul(rotl((h + Math.imul(bytes[i]!, prime5)) | 0, 11), prime1);
  h ^= h >>> 15;
  h = Math.imul(h, prime2);
  h ^= h >>> 13;
  h = Math.imul(h, prime3);
  h ^= h >>> 16;
  return h >>> 0;
}

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

function lane(bytes: Uint8Array, i: number): number {
  return bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
}

/** xxhash-wasm's own xxh32, for the test that holds xxh32Range equal to it. */
export function xxh32Wasm(bytes: Uint8Array, seed: number): number {
  return get().h32Raw(bytes, seed) >>> 0;
}
