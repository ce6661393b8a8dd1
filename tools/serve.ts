/** `waymark serve`: runs the broker (npm start runs this with the defaults). */
import * as fs from 'node:fs';
import { startServer, serverDefaults } from '../server/index';
import type { RecoveryFinding, StoreProgress, SyncMode } from '../engine/index';
import { UsageError } from './args';
import type { Command } from './command';

export const serveCommand: Command = {
  spec: {
    name: 'serve',
    summary: 'Run the broker: WebSocket protocol at /v1/ws and the HTTP API on one port.',
    positionals: [],
    options: {
      port: { type: 'integer', valueName: 'PORT', help: `port to listen on (env WAYMARK_PORT; default ${serverDefaults.port})` },
      host: { type: 'string', valueName: 'HOST', help: `address to listen on (env WAYMARK_HOST; default ${serverDefaults.host})` },
      data: { type: 'string', valueName: 'DIR', help: `data folder (env WAYMARK_DATA; default ${serverDefaults.data})` },
      sync: { type: 'string', valueName: 'MODE', help: 'batch (ack after fdatasync, default), interval (fsync every 50 ms) or none' },
    },
    details: 'Stops gracefully on SIGINT/SIGTERM: stops accepting, finishes group commits, closes the store, and exits; meanwhile /healthz answers 503 and every HTTP reply closes its connection.',
  },
  async run(args, io) {
    const env = process.env;
    const port = (args.flags.port as number | undefined) ?? envInteger('WAYMARK_PORT', env.WAYMARK_PORT) ?? serverDefaults.port;
    if (port > 65535) throw new UsageError(`--port must be 0..65535, not ${port}`);
    const host = (args.flags.host as string | undefined) ?? env.WAYMARK_HOST ?? serverDefaults.host;
    const data = (args.flags.data as string | undefined) ?? env.WAYMARK_DATA ?? serverDefaults.data;
    const sync = ((args.flags.sync as string | undefined) ?? serverDefaults.sync) as SyncMode;
    if (!['batch', 'interval', 'none'].includes(sync)) throw new UsageError(`--sync must be batch, interval or none, not ${JSON.stringify(sync)}`);
    checkDataFolder(data);
    const server = await startServer({
      port,
      host,
      data,
      sync,
      onRecovery: (f) => io.err(`${recoveryLine(f)}\n`),
      onFault: (f) => io.err(`waymark: ${f.message}\n`),
      onProgress: progressLine((line) => io.err(`waymark: ${line}\n`)),
    });
    const stopped = new Promise<Error | null>((resolve) => {
      const stop = (signal: string): void => {
        io.err(`waymark: ${signal}: shutting down\n`);
        server.close().then(
          () => resolve(null),
          (err: Error) => resolve(err),
        );
      };
      process.once('SIGINT', () => stop('SIGINT'));
      process.once('SIGTERM', () => stop('SIGTERM'));
    });
    // Said only once the handlers are in place: a supervisor that signals as soon as it reads
    // this line gets a graceful stop (said before, a SIGTERM in between killed the process).
    io.err(`waymark: serving ${server.url} and http://${server.host}:${server.port} (data ${data}, sync ${sync})\n`);
    const failure = await stopped;
    // The store is closed: everything acknowledged is durable and the lock released. An HTTP
    // keep-alive connection a client holds open would keep the process up until its idle
    // timeout (each reply since the signal closed its connection; an idle one gets no reply):
    // the process ends once this command's exit code is set.
    setTimeout(() => process.exit(), 50).unref();
    if (failure) {
      // A checkpoint or index not written (a full disk): not a clean stop, and a supervisor should know.
      io.err(`waymark: serve: closing the store failed: ${failure.message}; the next start scans what it could not record\n`);
      return 1;
    }
    io.err(`waymark: stopped: the store in ${data} is closed cleanly\n`);
    return 0;
  },
};

/**
 * Start and stop of a store with thousands of channels take seconds: a line every
 * 2 s says how far they are, from 1 s in (a small store says nothing). Wall time is read in
 * the callback, which comes at every topic opened and channel closed: no timer is needed.
 */
function progressLine(say: (line: string) => void): (p: StoreProgress) => void {
  let phase: StoreProgress['phase'] | null = null;
  let started = 0;
  let said = 0;
  return (p) => {
    const now = Date.now();
    if (p.phase !== phase) {
      phase = p.phase;
      started = now;
      said = 0;
    }
    const finished = p.done === p.total;
    if (now - started < 1000 || (!finished && now - said < 2000)) return;
    said = now;
    const what = p.phase === 'open' ? `opening the store: ${p.done} of ${p.total} topics` : `closing the store: ${p.done} of ${p.total} channels`;
    say(finished ? `${what}, done in ${((now - started) / 1000).toFixed(1)} s` : what);
  };
}

/**
 * One start-up line per recovery finding. "recovered … 0 bytes dropped" was said of a topic
 * left closed and of a lost segment alike: the line now says what open found and, only when
 * bytes were dropped, how many and where.
 */
export function recoveryLine(f: RecoveryFinding): string {
  const what = f.kind === 'torn' ? 'a tail cut short (a crash)' : f.kind === 'patched' ? 'a header field outside the checksum rewritten' : 'damage';
  const dropped = f.bytesDropped > 0 ? `; ${f.bytesDropped} bytes dropped at byte ${f.position}${f.savedTo ? `, saved to ${f.savedTo}` : ''}` : '';
  return `waymark: open found ${what} in ${f.file}: ${f.reason}${dropped}`;
}

function envInteger(name: string, value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`${name} must be a whole number, not ${JSON.stringify(value)}`);
  return Number(value);
}

/**
 * The data folder must be a folder or not exist yet (the broker makes it). A file there, or
 * on the way to it, is a bad argument (exit 2, one line) — it used to surface as the store's
 * ENOTDIR stack trace. Other errors (no permission, say) are left to the store and printed
 * as one line by the dispatcher (exit 1).
 */
function checkDataFolder(data: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(data);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'ENOTDIR') throw new UsageError(`data folder ${data}: a part of the path is a file, not a folder`);
    throw err;
  }
  if (!stat.isDirectory()) throw new UsageError(`data folder ${data} is a file, not a folder`);
}
