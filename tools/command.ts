/**
 * The shape of one `waymark` command: its flags (for parsing and help) and what it runs.
 * cli.ts keeps them in one table; a command that is not built yet is a `notYet` entry.
 */
import type { CommandSpec, ParsedArgs } from './args';
import type { Io } from './io';

export interface Command {
  spec: CommandSpec;
  /** Runs with parsed arguments; resolves to the exit code (0 ok, 1 failure, 2 bad arguments). */
  run(args: ParsedArgs, io: Io): Promise<number>;
  /** Skip flag parsing (only --help is handled): the arguments arrive as positionals. */
  raw?: boolean;
}

/** A command whose implementation comes later: help works, running says so and exits 2. */
export function notYet(name: string, summary: string, comesWith: string): Command {
  return {
    spec: { name, summary: `${summary} (not available yet)`, positionals: [], options: {}, details: `not available yet (coming with ${comesWith})` },
    raw: true,
    async run(_args, io) {
      io.err(`waymark ${name}: not available yet (coming with ${comesWith})\n`);
      return 2;
    },
  };
}
