/**
 * What a path given to a tool is: a store folder, a topic folder, a channel folder, one
 * segment (.log) or one index file (.oix/.tix/.kix). The store layout is in engine/store.ts:
 *
 *   <store>/topics/<topic>/topic.json
 *   <store>/topics/<topic>/<channel>/<20-digit base offset>.{log,oix,tix,kix}, checkpoint.json
 *
 * Only reads the folder listings and topic.json; never opens a segment.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WaymarkError } from '../format/errors';
import { indexNamePattern, segmentNamePattern } from '../log/segment';
import { readTopicFile } from '../log/topic-file';

/** Folder inside a channel where repair stages rewritten segments before renaming them in. */
export const stagingDirName = '.repair';

export { indexNamePattern, segmentNamePattern } from '../log/segment';
export const indexExtensions = ['oix', 'tix', 'kix'] as const;
export type IndexExtension = (typeof indexExtensions)[number];

export interface SegmentRef {
  /** Path of the .log file. */
  file: string;
  baseOffset: number;
  fileBytes: number;
}

export interface ChannelRef {
  dir: string;
  /** Topic and channel when the folder sits in a store or topic layout; null for a bare folder. */
  topic: string | null;
  channel: number | null;
  /** `topic/channel`, or the folder path for a bare channel folder. */
  label: string;
  /** Every segment of the folder, in offset order. */
  segments: SegmentRef[];
  /** When one segment file was asked for: the only one the tool looks at. */
  only: SegmentRef | null;
}

export interface TopicRef {
  name: string;
  dir: string;
  /** Parsed topic.json, or null with `problem` saying why. */
  channelCount: number | null;
  problem: string | null;
}

export type PathKind = 'store' | 'topic' | 'channel' | 'segment' | 'index';

export interface Layout {
  kind: PathKind;
  /** The store folder (holding LOCK) when there is one above or at the path. */
  storeDir: string | null;
  topics: TopicRef[];
  channels: ChannelRef[];
  /** Names under topics/ that the store sweeps at open (interrupted create or delete). */
  leftovers: string[];
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function exists(p: string): boolean {
  return fs.existsSync(p);
}

/** The segments of a channel folder, in offset order. */
export function listSegments(dir: string): SegmentRef[] {
  const out: SegmentRef[] = [];
  for (const name of fs.readdirSync(dir)) {
    const m = segmentNamePattern.exec(name);
    if (!m) continue;
    const file = path.join(dir, name);
    out.push({ file, baseOffset: Number(m[1]), fileBytes: fs.statSync(file).size });
  }
  return out.sort((a, b) => a.baseOffset - b.baseOffset);
}

function looksLikeChannel(dir: string): boolean {
  if (exists(path.join(dir, 'checkpoint.json'))) return true;
  return fs.readdirSync(dir).some((name) => segmentNamePattern.test(name) || indexNamePattern.test(name));
}

/** A topic folder, with what the store's own check (readTopicFile) says of its topic.json. */
function readTopic(dir: string): TopicRef {
  const name = path.basename(dir);
  try {
    return { name, dir, channelCount: readTopicFile(dir).channels, problem: null };
  } catch (err) {
    // Said by verify and repair with the file's path already: not twice.
    const message = (err as Error).message;
    const prefix = `${path.join(dir, 'topic.json')}: `;
    return { name, dir, channelCount: null, problem: message.startsWith(prefix) ? message.slice(prefix.length) : message };
  }
}

/** The channel folders of a topic: 0..N-1 from topic.json, plus any other numeric folder found. */
function topicChannels(topic: TopicRef): ChannelRef[] {
  const numbers = new Set<number>();
  for (const name of fs.readdirSync(topic.dir)) {
    if (/^\d+$/.test(name) && isDir(path.join(topic.dir, name))) numbers.add(Number(name));
  }
  return [...numbers].sort((a, b) => a - b).map((c) => channelRef(path.join(topic.dir, String(c)), topic.name, c));
}

function channelRef(dir: string, topic: string | null, channel: number | null): ChannelRef {
  return { dir, topic, channel, label: topic !== null ? `${topic}/${channel}` : dir, segments: listSegments(dir), only: null };
}

/** The store folder above a channel folder (<store>/topics/<topic>/<channel>), if the shape fits. */
function storeAbove(channelDir: string): string | null {
  const topicDir = path.dirname(channelDir);
  const topicsDir = path.dirname(topicDir);
  if (path.basename(topicsDir) !== 'topics' || !exists(path.join(topicDir, 'topic.json'))) return null;
  return path.dirname(topicsDir);
}

/** Names a channel folder inside a store layout as topic/channel; a bare folder keeps its path. */
function channelFromDir(dir: string): ChannelRef {
  const store = storeAbove(dir);
  const channelName = path.basename(dir);
  if (store !== null && /^\d+$/.test(channelName)) return channelRef(dir, path.basename(path.dirname(dir)), Number(channelName));
  return channelRef(dir, null, null);
}

/** Works out what `target` is. Throws INVALID_ARGUMENT naming the path when it is none of the known shapes. */
export function describePath(target: string): Layout {
  let p: string;
  let stat: fs.Stats;
  try {
    // The real path: a symlink to a topic or channel folder names it outside its store, and
    // repair then locked that folder instead of the store a running broker holds.
    p = fs.realpathSync(path.resolve(target));
    stat = fs.statSync(p);
  } catch {
    throw new WaymarkError('INVALID_ARGUMENT', `${target}: no such file or folder`);
  }
  if (stat.isFile()) {
    const name = path.basename(p);
    const channel = channelFromDir(path.dirname(p));
    const storeDir = storeAbove(path.dirname(p));
    const seg = segmentNamePattern.exec(name);
    if (seg) {
      channel.only = channel.segments.find((s) => s.file === p) ?? null;
      return { kind: 'segment', storeDir, topics: [], channels: [channel], leftovers: [] };
    }
    if (indexNamePattern.test(name)) return { kind: 'index', storeDir, topics: [], channels: [channel], leftovers: [] };
    throw new WaymarkError('INVALID_ARGUMENT', `${target}: not a segment (.log) or index file (.oix, .tix, .kix) named by a 20-digit base offset`);
  }
  // A device, a socket, a pipe (`/dev/null` was "ENOTDIR: not a directory, scandir" and exit 1).
  if (!stat.isDirectory()) throw new WaymarkError('INVALID_ARGUMENT', `${target}: not a store, topic or channel folder, nor a segment or index file`);
  if (isDir(path.join(p, 'topics'))) {
    const topicsDir = path.join(p, 'topics');
    const topics: TopicRef[] = [];
    const leftovers: string[] = [];
    for (const name of fs.readdirSync(topicsDir).sort()) {
      const dir = path.join(topicsDir, name);
      if (name.startsWith('.')) {
        leftovers.push(dir);
        continue;
      }
      if (isDir(dir)) topics.push(readTopic(dir));
    }
    return { kind: 'store', storeDir: p, topics, channels: topics.flatMap(topicChannels), leftovers };
  }
  if (exists(path.join(p, 'topic.json'))) {
    const topic = readTopic(p);
    const topicsDir = path.dirname(p);
    const storeDir = path.basename(topicsDir) === 'topics' ? path.dirname(topicsDir) : null;
    return { kind: 'topic', storeDir, topics: [topic], channels: topicChannels(topic), leftovers: [] };
  }
  if (looksLikeChannel(p)) return { kind: 'channel', storeDir: storeAbove(p), topics: [], channels: [channelFromDir(p)], leftovers: [] };
  throw new WaymarkError('INVALID_ARGUMENT', `${target}: not a waymark store, topic or channel folder (no topics/, topic.json, checkpoint.json or segment files)`);
}
