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
  /** The 6 time bytes of lastMs, then the 10-byte counter tail: the last id made. */
  private readonly last = new Uint8Array(msgIdBytes);

  next(nowMs: number = Date.now()): Uint8Array {
    const id = new Uint8Array(msgIdBytes);
    this.writeNext(id, 0, nowMs);
    return id;
  }

  /**
   * Writes the next id at buf[pos..pos+16) (no allocation: the batch encoder's path). Byte
   * stores in a loop: for 16 bytes they cost less than a TypedArray.set call, and the time
   * bytes are worked out once per millisecond.
   */
  writeNext(buf: Uint8Array, pos: number, nowMs: number = Date.now()): void {
    const last = this.advance(nowMs);
    for (let i = 0; i < msgIdBytes; i++) buf[pos + i] = last[i]!;
  }

  /** writeNext to two places at once, in one loop (the batch encoder keeps the ids apart as well as in the records). */
  writeNextTwice(a: Uint8Array, aPos: number, b: Uint8Array, bPos: number, nowMs: number): void {
    const last = this.advance(nowMs);
    for (let i = 0; i < msgIdBytes; i++) {
      const byte = last[i]!;
      a[aPos + i] = byte;
      b[bPos + i] = byte;
    }
  }

  /** Moves to the next id and returns it (the generator's own array: copy it out at once). */
  private advance(nowMs: number): Uint8Array {
    const last = this.last;
    if (nowMs > this.lastMs) {
      this.lastMs = nowMs;
      writeMs(last, 0, nowMs);
      globalThis.crypto.getRandomValues(last.subarray(6));
      last[6]! &= 0x7f; // leave headroom so +1 per id never overflows within a ms
    } else {
      increment(last);
    }
    return last;
  }
}

/** +1 on the 10-byte counter tail (bytes 6..15) of an id. */
function increment(id: Uint8Array): void {
  for (let i = msgIdBytes - 1; i >= 6; i--) {
    if (id[i] !== 0xff) {
      id[i]!++;
      return;
    }
    id[i] = 0;
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

/** Ids packed back to back (16 bytes each) as one string of 32 hex digits per id; in Node one native call. */
export function packedMsgIdsToHex(packed: Uint8Array): string {
  if (NodeBuffer) return NodeBuffer.from(packed.buffer, packed.byteOffset, packed.byteLength).toString('hex');
  let out = '';
  for (let at = 0; at < packed.length; at += msgIdBytes) out += msgIdToHex(packed.subarray(at, at + msgIdBytes));
  return out;
}

/**
 * Packed ids as one hex string each: one hex conversion for them all, then a substring per
 * id (0.02 ms for 1,000 ids against 0.16–0.19 ms one id at a time, Node 20).
 */
export function packedMsgIdsToHexList(packed: Uint8Array): string[] {
  const hex = packedMsgIdsToHex(packed);
  const out: string[] = new Array(packed.length / msgIdBytes);
  for (let i = 0; i < out.length; i++) out[i] = hex.substring(i * 32, i * 32 + 32);
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
