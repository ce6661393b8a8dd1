/**
 * The `waymark` command: a thin dispatcher over library functions (tools/ parses flags,
 * engine/inspect and the server do the work). Exit codes: 0 ok, 1 failure, 2 bad arguments.
 */
export async function main(argv: string[]): Promise<number> {
  const [command] = argv;
  if (!command || command === '--help' || command === '-h') {
    process.stdout.write('usage: waymark <serve|dump|verify|repair> [options]\n');
    return 0;
  }
  process.stderr.write(`waymark: unknown command ${JSON.stringify(command)}; see waymark --help\n`);
  return 2;
}
