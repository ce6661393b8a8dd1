/**
 * The one table of Waymark error codes.
 *
 * Every typed error anywhere in Waymark — engine, protocol, server, SDK — carries a `code`
 * from this table. Each code has a fixed wire number (used in protocol Error frames) and an
 * HTTP status (used by the HTTP API). The table lives in engine/format because that is the
 * lowest pure layer that every other layer may import (DESIGN §2); protocol/ re-exports it
 * as the protocol's error table.
 *
 * Invariants: codes and wire numbers are unique; a wire number is never reused for another
 * meaning once released (retire a code by leaving its row here).
 */

export const ErrorTable = {
  // --- caller errors (4xx) ---
  BAD_REQUEST: { wire: 1, http: 400, text: 'the request is malformed' },
  TOPIC_NOT_FOUND: { wire: 2, http: 404, text: 'no such topic' },
  TOPIC_EXISTS: { wire: 3, http: 409, text: 'the topic already exists' },
  CHANNEL_NOT_FOUND: { wire: 4, http: 404, text: 'no such channel' },
  OFFSET_OUT_OF_RANGE: { wire: 5, http: 416, text: 'the offset is outside the channel' },
  MESSAGE_NOT_FOUND: { wire: 6, http: 404, text: 'no such message' },
  MESSAGE_TOO_LARGE: { wire: 7, http: 413, text: 'a message is larger than allowed' },
  BATCH_TOO_LARGE: { wire: 8, http: 413, text: 'a batch is larger than allowed' },
  KEY_TOO_LARGE: { wire: 9, http: 413, text: 'a key is larger than allowed' },
  HEADERS_TOO_LARGE: { wire: 10, http: 413, text: 'the headers are larger than allowed' },
  TOO_MANY_CHANNELS: { wire: 11, http: 400, text: 'too many channels' },
  INVALID_NAME: { wire: 12, http: 400, text: 'the name is not allowed' },
  INVALID_ARGUMENT: { wire: 13, http: 400, text: 'an argument is out of range' },
  CORRUPT_BATCH: { wire: 14, http: 400, text: 'the record batch fails its checksum or structure check' },
  UNSUPPORTED_VERSION: { wire: 15, http: 400, text: 'the format version is not supported' },
  DUPLICATE_SEQUENCE: { wire: 16, http: 409, text: 'an older producer sequence was resent; it is already stored' },
  UNSUPPORTED: { wire: 17, http: 501, text: 'not supported by this broker yet' },
  SUBSCRIPTION_NOT_FOUND: { wire: 18, http: 404, text: 'no such subscription on this connection' },
  TOO_MANY_REQUESTS: { wire: 19, http: 429, text: 'too many requests in flight' },
  NOT_READY: { wire: 20, http: 400, text: 'send hello first' },
  CONNECTION_LOST: { wire: 21, http: 503, text: 'the connection to the broker was lost' },
  TIMEOUT: { wire: 22, http: 504, text: 'the broker did not answer in time' },
  CLIENT_CLOSED: { wire: 23, http: 400, text: 'the client is closed' },
  NOT_FOUND: { wire: 24, http: 404, text: 'no such route' },
  // --- server-side conditions (5xx / 503) ---
  STORE_CLOSED: { wire: 40, http: 503, text: 'the store is closed' },
  STORE_LOCKED: { wire: 41, http: 503, text: 'the data folder is locked by another process' },
  STORAGE_FAILED: { wire: 42, http: 503, text: 'a write or fsync failed; the channel refuses appends until reopened' },
  CORRUPT_FILE: { wire: 43, http: 500, text: 'a file on disk is corrupt' },
  INTERNAL: { wire: 50, http: 500, text: 'internal error' },
} as const;

export type ErrorCode = keyof typeof ErrorTable;

/** A typed error: `code` from ErrorTable, plus optional structured details. */
export class WaymarkError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message?: string, details?: Record<string, unknown>) {
    super(message ?? ErrorTable[code].text);
    this.name = 'WaymarkError';
    this.code = code;
    this.details = details;
  }
  get wire(): number {
    return ErrorTable[this.code].wire;
  }
  get httpStatus(): number {
    return ErrorTable[this.code].http;
  }
}

const byWire = new Map<number, ErrorCode>();
for (const code of Object.keys(ErrorTable) as ErrorCode[]) {
  const wire = ErrorTable[code].wire;
  if (byWire.has(wire)) throw new Error(`ErrorTable: wire number ${wire} used twice`);
  byWire.set(wire, code);
}

/** The code for a wire number; unknown numbers (from a newer peer) map to INTERNAL. */
export function errorCodeFromWire(wire: number): ErrorCode {
  return byWire.get(wire) ?? 'INTERNAL';
}

export function isErrorCode(value: string): value is ErrorCode {
  return Object.prototype.hasOwnProperty.call(ErrorTable, value);
}

/**
 * A name or value as an error message shows it: quoted, and cut to its first 64 characters
 * with its length when longer (a 70,000-byte group name came back whole in the error).
 */
export function quoted(value: string): string {
  if (value.length <= 64) return JSON.stringify(value);
  return `${JSON.stringify(value.slice(0, 64))}… (${new TextEncoder().encode(value).length} bytes)`;
}

/**
 * A value a caller gave, as an error message shows it: a string quoted (and cut short, as
 * `quoted`), an array or object as JSON (cut short: `[1]` was shown as "1", `"10"` and 10
 * alike), bytes by their length, anything else as String() gives it (Infinity, NaN, null).
 */
export function shown(value: unknown): string {
  if (typeof value === 'string') return quoted(value);
  if (typeof value !== 'object' || value === null) return String(value);
  if (ArrayBuffer.isView(value)) return `${value.constructor.name} of ${value.byteLength} bytes`;
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    text = undefined; // a cycle, a BigInt inside
  }
  if (text === undefined) return Object.prototype.toString.call(value);
  return text.length <= 64 ? text : `${text.slice(0, 64)}… (${text.length} characters of JSON)`;
}
