/** `waymark bench engine|ws|http|peers [options]`: runs a benchmark from bench/ (JSON lines on stdout). */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from './args';
import type { Command } from './command';

const suites = ['engine', 'ws', 'http', 'peers'] as const;

export const benchCommand: Command = {
  spec: {
    name: 'bench',
    summary: 'Run a benchmark: engine, ws, http or peers (JSON lines; see BENCHMARKS.md).',
    positionals: ['engine|ws|http|peers'],
    options: {},
    details: 'Everything after the suite name goes to it: `waymark bench engine --quick`, `waymark bench ws --help`.',
  },
  raw: true,
  async run(args, io) {
    const [suite, ...rest] = args.positionals;
    if (!suite || !(suites as readonly string[]).includes(suite)) throw new UsageError(`${suite ? `unknown suite ${JSON.stringify(suite)}` : 'missing suite'}: use ${suites.join(', ')}`);
    const script = path.join(__dirname, '..', 'bench', `${suite}.js`);
    if (!fs.existsSync(script)) {
      io.err(`waymark: bench: ${script} is missing; run npm run build\n`);
      return 1;
    }
    return new Promise<number>((resolve) => {
      const child = spawn(process.execPath, [script, ...rest], { stdio: 'inherit' });
      child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
    });
  },
};
