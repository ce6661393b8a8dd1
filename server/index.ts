/**
 * The broker node: one store, served by uWebSockets.js — the binary protocol at /v1/ws and
 * the HTTP API on the same port (package export "waymark/server").
 *
 * Shutdown (close()): stop accepting, close every socket with 1001 "going away", let
 * queued group commits finish, close the store (clean checkpoints), release the lock.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import uWS from 'uWebSockets.js';
import { openStore, WaymarkError, type Store, type StoreFault, type StoreProgress, type SyncMode, type RecoveryFinding } from '../engine/index';
import { protocolLimits } from '../protocol/limits';
import { Broker } from './broker';
import { groupsTopic } from './groups';
import { gauge } from './metrics';
import { installHttpApi } from './http-api';
import { Session, type SessionData } from './session';

export interface ServerOptions {
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  data?: string;
  sync?: SyncMode;
  /** Called for each torn tail or corruption found while opening the store. */
  onRecovery?: (finding: RecoveryFinding) => void;
  /** Called for each failure of the store's own work (a retention pass…), once per cause; default: one line on stderr. */
  onFault?: (fault: StoreFault) => void;
  /** How far opening and closing the store are (StoreOptions.onProgress). */
  onProgress?: (progress: StoreProgress) => void;
}

export interface RunningServer {
  host: string;
  port: number;
  url: string;
  store: Store;
  close(): Promise<void>;
}

export const serverDefaults = { host: '127.0.0.1', port: 7070, data: './data', sync: 'batch' as SyncMode };

export async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  const host = options.host ?? serverDefaults.host;
  const data = options.data ?? serverDefaults.data;
  const dataExisted = fs.existsSync(data);
  const say = options.onFault ?? ((fault: StoreFault) => void process.stderr.write(`waymark: ${fault.message}\n`));
  // __groups is one channel for every group of every topic: when it fails, so does every commit.
  const onFault = (fault: StoreFault): void =>
    say(fault.kind === 'failed' && fault.topic === groupsTopic ? { ...fault, message: `${fault.message}; until then no consumer group of any topic can commit its positions` } : fault);
  const store = await openStore(data, { sync: options.sync ?? serverDefaults.sync, onRecovery: options.onRecovery, onFault, onProgress: options.onProgress });
  try {
    const broker = await Broker.open(store);
    const sessions = new Set<Session>();
    const sockets = new Set<uWS.WebSocket<SessionData>>();
    let closing: Promise<void> | null = null;
    const app = uWS.App();
    app.ws<SessionData>('/v1/ws', {
      // Frames up to twice the limit reach the handler, which closes with 1009 and a reason;
      // past that µWS drops the connection itself (1006).
      maxPayloadLength: protocolLimits.frameBytesMax * 2,
      // Above the session's own limit (Session.write), so that its close frame is never dropped.
      maxBackpressure: protocolLimits.socketBackpressureBytesMax + 1024 * 1024,
      idleTimeout: 120,
      sendPingsAutomatically: true,
      compression: uWS.DISABLED,
      open: (ws) => {
        const session = new Session(ws, broker);
        ws.getUserData().session = session;
        sessions.add(session);
        sockets.add(ws);
        broker.metrics.connections++;
      },
      message: (ws, message, isBinary) => ws.getUserData().session!.onMessage(message, isBinary),
      drain: (ws) => ws.getUserData().session!.drained(),
      close: (ws) => {
        const session = ws.getUserData().session!;
        session.closedBySocket();
        sessions.delete(session);
        sockets.delete(ws);
        broker.metrics.connections--;
      },
    });
    installHttpApi(app, {
      broker,
      isClosing: () => closing !== null,
      metricsExtra: (out) => {
        const rows: Array<[Record<string, string | number>, number]> = [];
        for (const { topic, group, channel, messages } of broker.groups.lags()) rows.push([{ topic, group, channel }, messages]);
        gauge(out, 'waymark_consumer_lag_messages', 'Messages between a group committed position (or the log start, when retention deleted past it) and the high watermark.', rows);
        gauge(out, 'waymark_group_positions_loaded', '1 once every group position has been read at start (until then lag rows cover the groups used since).', [[{}, broker.groups.isLoaded ? 1 : 0]]);
        gauge(out, 'waymark_group_compactions_total', 'Compactions of __groups since start (each rewrites the live positions and deletes the segments below them).', [[{}, broker.groups.compactions]], 'counter');
        const hw: Array<[Record<string, string | number>, number]> = [];
        for (const t of store.listTopics()) for (const c of store.describeTopic(t.name).channelInfo) hw.push([{ topic: t.name, channel: c.channel }, c.highWatermark]);
        gauge(out, 'waymark_high_watermark', 'Next offset to be written, by topic and channel.', hw);
        const health = store.channelHealth();
        gauge(out, 'waymark_retention_failures_total', 'Retention passes that failed (each is retried at the next), by topic and channel.', health.filter((h) => h.retentionFailures > 0).map((h) => [{ topic: h.topic, channel: h.channel }, h.retentionFailures]), 'counter');
        const failed = health.filter((h) => h.failed !== null);
        gauge(out, 'waymark_failed_channels', 'Channels that refuse appends until the broker restarts (a write, sync or roll failed), __groups included.', [[{}, failed.length]]);
        gauge(out, 'waymark_channel_failed', '1 for each channel that refuses appends until the broker restarts, by topic and channel.', failed.map((h) => [{ topic: h.topic, channel: h.channel }, 1]));
      },
    });
    // µSockets sets SO_REUSEADDR only for a non-zero port, and without it a restarted broker
    // cannot rebind while its old connections linger in TIME_WAIT: so port 0 becomes a free
    // concrete port first. EXCLUSIVE_PORT leaves SO_REUSEPORT off, so a second broker on the
    // same port is refused instead of silently sharing it.
    const requested = options.port ?? serverDefaults.port;
    const port = requested === 0 ? await freePort(host) : requested;
    const listenSocket = await new Promise<uWS.us_listen_socket>((resolve, reject) => {
      const listen = app.listen as unknown as (host: string, port: number, options: number, cb: (socket: uWS.us_listen_socket | false) => void) => void;
      listen.call(app, host, port, (uWS as unknown as { LIBUS_LISTEN_EXCLUSIVE_PORT: number }).LIBUS_LISTEN_EXCLUSIVE_PORT, (socket) =>
        socket ? resolve(socket) : void listenFailure(host, port).then(reject),
      );
    });
    return {
      host,
      port,
      url: `ws://${host}:${port}/v1/ws`,
      store,
      close(): Promise<void> {
        closing ??= (async () => {
          uWS.us_listen_socket_close(listenSocket);
          for (const ws of [...sockets]) ws.end(1001, 'broker shutting down');
          await store.close();
        })();
        return closing;
      },
    };
  } catch (err) {
    await store.close();
    // A broker that could not start (the port is taken, say) leaves no data folder behind that it made.
    if (!dataExisted) fs.rmSync(data, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Why µWS could not listen (it says only that it could not): the same bind tried with `net`.
 * A port in use is a failure of the moment (exit 1, a system error naming the call); an
 * address that is not local, or anything else, is an argument to change (INVALID_ARGUMENT, exit 2).
 */
function listenFailure(host: string, port: number): Promise<Error> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    const said = (code: string | undefined): void => {
      if (code === 'EADDRINUSE') resolve(Object.assign(new Error(`cannot listen on ${host}:${port}: the port is in use (another broker or program holds it)`), { code, syscall: 'listen' }));
      else resolve(new WaymarkError('INVALID_ARGUMENT', `cannot listen on ${host}:${port}: ${code === 'EADDRNOTAVAIL' ? 'the address is not one of this machine\'s' : `the port is in use or the address is not local${code ? ` (${code})` : ''}`}`));
    };
    probe.once('error', (err: NodeJS.ErrnoException) => said(err.code));
    probe.listen(port, host, () => probe.close(() => said(undefined)));
  });
}

/** A port that is free right now on `host` (the kernel picks it). */
function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, host, () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}
