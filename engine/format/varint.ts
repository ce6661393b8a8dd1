/**
 * Unsigned LEB128 varints and zigzag-encoded signed varints, for safe integers (|v| < 2^53).
 * Values below 2^28 take the fast bitwise path; larger ones use arithmetic so that no bits
 * are lost to JavaScript's 32-bit bitwise operators.
 */
import { WaymarkError } from './errors';

export const varintBytesMax = 8; // 2^53 needs 8 LEB128 groups of 7 bits

export function varintSize(value: number): number {
  if (value < 0x80) return 1;
  if (value < 0x4000) return 2;
  if (value < 0x200000) return 3;
  if (value < 0x10000000) return 4;
  let size = 4;
  let rest = Math.floor(value / 0x10000000);
  while (rest > 0) {
    size++;
    rest = Math.floor(rest / 0x80);
  }
  return size;
}

/** Writes `value` (0 ≤ value ≤ 2^53-1) at `pos`; returns the position after it. */
export function writeVarint(buf: Uint8Array, pos: number, value: number): number {
  // One and two bytes (every length and delta of a small record) with bit operations; the
  // loop's % and Math.floor work on doubles and were a tenth of encoding a batch.
  if (value < 0x80) {
    buf[pos] = value;
    return pos + 1;
  }
  if (value < 0x4000) {
    buf[pos] = (value & 0x7f) | 0x80;
    buf[pos + 1] = value >>> 7;
    return pos + 2;
  }
  while (value >= 0x80) {
    buf[pos++] = (value % 0x80) | 0x80;
    value = Math.floor(value / 0x80);
  }
  buf[pos++] = value;
  return pos;
}

/** Zigzag maps signed to unsigned: 0,-1,1,-2 → 0,1,2,3 (safe for |v| < 2^52). */
export function zigzag(value: number): number {
  return value >= 0 ? value * 2 : -value * 2 - 1;
}

export function unzigzag(value: number): number {
  return value % 2 === 0 ? value / 2 : -(value + 1) / 2;
}

/**
 * A cursor over bytes for reading varints and fixed fields. Every read is bounds-checked
 * against `end`: a record that claims more bytes than it has is a CORRUPT_BATCH, never an
 * out-of-bounds read.
 */
export class Reader {
  pos: number;
  end: number;
  constructor(
    readonly buf: Uint8Array,
    pos: number,
    end: number,
  ) {
    this.pos = pos;
    this.end = end;
  }

  varint(): number {
    let result = 0;
    let multiplier = 1;
    for (let i = 0; i < varintBytesMax; i++) {
      if (this.pos >= this.end) throw corrupt('varint runs past the end');
      const byte = this.buf[this.pos++]!;
      result += (byte & 0x7f) * multiplier;
      if (byte < 0x80) return result;
      multiplier *= 0x80;
    }
    throw corrupt('varint longer than 8 bytes');
  }

  signedVarint(): number {
    return unzigzag(this.varint());
  }

  u8(): number {
    if (this.pos >= this.end) throw corrupt('byte past the end');
    return this.buf[this.pos++]!;
  }

  /** Steps over `length` bytes (bounds-checked) and returns where they start. */
  skip(length: number): number {
    if (length < 0 || this.pos + length > this.end) throw corrupt(`${length} bytes run past the end`);
    const at = this.pos;
    this.pos += length;
    return at;
  }

  bytes(length: number): Uint8Array {
    if (length < 0 || this.pos + length > this.end) throw corrupt(`${length} bytes run past the end`);
    const out = this.buf.subarray(this.pos, this.pos + length);
    this.pos += length;
    return out;
  }
}

function corrupt(what: string): WaymarkError {
  return new WaymarkError('CORRUPT_BATCH', `corrupt record: ${what}`);
}
