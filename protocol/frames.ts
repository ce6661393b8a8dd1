/**
 * Frame helpers over the generated code: encode, decode (untrusted bytes → typed error),
 * and the error frame. Pure: no I/O.
 */
import './numbers'; // before the generated code: 64-bit fields as numbers
import { waymark } from './generated/waymark';
import { ErrorTable, WaymarkError, errorCodeFromWire, type ErrorCode } from './errors';

export const Frame = waymark.v1.Frame;
export type Frame = waymark.v1.Frame;
export type FrameInit = waymark.v1.IFrame;
export type FrameKind = NonNullable<Frame['body']>;
export type Position = waymark.v1.IPosition;
export type TopicInfoWire = waymark.v1.ITopicInfo;
export { waymark };

/** Request kinds a client may send; a reply or push kind from a client is out of order. */
export const clientRequestKinds: ReadonlySet<FrameKind> = new Set<FrameKind>([
  'hello',
  'produce',
  'fetch',
  'subscribe',
  'credit',
  'commit',
  'seek',
  'unsubscribe',
  'getPositions',
  'createTopic',
  'deleteTopic',
  'listTopics',
  'describeTopic',
]);

export function encodeFrame(frame: FrameInit): Uint8Array {
  return Frame.encode(frame).finish();
}

/** Decodes untrusted bytes; anything unparseable is a BAD_REQUEST, never a crash. */
export function decodeFrame(bytes: Uint8Array): Frame {
  let frame: Frame;
  try {
    frame = Frame.decode(bytes);
  } catch (err) {
    throw new WaymarkError('BAD_REQUEST', `unparseable frame: ${(err as Error).message}`);
  }
  return frame;
}

export function errorFrame(id: number, err: unknown): FrameInit {
  const typed = toWaymarkError(err);
  return { id, error: { code: ErrorTable[typed.code].wire, name: typed.code, message: typed.message } };
}

/** Any thrown value as a WaymarkError (unknown errors become INTERNAL, message kept). */
export function toWaymarkError(err: unknown): WaymarkError {
  if (err instanceof WaymarkError) return err;
  const e = err as { code?: unknown; message?: unknown };
  if (e && typeof e.code === 'string' && Object.prototype.hasOwnProperty.call(ErrorTable, e.code)) {
    return new WaymarkError(e.code as ErrorCode, String(e.message ?? ''));
  }
  return new WaymarkError('INTERNAL', String(e?.message ?? err));
}

/** The WaymarkError an Error frame stands for (the SDK throws it). */
export function errorFromFrame(error: waymark.v1.IError): WaymarkError {
  const code = errorCodeFromWire(error.code ?? 0);
  return new WaymarkError(code, error.message || ErrorTable[code].text);
}
