/**
 * Progress of verify and repair on stderr: one line redrawn in place, and only when the
 * stream is a terminal (a pipe or a file gets nothing, so logs stay clean).
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

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  return `${(bytes / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

export class ProgressLine {
  private lastDrawMs = 0;
  private drawn = false;
  private readonly enabled: boolean;

  constructor(private readonly stream: ProgressStream) {
    this.enabled = stream.isTTY === true;
  }

  /** A callback for the library's `onProgress` option. */
  readonly update = (state: ProgressState): void => {
    if (!this.enabled) return;
    const now = Date.now();
    const last = state.segmentsDone === state.segmentsTotal;
    if (!last && now - this.lastDrawMs < redrawMsMin) return;
    this.lastDrawMs = now;
    const line = `${state.phase}: ${state.segmentsDone}/${state.segmentsTotal} segments, ${formatBytes(state.bytesDone)} / ${formatBytes(state.bytesTotal)}`;
    this.stream.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  };

  /** Clears the line so the report starts on a clean one. */
  finish(): void {
    if (this.drawn) this.stream.write('\r\x1b[2K');
    this.drawn = false;
  }
}
