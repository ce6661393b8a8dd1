/**
 * The socket under the client: the `ws` package in Node (Node 20 has no global WebSocket),
 * the global WebSocket in a browser. Both are driven through the same small surface.
 */
import { WaymarkError } from '../engine/format/errors';

export interface Socket {
  readonly bufferedAmount: number;
  send(bytes: Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** Drops the connection at once, without the closing handshake (a dead peer never answers it); `close` follows. */
  terminate(): void;
  /** Sends a WebSocket ping (Node only: a browser's WebSocket has none); the pong comes to `alive`. */
  ping?(): void;
}

export interface SocketHandlers {
  open(): void;
  message(bytes: Uint8Array): void;
  close(code: number, reason: string): void;
  error(message: string): void;
  /** A pong came (the peer is there). */
  alive?(): void;
}

interface BrowserWebSocket {
  binaryType: string;
  bufferedAmount: number;
  readyState: number;
  onopen: (() => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

const isNode = typeof process !== 'undefined' && typeof process.versions === 'object' && !!process.versions.node;

export function openSocket(url: string, handlers: SocketHandlers): Socket {
  if (isNode) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const WS = require('ws') as typeof import('ws');
    const ws = new WS.WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    ws.binaryType = 'nodebuffer';
    ws.on('open', () => handlers.open());
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) handlers.message(data);
    });
    ws.on('close', (code: number, reason: Buffer) => handlers.close(code, reason.toString()));
    ws.on('error', (err: Error) => handlers.error(err.message));
    ws.on('pong', () => handlers.alive?.());
    return {
      get bufferedAmount() {
        return ws.bufferedAmount;
      },
      send: (bytes) => ws.send(bytes, { binary: true }),
      close: (code, reason) => (ws.readyState === ws.CONNECTING ? ws.terminate() : ws.close(code, reason)),
      terminate: () => ws.terminate(),
      ping: () => ws.ping(),
    };
  }
  const Ctor = (globalThis as unknown as { WebSocket?: new (url: string) => BrowserWebSocket }).WebSocket;
  if (!Ctor) throw new WaymarkError('UNSUPPORTED', 'no WebSocket implementation available');
  const ws = new Ctor(url);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => handlers.open();
  ws.onmessage = (event) => {
    if (event.data instanceof ArrayBuffer) handlers.message(new Uint8Array(event.data));
  };
  ws.onclose = (event) => handlers.close(event.code, event.reason);
  ws.onerror = () => handlers.error('WebSocket error');
  return {
    get bufferedAmount() {
      return ws.bufferedAmount;
    },
    send: (bytes) => ws.send(bytes),
    close: (code, reason) => ws.close(code, reason),
    terminate: () => ws.close(),
  };
}
