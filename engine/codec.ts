/** lz4 for record sections (lz4-napi block format with the raw size prepended, 4 bytes LE). */
import { compressSync, uncompressSync } from 'lz4-napi';
import { Compression, type Codec } from './format/record-batch';

export const lz4Codec: Codec = {
  id: Compression.lz4,
  compress(raw: Uint8Array): Uint8Array {
    return compressSync(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength));
  },
  decompress(stored: Uint8Array): Uint8Array {
    return uncompressSync(stored);
  },
};
