/** Protocol bounds (units last). Going past one is a typed error or a close with a reason. */
import { formatLimits } from '../engine/format/limits';

export const protocolVersion = 1;

export const protocolLimits = {
  /** A WebSocket message larger than this closes the connection (1009, "message too big"). */
  frameBytesMax: formatLimits.batchBytesMax + 64 * 1024,
  /** Requests a connection may have in flight; more are answered with an error. */
  inflightRequestCountMax: 10_000,
  /** Subscriptions per connection. */
  subscriptionCountMax: 256,
  /** The server stops pushing to a socket holding more than this many unsent bytes, and waits to read a fetch. */
  socketBufferedBytesMax: 8 * 1024 * 1024,
  /**
   * Unsent bytes past which the connection is closed (1008) rather than a frame dropped: room
   * for the 8 MiB, a whole read (engine readBytesMax, 64 MiB) and a frame, and the replies of
   * requests a client sends without reading their answers.
   */
  socketBackpressureBytesMax: 128 * 1024 * 1024,
  /** Bytes one push frame carries at most (a single larger batch still goes whole). */
  pushBytesMax: 1024 * 1024,
  /** Bounds of a pack subscription's tick. */
  tickIntervalMsMin: 10,
  /** The longest a timer waits (past it Node fires at once: a tick_interval_ms of 2^32 − 1 ticked every millisecond). */
  tickIntervalMsMax: 0x7fffffff,
  tickIntervalMsDefault: 200,
  /** Name lengths. */
  groupNameBytesMax: 200,
  clientNameBytesMax: 200,
} as const;

if (protocolLimits.frameBytesMax <= formatLimits.batchBytesMax) throw new Error('protocol/limits: a frame must hold a whole batch');
