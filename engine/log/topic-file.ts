/**
 * topic.json, written and read in one place: by the store (create; at open an unreadable one
 * leaves its topic closed) and by verify and repair (which report and rebuild it).
 *
 *   { "version": 2, "name", "channels", "retentionMs", "retentionBytes", "segmentBytes", "segmentMs", "owner", "createdAt", "checksum" }
 *
 * The checksum (checked-json.ts) catches what the range checks cannot: a flipped bit in
 * `channels` (3 → 1 hides two channels) or `createdAt` (hides every group's committed
 * position) still reads as a good number. A file without `version` is format 1, read
 * without a checksum.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WaymarkError } from '../format/errors';
import { limits } from '../limits';
import type { TopicInfo } from '../store';
import { writeFileAtomic } from './checkpoint';
import { checkedJsonText, parseCheckedJson } from './checked-json';

export const topicFile = 'topic.json';
const topicFileVersion = 2;

/** Writes `<dir>/topic.json` atomically (temp, fdatasync, rename, fsync of the folder). */
export function writeTopicFile(dir: string, info: TopicInfo): void {
  const { name, channels, retentionMs, retentionBytes, segmentBytes, segmentMs, owner, createdAt } = info;
  writeFileAtomic(path.join(dir, topicFile), checkedJsonText({ version: topicFileVersion, name, channels, retentionMs, retentionBytes, segmentBytes, segmentMs, owner, createdAt }, 2));
}

/**
 * A topic folder's topic.json, checked: a channel count in range, and every number a
 * non-negative integer (absent ones take the store's defaults). Throws CORRUPT_FILE saying what is wrong.
 */
export function readTopicFile(dir: string, defaults: { segmentBytes: number; segmentMs: number } = { segmentBytes: limits.segmentBytesDefault, segmentMs: limits.segmentMsDefault }): TopicInfo {
  const file = path.join(dir, topicFile);
  let raw: Record<string, unknown>;
  let checked: boolean;
  try {
    ({ fields: raw, checked } = parseCheckedJson(fs.readFileSync(file, 'utf8')));
  } catch (err) {
    throw new WaymarkError('CORRUPT_FILE', `${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : (err as Error).message}`, { file });
  }
  if (raw.version !== undefined && raw.version !== topicFileVersion) throw new WaymarkError('CORRUPT_FILE', `${file}: version ${JSON.stringify(raw.version)} is not one this build reads (${topicFileVersion}, or none for 1)`, { file });
  if (raw.version === topicFileVersion && !checked) throw new WaymarkError('CORRUPT_FILE', `${file}: no checksum`, { file });
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
