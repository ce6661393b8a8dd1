/** The options every command that talks to a running broker shares. */
import type { OptionSpec } from './args';
import { connect, type Client } from '../sdk/index';

export const urlOption: OptionSpec = { type: 'string', valueName: 'URL', help: 'broker WebSocket URL (env WAYMARK_URL; default ws://127.0.0.1:7070/v1/ws)' };

export function brokerUrl(flag: unknown): string {
  return (flag as string | undefined) ?? process.env.WAYMARK_URL ?? 'ws://127.0.0.1:7070/v1/ws';
}

/** Connects without reconnecting: a command fails fast with a clear line when the broker is down. */
export function connectForCommand(flag: unknown): Promise<Client> {
  return connect(brokerUrl(flag), { reconnect: false, connectTimeoutMs: 5000, clientName: 'waymark-cli' });
}
