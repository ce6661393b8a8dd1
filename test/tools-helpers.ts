/** Helpers of the tools tests: stores with known contents, the batches of a segment, a captured Io. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openStore, type StoredMessage } from '../engine/index';
import { walkSegment } from '../engine/inspect/index';
import type { Io } from '../tools/io';
import { bodyFor, segmentFiles, tempDir } from './helpers';

export const recordsPerBatch = 10;
/** Batches makeStore writes by default, round-robin over two channels. */
export const batchCount = 160;
/** Small segments so a channel has several (sealed ones and an active one). */
export const segmentBytes = 64 * 1024;

export interface BatchAt {
  position: number;
  length: number;
  baseOffset: number;
  recordCount: number;
}

/**
 * A closed store with topic `orders` (`channels` channels) and `batches` batches of
 * recordsPerBatch incompressible records spread round-robin. Compression is off so the last
 * bytes of a batch are the body of its last record.
 */
export async function makeStore(batches = batchCount, channels = 2): Promise<string> {
  const dir = tempDir('waymark-tools-');
  const store = await openStore(dir, { segmentBytes, compression: false });
  await store.createTopic('orders', { channels });
  for (let b = 0; b < batches; b++) {
    const messages = Array.from({ length: recordsPerBatch }, (_, i) => ({ key: `user-${b}-${i}`, body: bodyFor('tools', b * recordsPerBatch + i, 400), headers: { traceid: `trace-${b}` } }));
    await store.append('orders', b % channels, messages);
  }
  await store.close();
  return dir;
}

export function channelDir(dir: string, channel = 0): string {
  return path.join(dir, 'topics', 'orders', String(channel));
}

export function logsOf(dir: string, channel = 0): string[] {
  return segmentFiles(channelDir(dir, channel));
}

/** Every batch of a segment file, with where it starts. */
export function batchesOf(file: string): BatchAt[] {
  const fd = fs.openSync(file, 'r');
  try {
    const out: BatchAt[] = [];
    for (const event of walkSegment(fd)) {
      if (event.kind !== 'batch') throw new Error(`batchesOf: ${file} is damaged at ${event.position}`);
      out.push({ position: event.position, length: event.header.batchLength, baseOffset: event.header.baseOffset, recordCount: event.header.recordCount });
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

/** Opens the store, reads every message of every channel, closes it. */
export async function readEverything(dir: string, channels = 2): Promise<{ messages: StoredMessage[]; findings: number }> {
  const store = await openStore(dir, { segmentBytes });
  try {
    const messages: StoredMessage[] = [];
    for (let c = 0; c < channels; c++) {
      const { logStartOffset, highWatermark } = store.channelState('orders', c);
      let offset = logStartOffset;
      while (offset < highWatermark) {
        const page = await store.read('orders', c, { offset, maxMessages: 10_000, maxBytes: 16 * 1024 * 1024 });
        if (page.length === 0) break;
        messages.push(...page);
        offset = page[page.length - 1]!.offset + 1;
      }
    }
    return { messages, findings: store.recoveryReport.length };
  } finally {
    await store.close();
  }
}

export interface CapturedIo extends Io {
  stdout: string;
  stderr: string;
}

export function captureIo(): CapturedIo {
  const io: CapturedIo = {
    stdout: '',
    stderr: '',
    errIsTTY: false,
    out(text: string): boolean {
      io.stdout += text;
      return true;
    },
    err(text: string): void {
      io.stderr += text;
    },
  };
  return io;
}
