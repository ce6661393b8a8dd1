/**
 * topic.json, read and checked in one place: by the store at open (an unreadable one leaves
 * its topic closed) and by verify and repair (which report and rebuild it).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WaymarkError } from '../format/errors';
import { limits } from '../limits';
import type { TopicInfo } from '../store';

/**
 * A topic folder's topic.json, checked: a channel count in range, and every number a
 * non-negative integer (absent ones take the store's defaults). Throws CORRUPT_FILE saying what is wrong.
 */
export function readTopicFile(dir: string, defaults: { segmentBytes: number; segmentMs: number } = { segmentBytes: limits.segmentBytesDefault, segmentMs: limits.segmentMsDefault }): TopicInfo {
  const file = path.join(dir, 'topic.json');
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('not a JSON object');
  } catch (err) {
    throw new WaymarkError('CORRUPT_FILE', `${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : (err as Error).message}`, { file });
  }
  const number = (field: string, fallback: number): number => {
    const value = raw[field] ?? fallback;
    if (!Number.isSafeInteger(value) || (value as number) < 0) throw new WaymarkError('CORRUPT_FILE', `${file}: ${field} ${JSON.stringify(raw[field])} is not a non-negative integer`, { file });
    return value as number;
  };
  const channels = number('channels', 0);
  if (channels < 1 || channels > limits.channelCountMax) throw new WaymarkError('CORRUPT_FILE', `${file}: channels ${channels} is not 1..${limits.channelCountMax}`, { file });
  const segmentBytes = number('segmentBytes', defaults.segmentBytes) || defaults.segmentBytes;
  if (segmentBytes < limits.segmentBytesMin || segmentBytes > limits.segmentBytesMax) {
    throw new WaymarkError('CORRUPT_FILE', `${file}: segmentBytes ${segmentBytes} is not ${limits.segmentBytesMin}..${limits.segmentBytesMax}`, { file });
  }
  return {
    name: path.basename(dir),
    channels,
    retentionMs: number('retentionMs', 0),
    retentionBytes: number('retentionBytes', 0),
    segmentBytes,
    segmentMs: number('segmentMs', defaults.segmentMs) || defaults.segmentMs,
    owner: typeof raw.owner === 'string' ? raw.owner : '',
    createdAt: number('createdAt', 0),
  };
}
