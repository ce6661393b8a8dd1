/**
 * The connection to a broker: request/reply by id, pushes routed by subscription, and
 * reconnection with exponential backoff.
 *
 * Invariants:
 * - every request resolves with its reply or rejects with a typed WaymarkError (the error
 *   frame's code, CONNECTION_LOST when the socket drops, TIMEOUT, CLIENT_CLOSED) — never both,
 *   never neither;
 * - after a reconnect, `reconnect` listeners run (producers resend their in-flight batches,
 *   consumers subscribe again from where they were) before queued requests go out;
 * - requests made while reconnecting wait for the connection (up to requestTimeoutMs);
 * - a connection that stopped answering is dropped and made again: when a request gets no
 *   reply within requestTimeoutMs (as Kafka's client does), and in Node when a ping gets no
 *   pong within heartbeatMs while nothing else came (a peer gone without a FIN: a dead
 *   host, a NAT or firewall that forgot the flow). Otherwise only the OS would notice, after
 *   about 15 minutes, and until then every request timed out and consumers waited.
 */
import { loadChecksum } from '../engine/format/checksum';
import { WaymarkError } from '../engine/format/errors';
import { decodeFrame, encodeFrame, encodeProduceFrame, errorFromFrame, type Frame, type FrameInit } from '../protocol/frames';
import { protocolVersion } from '../protocol/limits';
import { checkMs } from './options';
import { openSocket, type Socket } from './transport';
import { RequestTable } from './request-table';

/** Every option of ConnectOptions (checkKnown: `reconect: false` was ignored). */
export const connectOptionNames = ['clientName', 'requestTimeoutMs', 'reconnect', 'reconnectDelayMs', 'reconnectDelayMsMax', 'connectTimeoutMs', 'heartbeatMs'] as const satisfies ReadonlyArray<keyof ConnectOptions>;

export interface ConnectOptions {
  /** Shown to the broker in Hello. */
  clientName?: string;
  /** A request without a reply after this long rejects with TIMEOUT (default 30 s). */
  requestTimeoutMs?: number;
  /** Reconnect after an unexpected close (default true). */
  reconnect?: boolean;
  /** First backoff delay; doubles per failed attempt up to reconnectDelayMsMax. */
  reconnectDelayMs?: number;
  reconnectDelayMsMax?: number;
  /** The first connection must open within this long (default 10 s). */
  connectTimeoutMs?: number;
  /**
   * Node: a ping goes out after this long without a frame from the broker, and the connection
   * is dropped (and made again) when nothing comes in the next period either (default
   * 10,000 ms; 0: no pings). Browsers' WebSockets cannot ping: there requestTimeoutMs alone
   * finds a dead connection.
   */
  heartbeatMs?: number;
}

type PushHandler = (frame: Frame) => void;

interface PendingRequest {
  resolve: (frame: Frame) => void;
  reject: (err: WaymarkError) => void;
  /** performance.now() past which the request fails with TIMEOUT. */
  deadline: number;
}

export type ClientEvent = 'reconnect' | 'disconnect' | 'close';

export class Connection {
  private socket: Socket | null = null;
  /** The hello on the current socket was answered: requests may go out. */
  private greeted = false;
  /**
   * Requests awaiting a reply (RequestTable says why not a Map). One timer, armed for the
   * oldest deadline, serves them all (expireRequests) — a timer per request was, at thousands
   * of requests a second, a large share of the objects the producer's collector had to move.
   */
  private readonly pending = new RequestTable<PendingRequest>();
  private timeoutTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly pushHandlers = new Map<number, PushHandler>();
  private readonly listeners: Record<ClientEvent, Set<() => void>> = { reconnect: new Set(), disconnect: new Set(), close: new Set() };
  private nextId = 1;
  private nextSubscription = 1;
  private closed = false;
  /** Set when the socket is lost and reconnect is off: what every later request fails with. */
  private gone: WaymarkError | null = null;
  private attempt = 0;
  /** Heartbeat (heartbeatMs): a frame or pong came in this period; a ping is out unanswered. */
  private heard = false;
  private pingOut = false;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  /** Why the socket is being dropped (dropSocket), said in the CONNECTION_LOST errors that follow. */
  private dropReason: string | null = null;
  private ready: Promise<void>;
  private markReady: () => void = () => undefined;
  private readonly options: Required<ConnectOptions>;

  private constructor(
    readonly url: string,
    options: ConnectOptions,
  ) {
    this.options = {
      clientName: options.clientName ?? 'waymark-sdk',
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      reconnect: options.reconnect ?? true,
      reconnectDelayMs: options.reconnectDelayMs ?? 100,
      reconnectDelayMsMax: options.reconnectDelayMsMax ?? 5_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      heartbeatMs: options.heartbeatMs ?? 10_000,
    };
    // A timeout of 0 would fail every request.
    for (const name of ['requestTimeoutMs', 'connectTimeoutMs'] as const) checkMs(name, this.options[name], 1);
    for (const name of ['reconnectDelayMs', 'reconnectDelayMsMax', 'heartbeatMs'] as const) checkMs(name, this.options[name]);
    this.ready = new Promise((resolve) => (this.markReady = resolve));
  }

  static async open(url: string, options: ConnectOptions = {}): Promise<Connection> {
    await loadChecksum();
    const connection = new Connection(url, options);
    await connection.dial(connection.options.connectTimeoutMs);
    return connection;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Set once the socket was lost with reconnect off: the error every later call fails with. */
  get lostForGood(): WaymarkError | null {
    return this.gone;
  }

  /** Whether a socket is open and said hello (requests go out now instead of waiting). */
  get isConnected(): boolean {
    return this.socket !== null && this.greeted && !this.closed;
  }

  /** Whether a lost connection comes back by itself (not closed, reconnect on, not given up). */
  get willReconnect(): boolean {
    return !this.closed && this.gone === null && this.options.reconnect;
  }

  on(event: ClientEvent, listener: () => void): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  /**
   * Opens a socket and says hello; rejects if either fails. The connect timer is armed only
   * once the socket exists: a socket constructor throws at once on a URL it cannot use, and a
   * timer armed before it was left running and, firing on a socket never made, crashed the
   * process long after the caller had caught the rejection.
   */
  private dial(timeoutMs: number, reconnecting = false): Promise<void> {
    return new Promise((resolve, reject) => {
      let settled = false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const fail = (err: WaymarkError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      };
      let socket: Socket;
      try {
        socket = openSocket(this.url, {
          open: () => {
            this.socket = socket;
            this.sendRaw({ id: this.takeId(), hello: { client: this.options.clientName, protocolVersion } }, (frame) => {
              if (frame.error) {
                fail(errorFromFrame(frame.error));
                socket.close();
                return;
              }
              settled = true;
              clearTimeout(timer);
              this.attempt = 0;
              // Requests go out only from here on, and after a reconnect its listeners go
              // first: a producer resends its held batches before any request that waited
              // (or is made now) — a newer batch ahead of an older one's resend got the older
              // one refused (DUPLICATE_SEQUENCE) though the broker never had it.
              this.greeted = true;
              this.startHeartbeat(socket);
              if (reconnecting) for (const listener of this.listeners.reconnect) listener();
              this.markReady();
              resolve();
            });
          },
          message: (bytes) => {
            this.heard = true;
            this.onMessage(bytes);
          },
          alive: () => (this.heard = true),
          close: (code, closeReason) => {
            const current = this.socket === socket;
            const wasGreeted = current && this.greeted;
            let reason = closeReason;
            if (current) {
              this.socket = null;
              this.greeted = false;
              this.stopHeartbeat();
              if (this.dropReason) reason = this.dropReason;
              this.dropReason = null;
            }
            const lost = new WaymarkError('CONNECTION_LOST', `connection to ${this.url} closed (${code}${reason ? ` ${reason}` : ''})`);
            if (current && !wasGreeted) {
              // Lost before the hello's answer: only this dial failed (its caller, or the
              // reconnect loop, tries again). Nothing else went out on it; requests waiting for
              // a connection keep waiting on the same promise. (Treated as a lost connection,
              // it replaced that promise, stranding them, and scheduled a second reconnect.)
              this.stopTimeouts();
              for (const p of this.pending.takeAll()) p.reject(lost);
            }
            fail(lost);
            if (wasGreeted) this.onSocketLost(code, reason);
          },
          error: (message) => fail(new WaymarkError('CONNECTION_LOST', `cannot connect to ${this.url}: ${message}`)),
        });
      } catch (err) {
        // ws and a browser's WebSocket throw (a SyntaxError) at construction only for the URL:
        // the caller's argument, so a typed INVALID_ARGUMENT, not a raw SyntaxError without a code.
        fail(err instanceof WaymarkError ? err : new WaymarkError('INVALID_ARGUMENT', `not a usable broker URL ${JSON.stringify(this.url)}: ${(err as Error).message}`));
        return;
      }
      timer = setTimeout(() => {
        fail(new WaymarkError('TIMEOUT', `no connection to ${this.url} within ${timeoutMs} ms`));
        socket.close();
      }, timeoutMs);
    });
  }

  /** Pings in Node while the socket is up (heartbeatMs; see the invariants above). */
  private startHeartbeat(socket: Socket): void {
    this.stopHeartbeat();
    if (!socket.ping || this.options.heartbeatMs === 0) return;
    this.heard = false;
    this.pingOut = false;
    this.heartbeatTimer = setInterval(() => {
      if (this.socket !== socket) return;
      if (this.heard) {
        this.heard = false;
        this.pingOut = false;
      } else if (this.pingOut) {
        this.dropSocket(`no frame and no pong from the broker for ${this.options.heartbeatMs} ms after a ping`);
      } else {
        this.pingOut = true;
        socket.ping!();
      }
    }, this.options.heartbeatMs);
    holdProcess(this.heartbeatTimer, false); // an idle client does not keep a process alive
  }

  private stopHeartbeat(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  /**
   * Drops a connection that stopped answering: at once, without a closing handshake it would
   * never answer. The socket's close then runs as for any lost connection (requests fail with
   * CONNECTION_LOST naming `reason`, producers keep their batches, consumers subscribe again).
   */
  private dropSocket(reason: string): void {
    const socket = this.socket;
    if (!socket || this.closed) return;
    this.dropReason = reason;
    socket.terminate();
  }

  private onSocketLost(code: number, reason: string): void {
    const lost = new WaymarkError('CONNECTION_LOST', `connection to ${this.url} lost (${code}${reason ? ` ${reason}` : ''})`);
    // Without reconnect the connection is over: every later request fails at once with this
    // (it used to wait for a reconnect that never came, and a producer's sends never settled).
    if (!this.options.reconnect) this.gone = lost;
    this.stopTimeouts();
    for (const p of this.pending.takeAll()) p.reject(lost);
    this.pushHandlers.clear(); // subscriptions die with the socket; consumers subscribe again
    this.ready = new Promise((resolve) => (this.markReady = resolve));
    for (const listener of this.listeners.disconnect) listener();
    if (!this.closed && this.options.reconnect) this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const delay = Math.min(this.options.reconnectDelayMsMax, this.options.reconnectDelayMs * 2 ** this.attempt);
    this.attempt++;
    setTimeout(() => {
      if (this.closed) return;
      this.dial(this.options.connectTimeoutMs, true).then(
        () => undefined,
        () => {
          // One reconnect per failed dial (a socket lost after its hello schedules its own in onSocketLost).
          if (!this.closed && !this.greeted) this.scheduleReconnect();
        },
      );
    }, delay);
  }

  private takeId(): number {
    const id = this.nextId;
    this.nextId = this.nextId >= 0xfffffff0 ? 1 : this.nextId + 1;
    return id;
  }

  private onMessage(bytes: Uint8Array): void {
    let frame: Frame;
    try {
      frame = decodeFrame(bytes);
    } catch {
      return; // a broker never sends garbage; nothing sensible to do with it
    }
    if (frame.id === 0) {
      const subscription = frame.push?.subscription ?? frame.pack?.subscription ?? frame.error?.subscription ?? 0;
      this.pushHandlers.get(subscription)?.(frame);
      return;
    }
    const pending = this.pending.take(frame.id);
    if (!pending) return;
    if (this.pending.size === 0) holdProcess(this.timeoutTimer, false);
    pending.resolve(frame);
  }

  private sendRaw(frame: FrameInit, onReply: (frame: Frame) => void, onError?: (err: WaymarkError) => void): void {
    this.sendEncoded(frame.id!, encodeFrame(frame), onReply, onError);
  }

  private sendEncoded(id: number, bytes: Uint8Array, onReply: (frame: Frame) => void, onError?: (err: WaymarkError) => void): void {
    const deadline = performance.now() + this.options.requestTimeoutMs;
    this.pending.add(id, { resolve: onReply, reject: onError ?? (() => undefined), deadline });
    if (!this.timeoutTimer) this.armTimeouts(deadline);
    else if (this.pending.size === 1) holdProcess(this.timeoutTimer, true);
    this.socket!.send(bytes);
  }

  private armTimeouts(deadline: number): void {
    this.timeoutTimer = setTimeout(() => this.expireRequests(), Math.max(0, deadline - performance.now()));
    holdProcess(this.timeoutTimer, this.pending.size > 0);
  }

  /**
   * Fails every request past its deadline (the oldest first) and re-arms for the earliest
   * deadline left. Runs about once per timeout period while requests wait, so going through
   * the whole table costs nothing that matters.
   */
  private expireRequests(): void {
    this.timeoutTimer = null;
    const now = performance.now();
    let next = Infinity;
    const expired: Array<[number, PendingRequest]> = [];
    for (const entry of this.pending.entries()) {
      if (entry[1].deadline <= now) expired.push(entry);
      else next = Math.min(next, entry[1].deadline);
    }
    expired.sort((a, b) => a[1].deadline - b[1].deadline);
    for (const [id, p] of expired) {
      this.pending.take(id);
      p.reject(new WaymarkError('TIMEOUT', `no reply to request ${id} within ${this.options.requestTimeoutMs} ms`));
    }
    // No reply for that long: the connection is taken for dead and made again, as Kafka's
    // client does (a socket silently gone kept every later request timing out until the OS
    // noticed). A broker only slow pays a reconnect; producers' resends are idempotent.
    // Without reconnect the connection is kept: dropping it would end the client.
    if (expired.length > 0 && this.greeted && this.options.reconnect) {
      this.dropSocket(`no reply to a request within ${this.options.requestTimeoutMs} ms`);
      return;
    }
    if (next !== Infinity && !this.timeoutTimer) this.armTimeouts(next);
  }

  private stopTimeouts(): void {
    if (this.timeoutTimer) clearTimeout(this.timeoutTimer);
    this.timeoutTimer = null;
  }

  /** Sends a request and resolves with the reply; an Error reply rejects with its typed error. */
  request(body: Omit<FrameInit, 'id'>): Promise<Frame> {
    return this.call((id) => encodeFrame({ ...body, id }));
  }

  /** request({ produce: { topic, channel, batch } }), the frame written around the batch (encodeProduceFrame). */
  produce(topic: string, channel: number, batch: Uint8Array, topicCreatedAt = 0): Promise<Frame> {
    return this.call((id) => encodeProduceFrame(id, topic, channel, batch, topicCreatedAt));
  }

  /** Not an async function: with the socket up (the common case) one promise per request, not three. */
  private call(encode: (id: number) => Uint8Array): Promise<Frame> {
    if (this.closed) return Promise.reject(new WaymarkError('CLIENT_CLOSED'));
    if (this.gone) return Promise.reject(this.gone);
    if (!this.greeted) return this.waitReady().then(() => this.call(encode));
    return new Promise((resolve, reject) => {
      const id = this.takeId();
      this.sendEncoded(id, encode(id), (frame) => (frame.error ? reject(errorFromFrame(frame.error)) : resolve(frame)), reject);
    });
  }

  /**
   * Resolves once a socket is up and greeted, after a reconnect's listeners ran (consumers
   * have subscribed again: a request that names a subscription is built after this).
   * Rejects with CONNECTION_LOST after requestTimeoutMs, CLIENT_CLOSED once closed.
   */
  async whenConnected(): Promise<void> {
    if (this.closed) throw new WaymarkError('CLIENT_CLOSED');
    if (this.gone) throw this.gone;
    if (!this.greeted) await this.waitReady();
    if (this.closed) throw new WaymarkError('CLIENT_CLOSED');
  }

  private waitReady(): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new WaymarkError('CONNECTION_LOST', `no connection to ${this.url} within ${this.options.requestTimeoutMs} ms`)), this.options.requestTimeoutMs);
      this.ready.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** A subscription id for a Subscribe request, unique on this connection. */
  takeSubscriptionId(): number {
    return this.nextSubscription++;
  }

  /** Routes pushes for a subscription id (until the socket closes or `off` is called). */
  onPush(subscription: number, handler: PushHandler): () => void {
    this.pushHandlers.set(subscription, handler);
    return () => this.pushHandlers.delete(subscription);
  }

  /** Unsent bytes in the socket (producers slow down past a bound). */
  get bufferedAmount(): number {
    return this.socket?.bufferedAmount ?? 0;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const closedError = new WaymarkError('CLIENT_CLOSED');
    this.stopTimeouts();
    this.stopHeartbeat();
    for (const p of this.pending.takeAll()) p.reject(closedError);
    this.socket?.close(1000, 'client closed');
    this.socket = null;
    this.greeted = false;
    this.markReady();
    for (const listener of this.listeners.close) listener();
  }
}

/**
 * Whether the timeout timer keeps a Node process alive: only while requests wait for replies,
 * as a timer per request did. Browsers' timers have no such notion.
 */
function holdProcess(timer: ReturnType<typeof setTimeout> | null, hold: boolean): void {
  const t = timer as { ref?: () => void; unref?: () => void } | null;
  if (hold) t?.ref?.();
  else t?.unref?.();
}
