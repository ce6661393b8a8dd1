/**
 * A small flag parser for the `waymark` commands: `--name value`, `--name=value`, boolean
 * `--name`, `-h`/`--help`, `--` to end options. Every mistake is a UsageError with one line
 * that the dispatcher prints as `waymark: <command>: <message>` (exit 2).
 */

export type OptionSpec =
  | { type: 'boolean'; help: string }
  | { type: 'integer'; help: string; valueName: string; min?: number }
  | { type: 'string'; help: string; valueName: string };

export interface CommandSpec {
  name: string;
  /** One line for `waymark --help`. */
  summary: string;
  /** Required positional arguments, in order, as shown in the usage line (PATH, DIR). */
  positionals: string[];
  /** Optional positional arguments after the required ones, shown as [NAME]. */
  optionalPositionals?: string[];
  options: Record<string, OptionSpec>;
  /** More help text, printed after the options. */
  details?: string;
}

export type FlagValue = boolean | number | string;

export interface ParsedArgs {
  flags: Record<string, FlagValue | undefined>;
  positionals: string[];
}

export type ParseResult = { help: true } | ({ help: false } & ParsedArgs);

export class UsageError extends Error {}

export function parseArgs(spec: CommandSpec, argv: readonly string[]): ParseResult {
  const flags: Record<string, FlagValue | undefined> = {};
  const positionals: string[] = [];
  let optionsEnded = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (optionsEnded || arg === '-' || !arg.startsWith('-')) {
      positionals.push(arg);
      continue;
    }
    if (arg === '--') {
      optionsEnded = true;
      continue;
    }
    if (arg === '-h' || arg === '--help') return { help: true };
    if (!arg.startsWith('--')) throw new UsageError(`unknown option ${arg}`);
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const option = Object.prototype.hasOwnProperty.call(spec.options, name) ? spec.options[name]! : undefined;
    if (!option) throw new UsageError(`unknown option --${name}`);
    if (flags[name] !== undefined) throw new UsageError(`--${name} given twice`);
    if (option.type === 'boolean') {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      flags[name] = true;
      continue;
    }
    let text: string;
    if (eq >= 0) text = arg.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) throw new UsageError(`--${name} needs a value (${option.valueName})`);
      text = argv[++i]!;
    }
    if (option.type === 'integer') {
      const min = option.min ?? 0;
      const value = /^\d+$/.test(text) ? Number(text) : NaN;
      if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`--${name} needs a whole number ≥ ${min}, not ${JSON.stringify(text)}`);
      flags[name] = value;
    } else {
      flags[name] = text;
    }
  }
  if (positionals.length < spec.positionals.length) throw new UsageError(`missing ${spec.positionals[positionals.length]}`);
  const most = spec.positionals.length + (spec.optionalPositionals?.length ?? 0);
  if (positionals.length > most) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[most])}`);
  return { help: false, flags, positionals };
}

/** One option as a usage line shows it: `[--json]`, `[--channels N]`. */
export function optionUsage(name: string, option: CommandSpec['options'][string]): string {
  return option.type === 'boolean' ? `[--${name}]` : `[--${name} ${option.valueName}]`;
}

export function usageLine(spec: CommandSpec): string {
  const options = Object.entries(spec.options).map(([name, o]) => optionUsage(name, o));
  const optional = (spec.optionalPositionals ?? []).map((name) => `[${name}]`);
  return ['usage: waymark', spec.name, ...spec.positionals, ...optional, ...options].join(' ');
}

export function formatHelp(spec: CommandSpec): string {
  const lines = [usageLine(spec), '', spec.summary];
  const entries = Object.entries(spec.options);
  if (entries.length > 0) {
    lines.push('', 'options:');
    const labels = entries.map(([name, o]) => (o.type === 'boolean' ? `--${name}` : `--${name} ${o.valueName}`));
    const width = Math.max(...labels.map((l) => l.length), '-h, --help'.length);
    entries.forEach(([, o], i) => lines.push(`  ${labels[i]!.padEnd(width)}  ${o.help}`));
    lines.push(`  ${'-h, --help'.padEnd(width)}  show this help`);
  }
  if (spec.details) lines.push('', spec.details);
  return `${lines.join('\n')}\n`;
}
