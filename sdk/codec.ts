/**
 * Compression for the SDK: lz4 (lz4-napi) in Node; none in a browser, where the SDK sends
 * uncompressed batches and cannot read lz4 batches (it reports UNSUPPORTED_VERSION).
 */
import { Compression, type Codec } from '../engine/format/record-batch';

let cached: Codec | null | undefined;

export function nodeCodec(): Codec | null {
  if (cached !== undefined) return cached;
  cached = null;
  try {
    if (typeof process !== 'undefined' && process.versions?.node) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const lz4 = require('lz4-napi') as typeof import('lz4-napi');
      cached = {
        id: Compression.lz4,
        compress: (raw) => lz4.compressSync(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)),
        decompress: (stored) => lz4.uncompressSync(stored),
      };
    }
  } catch {
    cached = null;
  }
  return cached;
}
