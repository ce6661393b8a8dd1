/**
 * Progress of verify and repair on stderr: on a terminal, one line redrawn in place; to a pipe
 * or a file (a cron job's log, CI), a plain line every 10 s once the work has run 10 s, so a
 * long run says it is alive and how far it got while a short one writes nothing.
 */
import { inspectLimits } from './limits';

export interface ProgressState {
  /** What is being done: "verify", "repair: scan", "repair: rewrite". */
  phase: string;
  segmentsDone: number;
  segmentsTotal: number;
  bytesDone: number;
  bytesTotal: number;
}

export interface ProgressStream {
  isTTY?: boolean;
  write(text: string): unknown;
}

const redrawMsMin = inspectLimits.progressRedrawMsMin;
const plainLineMs = inspectLimits.progressPlainLineMs;

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  return `${(bytes / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

export class ProgressLine {
  private lastDrawMs = -Infinity;
  private drawn = false;
  private readonly terminal: boolean;
  private readonly startedMs: number;

  constructor(
    private readonly stream: ProgressStream,
    private readonly now: () => number = Date.now,
  ) {
    this.terminal = stream.isTTY === true;
    this.startedMs = now();
    if (!this.terminal) this.lastDrawMs = this.startedMs;
  }

  /** A callback for the library's `onProgress` option. */
  readonly update = (state: ProgressState): void => {
    const now = this.now();
    const line = (): string => `${state.phase}: ${state.segmentsDone}/${state.segmentsTotal} segments, ${formatBytes(state.bytesDone)} / ${formatBytes(state.bytesTotal)}`;
    if (!this.terminal) {
      if (now - this.lastDrawMs < plainLineMs) return;
      this.lastDrawMs = now;
      this.stream.write(`${line()} (${Math.round((now - this.startedMs) / 1000)} s)\n`);
      return;
    }
    const last = state.segmentsDone === state.segmentsTotal;
    if (!last && now - this.lastDrawMs < redrawMsMin) return;
    this.lastDrawMs = now;
    this.stream.write(`\r\x1b[2K${line()}`);
    this.drawn = true;
  };

  /** Clears the line so the report starts on a clean one. */
  finish(): void {
    if (this.drawn) this.stream.write('\r\x1b[2K');
    this.drawn = false;
  }
}
