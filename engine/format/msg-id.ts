/**
 * msgId: 16 bytes, time-ordered, made by the producer (or the broker when absent).
 *
 *   bytes 0..5   48-bit Unix time in ms, big-endian (so byte order = time order)
 *   bytes 6..15  80 bits: random at the first id of each ms, then +1 per id in the same ms
 *                (ULID's monotonic rule), so ids made by one generator strictly increase.
 *
 * Text form: 32 lowercase hex digits. Collisions between generators need two of them to
 * draw the same 80 random bits in the same millisecond.
 */
export const msgIdBytes = 16;

export class MsgIdGenerator {
  private lastMs = -1;
  private readonly tail = new Uint8Array(10);

  next(nowMs: number = Date.now()): Uint8Array {
    const id = new Uint8Array(msgIdBytes);
    this.writeNext(id, 0, nowMs);
    return id;
  }

  /** Writes the next id at buf[pos..pos+16) (no allocation: the batch encoder's path). */
  writeNext(buf: Uint8Array, pos: number, nowMs: number = Date.now()): void {
    if (nowMs > this.lastMs) {
      this.lastMs = nowMs;
      globalThis.crypto.getRandomValues(this.tail);
      this.tail[0]! &= 0x7f; // leave headroom so +1 per id never overflows within a ms
    } else {
      increment(this.tail);
    }
    writeMs(buf, pos, this.lastMs);
    buf.set(this.tail, pos + 6);
  }
}

function increment(bytes: Uint8Array): void {
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i] !== 0xff) {
      bytes[i]!++;
      return;
    }
    bytes[i] = 0;
  }
}

function writeMs(buf: Uint8Array, pos: number, ms: number): void {
  let rest = ms;
  for (let i = 5; i >= 0; i--) {
    buf[pos + i] = rest % 256;
    rest = Math.floor(rest / 256);
  }
}

/** The millisecond timestamp inside a msgId. */
export function msgIdTime(id: Uint8Array): number {
  let ms = 0;
  for (let i = 0; i < 6; i++) ms = ms * 256 + id[i]!;
  return ms;
}

const hexDigits = '0123456789abcdef';

// Node's Buffer formats hex natively (several times faster than the loop); browsers use the loop.
const NodeBuffer = (globalThis as { Buffer?: { from(b: ArrayBufferLike, o: number, l: number): { toString(e: string): string } } }).Buffer;

export function msgIdToHex(id: Uint8Array): string {
  if (NodeBuffer) return NodeBuffer.from(id.buffer, id.byteOffset, id.length).toString('hex');
  let out = '';
  for (let i = 0; i < id.length; i++) out += hexDigits[id[i]! >> 4]! + hexDigits[id[i]! & 15]!;
  return out;
}

/** Parses 32 hex digits; returns null for anything else. */
export function msgIdFromHex(text: string): Uint8Array | null {
  if (!/^[0-9a-fA-F]{32}$/.test(text)) return null;
  const id = new Uint8Array(msgIdBytes);
  for (let i = 0; i < msgIdBytes; i++) id[i] = parseInt(text.slice(i * 2, i * 2 + 2), 16);
  return id;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
