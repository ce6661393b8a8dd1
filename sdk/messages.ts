/**
 * Messages as users see them, decoded from the record batches a broker pushes. Every batch's
 * checksum is verified here: the same xxh64 the producer computed, end to end.
 */
import { WaymarkError } from '../engine/format/errors';
import { msgIdToHex } from '../engine/format/msg-id';
import { checksumHolds, decodeRecords, probeHeader, type BatchHeader } from '../engine/format/record-batch';
import { nodeCodec } from './codec';

export interface Message {
  topic: string;
  channel: number;
  offset: number;
  /** 32 hex digits. */
  msgId: string;
  key: string | null;
  headers: Record<string, string>;
  body: Uint8Array;
  /** Producer time, ms. */
  timestamp: number;
  /** Broker append time, ms. */
  brokerTimestamp: number;
  deliverAt: number | null;
}

const decoder = new TextDecoder();

export interface DecodedBatch {
  header: BatchHeader;
  bytes: number;
  messages: Message[];
}

/** Decodes whole batches back to back, dropping records before `fromOffset`. */
export function decodeBatches(topic: string, channel: number, bytes: Uint8Array, fromOffset: number): DecodedBatch[] {
  const out: DecodedBatch[] = [];
  for (let pos = 0; pos < bytes.length; ) {
    const probe = probeHeader(bytes, pos);
    if (probe.kind !== 'ok') throw new WaymarkError('CORRUPT_BATCH', `batch at byte ${pos} of a push is ${probe.kind === 'short' ? 'cut short' : probe.reason}`);
    const header = probe.header;
    if (!checksumHolds(bytes, pos, header)) throw new WaymarkError('CORRUPT_BATCH', `batch at offset ${header.baseOffset} fails its checksum`);
    const messages: Message[] = [];
    for (const r of decodeRecords(bytes, pos, header, nodeCodec())) {
      if (r.offset < fromOffset) continue;
      const headers: Record<string, string> = {};
      for (const h of r.headers) headers[h.name] = decoder.decode(h.value);
      messages.push({
        topic,
        channel,
        offset: r.offset,
        msgId: msgIdToHex(r.msgId),
        key: r.key ? decoder.decode(r.key) : null,
        headers,
        body: r.body,
        timestamp: r.timestamp,
        brokerTimestamp: header.brokerTimestamp,
        deliverAt: r.deliverAt,
      });
    }
    out.push({ header, bytes: header.batchLength, messages });
    pos += header.batchLength;
  }
  return out;
}
