/** The options every command that talks to a running broker shares. */
import type { OptionSpec } from './args';
import { connect, WaymarkError, type Client } from '../sdk/index';

export const urlOption: OptionSpec = { type: 'string', valueName: 'URL', help: 'broker WebSocket URL (env WAYMARK_URL; default ws://127.0.0.1:7070/v1/ws)' };

export function brokerUrl(flag: unknown): string {
  return (flag as string | undefined) ?? process.env.WAYMARK_URL ?? 'ws://127.0.0.1:7070/v1/ws';
}

/**
 * Connects without reconnecting: a command fails fast with a clear line when the broker is
 * down. A URL that answers HTTP instead of a WebSocket (the broker's HTTP root, say) said only
 * "Unexpected server response: 404"; the line now says what URL the broker takes.
 */
export async function connectForCommand(flag: unknown): Promise<Client> {
  const url = brokerUrl(flag);
  try {
    return await connect(url, { reconnect: false, connectTimeoutMs: 5000, clientName: 'waymark-cli' });
  } catch (err) {
    const status = /Unexpected server response: (\d+)/.exec((err as Error).message ?? '')?.[1];
    if (status === undefined || !(err instanceof WaymarkError)) throw err;
    throw new WaymarkError(err.code, `${url} answered HTTP ${status}, not a WebSocket: the broker's URL is ws://HOST:PORT/v1/ws (the default is ws://127.0.0.1:7070/v1/ws)`);
  }
}
