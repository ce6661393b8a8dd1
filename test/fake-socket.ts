/**
 * A broker session in process on a fake µWS socket that never sends: what the broker hands it
 * is decoded and kept, and counted as unsent until the test says otherwise.
 */
import type { WebSocket } from 'uWebSockets.js';
import { decodeFrame, encodeFrame, type Frame, type FrameInit } from '../protocol/frames';
import { protocolVersion } from '../protocol/limits';
import type { Broker } from '../server/broker';
import { Session, type SessionData } from '../server/session';

/** Lets every pending callback and I/O completion run, until `done()` holds. */
export async function until(done: () => boolean): Promise<void> {
  while (!done()) await new Promise((resolve) => setImmediate(resolve));
}

/** A µWS socket that never sends: what the broker gives it stays unsent until drain(). */
export class StuckSocket {
  unsent = 0;
  unsentMax = 0;
  frames: Frame[] = [];
  ended: { code: number; reason: string } | null = null;
  /** What send answers: 0 (buffered), or 2 (dropped, as µWS past maxBackpressure). */
  status = 0;

  send(bytes: Uint8Array): number {
    if (this.status === 2) return 2;
    this.unsent += bytes.byteLength;
    this.unsentMax = Math.max(this.unsentMax, this.unsent);
    this.frames.push(decodeFrame(Uint8Array.from(bytes)));
    return 0;
  }

  cork(f: () => void): this {
    f();
    return this;
  }

  getBufferedAmount(): number {
    return this.unsent;
  }

  end(code: number, reason: string): void {
    this.ended = { code, reason };
  }

  replies(): Frame[] {
    return this.frames.filter((f) => f.id > 0);
  }
}

export function frame(init: FrameInit): ArrayBuffer {
  const bytes = encodeFrame(init);
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

/** A session of `broker` on a StuckSocket, past its Hello. */
export async function greeted(broker: Broker): Promise<{ ws: StuckSocket; session: Session }> {
  const ws = new StuckSocket();
  const session = new Session(ws as unknown as WebSocket<SessionData>, broker);
  session.onMessage(frame({ id: 1, hello: { protocolVersion } }), true);
  await until(() => ws.replies().length === 1);
  return { ws, session };
}
