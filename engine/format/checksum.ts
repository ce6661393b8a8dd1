/**
 * Checksums and key hashes (xxhash-wasm). The WebAssembly module loads asynchronously once;
 * `loadChecksum()` must resolve before any other function here is called (openStore and
 * connect do it). Works in Node and in browsers.
 */
import xxhash from 'xxhash-wasm';

type Hasher = Awaited<ReturnType<typeof xxhash>>;
let hasher: Hasher | null = null;
let loading: Promise<void> | null = null;

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
  return get().h64Raw(bytes);
}

/** xxh32 of the bytes with a seed; the key index uses the seed to separate kinds of key. */
export function xxh32(bytes: Uint8Array, seed: number): number {
  return get().h32Raw(bytes, seed) >>> 0;
}
