/**
 * Repack: which channel a hash key goes to (Milvus msgstream's repack function by hash
 * keys). Pure, shared by the SDK and the server (HTTP produce with a key and no channel), so
 * both send a key to the same channel: xxh32 of the key's UTF-8 bytes (seed 0) mod channels.
 */
import { xxh32 } from './checksum';

const encoder = new TextEncoder();

export function channelForKey(key: string | Uint8Array, channelCount: number): number {
  const bytes = typeof key === 'string' ? encoder.encode(key) : key;
  return xxh32(bytes, 0) % channelCount;
}
