/**
 * The `waymark` command: a thin dispatcher over library functions (tools/ parses flags and
 * formats; engine/inspect and the server do the work). Exit codes: 0 ok, 1 failure, 2 bad
 * arguments (one line on stderr: `waymark: <command>: <what>`).
 *
 * To add a command, write a Command (tools/command.ts) and put it in `commands`, replacing
 * its notYet entry.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WaymarkError } from '../engine/format/errors';
import { formatHelp, parseArgs, UsageError } from './args';
import { notYet, type Command } from './command';
import { dumpCommand } from './dump';
import { processIo, type Io } from './io';
import { repairCommand } from './repair';
import { verifyCommand } from './verify';
import { serveCommand } from './serve';
import { produceCommand } from './produce';
import { consumeCommand } from './consume';
import { topicsCommand } from './topics';
import { benchCommand } from './bench';

/** Every command, in the order `waymark --help` lists them. */
export const commands: readonly Command[] = [
  serveCommand,
  produceCommand,
  consumeCommand,
  notYet('trace', 'Follow a message by msgId, key or traceId.', 'the message track trace'),
  topicsCommand,
  dumpCommand,
  verifyCommand,
  repairCommand,
  benchCommand,
];

/** The package's version, and the commit it was built from when the build knows it (dist/build-info.json). */
function version(): string {
  const root = path.join(__dirname, '..', '..');
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
  try {
    const info = JSON.parse(fs.readFileSync(path.join(root, 'dist', 'build-info.json'), 'utf8')) as { commit?: string };
    if (typeof info.commit === 'string' && info.commit) return `${pkg.version} (${info.commit})`;
  } catch {
    // no build stamp: the version alone
  }
  return pkg.version;
}

function mainHelp(): string {
  const width = Math.max(...commands.map((c) => c.spec.name.length));
  const lines = ['usage: waymark <command> [options]', '', 'commands:'];
  for (const c of commands) lines.push(`  ${c.spec.name.padEnd(width)}  ${c.spec.summary}`);
  lines.push('', 'Run `waymark <command> --help` for its options; `waymark --version` for the version.');
  return `${lines.join('\n')}\n`;
}

/** Error codes that mean "the arguments point at something unusable" (exit 2) rather than a failure (exit 1). */
const argumentCodes = new Set(['INVALID_ARGUMENT', 'INVALID_NAME', 'TOO_MANY_CHANNELS', 'MESSAGE_TOO_LARGE', 'KEY_TOO_LARGE', 'HEADERS_TOO_LARGE', 'BATCH_TOO_LARGE']);

export async function main(argv: string[], io: Io = processIo()): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    io.err('waymark: missing command; see waymark --help\n');
    return 2;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    io.out(mainHelp());
    return 0;
  }
  if (name === '--version' || name === '-V' || name === 'version') {
    io.out(`waymark ${version()}\n`);
    return 0;
  }
  const command = commands.find((c) => c.spec.name === name);
  if (!command) {
    io.err(`waymark: unknown command ${JSON.stringify(name)}; see waymark --help\n`);
    return 2;
  }
  try {
    if (command.raw) {
      // A raw command gets its own help only when asked first: `bench engine --help` is the suite's.
      if (rest[0] === '--help' || rest[0] === '-h') {
        io.out(formatHelp(command.spec));
        return 0;
      }
      return await command.run({ flags: {}, positionals: rest }, io);
    }
    const parsed = parseArgs(command.spec, rest);
    if (parsed.help) {
      io.out(formatHelp(command.spec));
      return 0;
    }
    return await command.run(parsed, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`waymark: ${name}: ${err.message}\n`);
      return 2;
    }
    if (err instanceof WaymarkError) {
      io.err(`waymark: ${name}: ${err.message}\n`);
      return argumentCodes.has(err.code) ? 2 : 1;
    }
    if (isSystemError(err)) {
      // A failed system call (EACCES on the data folder, ENOSPC, …): its message names the
      // call and the path, which is the one line the user needs; the stack is ours, not theirs.
      io.err(`waymark: ${name}: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}

/** An error from a Node system call (it carries an errno code such as EACCES and the call's name). */
function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && typeof (err as NodeJS.ErrnoException).syscall === 'string';
}
