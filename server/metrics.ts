/**
 * Prometheus text exposition (format 0.0.4), hand-written: a handful of counters, gauges
 * and one histogram do not need a client library. Hot paths only bump numbers in maps;
 * the text is built when /metrics is scraped.
 */
/** One label combination's value; hot paths keep it and add to `value` (no key string per increment). */
export interface CounterCell {
  value: number;
}

export class Counter {
  private readonly cells = new Map<string, CounterCell & { labels: readonly string[] }>();
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly labelNames: readonly string[],
  ) {}

  inc(labels: readonly (string | number)[], by = 1): void {
    this.cell(labels).value += by;
  }

  /** The cell of these label values, made on first use. */
  cell(labels: readonly (string | number)[]): CounterCell {
    const key = labels.length === 1 ? String(labels[0]) : labels.join('\u0000');
    let cell = this.cells.get(key);
    if (!cell) {
      cell = { value: 0, labels: labels.map(String) };
      this.cells.set(key, cell);
    }
    return cell;
  }

  /** Drops the cells whose first label is `value` (a deleted topic's: its series went on for good). */
  forget(value: string): void {
    for (const [key, cell] of this.cells) if (cell.labels[0] === value) this.cells.delete(key);
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`);
    for (const cell of this.cells.values()) out.push(`${this.name}${labelText(this.labelNames, cell.labels)} ${cell.value}`);
  }
}

export class Histogram {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Array(bounds.length).fill(0);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (value <= this.bounds[i]!) this.counts[i]!++;
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`);
    this.bounds.forEach((bound, i) => out.push(`${this.name}_bucket{le="${bound}"} ${this.counts[i]}`));
    out.push(`${this.name}_bucket{le="+Inf"} ${this.count}`, `${this.name}_sum ${this.sum}`, `${this.name}_count ${this.count}`);
  }
}

/** One metric family from rows of [labels, value]: a gauge, or a counter kept elsewhere. */
export function gauge(out: string[], name: string, help: string, rows: Array<[Record<string, string | number>, number]>, type: 'gauge' | 'counter' = 'gauge'): void {
  out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  for (const [labels, value] of rows) out.push(`${name}${labelText(Object.keys(labels), Object.values(labels).map(String))} ${value}`);
}

function labelText(names: readonly string[], values: readonly string[]): string {
  if (names.length === 0) return '';
  return `{${names.map((n, i) => `${n}="${escapeLabel(values[i] ?? '')}"`).join(',')}}`;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

/** The broker's metrics. */
export class BrokerMetrics {
  readonly appendedMessages = new Counter('waymark_appended_messages_total', 'Messages appended, by topic and channel.', ['topic', 'channel']);
  readonly appendedBytes = new Counter('waymark_appended_bytes_total', 'Batch bytes appended, by topic and channel.', ['topic', 'channel']);
  readonly frames = new Counter('waymark_frames_total', 'WebSocket frames received, by type.', ['type']);
  readonly errors = new Counter('waymark_errors_total', 'Errors answered, by code.', ['code']);
  /** route is the matched pattern, or "other" for a request no route serves (never the raw path: the series stay bounded). */
  readonly httpRequests = new Counter('waymark_http_requests_total', 'HTTP requests, by method, route and status.', ['method', 'route', 'status']);
  readonly commitLatency = new Histogram('waymark_group_commit_seconds', 'Time from append to durable acknowledgement.', [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]);
  connections = 0;
  /** Subscriptions started and not yet closed (each watches its channels and is pumped on every append). */
  subscriptions = 0;

  render(extra: (out: string[]) => void): string {
    const out: string[] = [];
    this.appendedMessages.render(out);
    this.appendedBytes.render(out);
    this.frames.render(out);
    this.errors.render(out);
    this.httpRequests.render(out);
    this.commitLatency.render(out);
    gauge(out, 'waymark_connections', 'Open WebSocket connections.', [[{}, this.connections]]);
    gauge(out, 'waymark_subscriptions', 'Subscriptions pushing to open connections.', [[{}, this.subscriptions]]);
    extra(out);
    return out.join('\n') + '\n';
  }
}
