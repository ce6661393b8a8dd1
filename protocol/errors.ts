/**
 * The protocol's error table: the one table of Waymark error codes (string code, wire
 * number, HTTP status). It is defined in engine/format/errors.ts, the lowest pure layer, so
 * the engine's typed errors carry the same codes; server and SDK take it from here.
 */
export { ErrorTable, WaymarkError, errorCodeFromWire, isErrorCode } from '../engine/format/errors';
export type { ErrorCode } from '../engine/format/errors';
