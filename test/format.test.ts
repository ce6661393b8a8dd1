import { strict as assert } from 'node:assert';
import {
  batchHeaderBytes,
  BatchOffset,
  decodeRecords,
  encodeBatch,
  formatLimits,
  loadChecksum,
  msgIdFromHex,
  msgIdTime,
  msgIdToHex,
  MsgIdGenerator,
  patchBatch,
  probeHeader,
  Reader,
  validateBatch,
  writeVarint,
  zigzag,
  unzigzag,
  varintSize,
  Compression,
  errorCodeFromWire,
  ErrorTable,
  checkMessage,
  type BatchHeader,
  type MessageInput,
} from '../engine/format/index';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { nativeXxh64MinBytes, xxh32, xxh32Range, xxh32Wasm, xxh64, xxh64Implementations, xxh64Stream } from '../engine/format/checksum';
import { forEachRecordKeys, IndexKind } from '../engine/format/index-keys';
import { recordsSection } from '../engine/format/record-batch';
import { lz4Codec } from '../engine/codec';
import { checkedJsonText, parseCheckedJson } from '../engine/log/checked-json';
import { thrown } from './helpers';

const codecs = [
  { name: 'lz4 off', codec: null },
  { name: 'lz4 on', codec: lz4Codec },
] as const;

describe('format: varints', () => {
  it('round-trips values across every length up to 2^53-1', () => {
    const values = [0, 1, 127, 128, 16383, 16384, 2 ** 21, 2 ** 28 - 1, 2 ** 28, 2 ** 35 + 7, 2 ** 49, Number.MAX_SAFE_INTEGER];
    for (const v of values) {
      const buf = new Uint8Array(10);
      const end = writeVarint(buf, 0, v);
      assert.equal(end, varintSize(v), `size of ${v}`);
      const r = new Reader(buf, 0, end);
      assert.equal(r.varint(), v);
      assert.equal(r.pos, end);
    }
  });

  it('zigzag maps signed values both ways', () => {
    for (const v of [0, -1, 1, -2, 2, -(2 ** 40), 2 ** 40]) assert.equal(unzigzag(zigzag(v)), v);
  });

  it('VarintPastEndIsCorrupt', () => {
    const err = thrown(() => new Reader(new Uint8Array([0x80, 0x80]), 0, 2).varint());
    assert.equal(err.code, 'CORRUPT_BATCH');
  });
});

describe('format: key hashes', () => {
  before(loadChecksum);

  it('xxh32 in JavaScript equals xxhash-wasm at every length 0..300, several seeds, any start', () => {
    const buf = randomBytes(400);
    let compared = 0;
    for (let length = 0; length <= 300; length++) {
      for (const seed of [0, 1, 2, 3, 0x7fffffff, 0xffffffff]) {
        const start = (length * 7) % 64;
        const expected = xxh32Wasm(buf.subarray(start, start + length), seed);
        assert.equal(xxh32Range(buf, start, start + length, seed), expected, `length ${length} seed ${seed}`);
        assert.equal(xxh32(buf.subarray(start, start + length), seed), expected);
        compared++;
      }
    }
    assert.equal(compared, 301 * 6);
  });

  it('xxh64: the native hasher (Node) equals xxhash-wasm at every length around its threshold and at 1 MiB, any start', () => {
    const { wasm, native } = xxh64Implementations();
    assert.ok(native, 'the native xxh64 (@node-rs/xxhash) loads in Node on this platform');
    const buf = randomBytes(nativeXxh64MinBytes + 300);
    const lengths: number[] = [];
    for (let length = 0; length <= 300; length++) lengths.push(length, nativeXxh64MinBytes - 150 + length);
    for (const length of lengths) {
      const start = (length * 7) % 64;
      const bytes = buf.subarray(start, Math.min(buf.length, start + length));
      const expected = wasm(bytes);
      assert.equal(native(bytes), expected, `length ${bytes.length}`);
      assert.equal(xxh64(bytes), expected, `length ${bytes.length}`);
    }
    const mib = randomBytes(1 << 20);
    assert.equal(native(mib.subarray(5)), wasm(mib.subarray(5)));
    // A flipped bit changes it (the check can fail).
    const flipped = Uint8Array.from(mib);
    flipped[123_456]! ^= 1;
    assert.notEqual(xxh64(flipped), xxh64(mib));
  });

  it('xxh64Stream, native and WebAssembly alike, equals xxh64 of the pieces joined, however they are cut', () => {
    const bytes = randomBytes(300_000);
    const cuts: number[][] = [[], [0], [1], [31, 32, 33], [4095, 4096, 80_000], [299_999], Array.from({ length: 40 }, (_, i) => i * 7_001)];
    const expected = xxh64(bytes);
    for (const implementation of ['native', 'wasm'] as const) {
      for (const cut of cuts) {
        const stream = xxh64Stream(implementation);
        let from = 0;
        for (const at of [...cut, bytes.length]) {
          stream.update(bytes.subarray(from, at));
          from = at;
        }
        assert.equal(stream.digest(), expected, `${implementation}, cut at ${cut.join(',')}`);
      }
      const empty = xxh64Stream(implementation);
      assert.equal(empty.digest(), xxh64(new Uint8Array(0)), implementation);
    }
    const other = xxh64Stream();
    other.update(bytes.subarray(1));
    assert.notEqual(other.digest(), expected);
  });

  it('the key walk finds each record\'s msgId, key and traceid header where they are', () => {
    const messages: MessageInput[] = [
      { body: 'a' },
      { key: 'k-1', body: 'b', headers: { other: 'x', traceid: 'trace-1' } },
      { key: '', body: 'c', headers: { traceid: '' } },
      { key: 'ü', body: new Uint8Array(0), headers: { traceidx: 'no', trace: 'no' } },
    ];
    const { batch } = encodeBatch(messages, { codec: null });
    const header = validateBatch(batch);
    const section = batch.subarray(batchHeaderBytes);
    const decoded = decodeRecords(batch, 0, header, null);
    const seen: string[] = [];
    forEachRecordKeys(section, header.recordCount, (k) => {
      const text = (at: number, length: number): string => (length < 0 ? '-' : `'${Buffer.from(section.subarray(at, at + length)).toString()}'`);
      assert.deepEqual(section.subarray(k.msgIdAt, k.msgIdAt + 16), decoded[k.index]!.msgId);
      seen.push(`${k.index} key=${text(k.keyAt, k.keyLength)} trace=${text(k.traceIdAt, k.traceIdLength)}`);
    });
    assert.deepEqual(seen, ["0 key=- trace=-", "1 key='k-1' trace='trace-1'", "2 key='' trace=''", "3 key='ü' trace=-"]);
  });

  for (const { name, codec } of codecs) {
    it(`the encoder's index key ranges hash to the walk's keys, entry for entry (${name})`, () => {
      const messages: MessageInput[] = [
        { body: 'a' },
        { key: 'k-1', body: 'b', headers: { other: 'x', traceid: 'trace-1' } },
        { key: '', body: 'c', headers: [{ name: 'traceid', value: new Uint8Array(0) }, { name: 'traceid', value: Buffer.from('second') }] },
        { key: 'ü😀', body: new Uint8Array(0), headers: { traceidx: 'no', trace: 'no' } },
        { key: Buffer.from([0, 255, 7]), body: 'x'.repeat(2000), msgId: randomBytes(16) },
        ...Array.from({ length: 300 }, (_, i) => ({ key: i % 3 === 0 ? null : `user-${i}`, body: 'y'.repeat(i), headers: i % 5 === 0 ? { traceid: `t-${i}` } : undefined })),
      ];
      const encoded = encodeBatch(messages, { codec, indexKeys: true });
      const header = validateBatch(encoded.batch);
      if (codec) assert.equal(header.flags & 7, Compression.lz4, 'the long section compresses: the hashes are of the records before compression');
      const raw = recordsSection(encoded.batch, 0, header, lz4Codec);
      const walked: number[] = [];
      forEachRecordKeys(raw, header.recordCount, (k) => {
        walked.push(k.index, xxh32Range(raw, k.msgIdAt, k.msgIdAt + 16, IndexKind.msgId));
        if (k.keyLength >= 0) walked.push(k.index, xxh32Range(raw, k.keyAt, k.keyAt + k.keyLength, IndexKind.key));
        if (k.traceIdLength >= 0) walked.push(k.index, xxh32Range(raw, k.traceIdAt, k.traceIdAt + k.traceIdLength, IndexKind.traceId));
      });
      const keys = encoded.indexKeys!;
      const hashed: number[] = [];
      assert.equal(keys.entries.length, (3 / 2) * walked.length, 'one triple per entry the walk adds');
      for (let k = 0; k < keys.entries.length; k += 3) {
        const [tagged, start, end] = keys.entries.subarray(k, k + 3);
        hashed.push(tagged! >>> 2, xxh32Range(keys.bytes, start!, end!, tagged! & 3));
      }
      assert.deepEqual(hashed, walked);
      assert.equal(encodeBatch(messages, { codec }).indexKeys, null, 'hashed only when asked');
    });

    it(`encodes into a lent buffer full of stale bytes exactly what it encodes into a new one (${name})`, () => {
      const messages: MessageInput[] = Array.from({ length: 200 }, (_, i) => ({
        msgId: Buffer.alloc(16, i),
        timestamp: 1_800_000_000_000 + i,
        key: i % 4 === 0 ? null : `key-${i}`,
        body: i % 2 ? 'text '.repeat(i % 40) : Buffer.alloc(i % 50, i),
        headers: i % 7 === 0 ? { traceid: `t-${i}`, other: 'x' } : undefined,
        deliverAt: i % 5 === 0 ? 1_800_000_100_000 : undefined,
      }));
      const fresh = encodeBatch(messages, { codec, indexKeys: true });
      const lent: Uint8Array[] = [];
      const stale = encodeBatch(messages, {
        codec,
        indexKeys: true,
        allocate: (bytes) => {
          const view = new Uint8Array(new ArrayBuffer(bytes + 100), 0, bytes).fill(0xa5);
          lent.push(view);
          return view;
        },
      });
      assert.ok(lent.includes(stale.batch), 'the batch is the lent buffer');
      assert.ok(lent.includes(stale.indexKeys!.bytes), 'and so is the section the key ranges point into');
      assert.equal(lent.length, codec ? 2 : 1, 'one buffer, and one more for the compressed batch');
      assert.deepEqual(Buffer.from(stale.batch), Buffer.from(fresh.batch));
      assert.deepEqual(stale.indexKeys!.entries, fresh.indexKeys!.entries);
      assert.deepEqual(decodeRecords(stale.batch, 0, validateBatch(stale.batch), lz4Codec).length, 200);
    });
  }
});

describe('format: checksummed JSON files (checkpoint.json, topic.json)', () => {
  const doc = (): string => readFileSync(path.join(__dirname, '..', '..', 'engine', 'FORMAT.md'), 'utf8');
  const jsonBlocks = (section: string): string[] => {
    const text = doc().slice(doc().indexOf(section));
    return [...text.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]!);
  };

  it('writes the worked examples of engine/FORMAT.md byte for byte (the checkpoint compact, topic.json indented)', () => {
    const [checkpoint] = jsonBlocks('## Checkpoint (`checkpoint.json`)');
    const { checksum: _c, ...fields } = JSON.parse(checkpoint!) as Record<string, unknown>;
    assert.equal(checkedJsonText(fields), checkpoint!.trim());
    assert.match(checkpoint!, /"checksum":"5393a4eb"/);
    const [topic] = jsonBlocks('## Topic (`topic.json`)');
    const { checksum: _t, ...topicFields } = JSON.parse(topic!) as Record<string, unknown>;
    assert.equal(checkedJsonText(topicFields, 2), topic!.trim());
  });

  it('reads back what it wrote whatever the whitespace; a changed value, a damaged checksum or a non-object is refused; no checksum is reported, not refused', () => {
    const fields = { version: 2, name: 'ünï "q"', list: [[1, 2], [3]], flag: true, big: Number.MAX_SAFE_INTEGER };
    for (const indent of [undefined, 2, 4]) assert.deepEqual(parseCheckedJson(checkedJsonText(fields, indent)), { fields, checked: true });
    const text = checkedJsonText(fields);
    assert.match(thrown(() => parseCheckedJson(text.replace('9007199254740991', '9007199254740990'))).message, /checksum "[0-9a-f]{8}" does not match the content/);
    assert.match(thrown(() => parseCheckedJson(text.replace(/"checksum":"(.)/, (_m, c: string) => `"checksum":"${c === '0' ? '1' : '0'}`))).message, /does not match/);
    assert.match(thrown(() => parseCheckedJson('[1,2]')).message, /not a JSON object/);
    assert.deepEqual(parseCheckedJson(JSON.stringify(fields)), { fields, checked: false });
    assert.throws(() => checkedJsonText({ checksum: 'x' }), /the checksum's own field/);
  });
});

describe('format: msgId', () => {
  it('is time-ordered and strictly increasing within one generator', () => {
    const gen = new MsgIdGenerator();
    let prev = '';
    for (let i = 0; i < 5000; i++) {
      const id = msgIdToHex(gen.next(1_700_000_000_000 + (i >> 10)));
      assert.ok(id > prev, `${id} > ${prev}`);
      prev = id;
    }
  });

  it('carries its millisecond and round-trips through hex', () => {
    const id = new MsgIdGenerator().next(1_795_000_000_123);
    assert.equal(msgIdTime(id), 1_795_000_000_123);
    assert.deepEqual(msgIdFromHex(msgIdToHex(id)), id);
    assert.equal(msgIdFromHex('xyz'), null);
  });
});

describe('format: error table', () => {
  it('maps every code to a unique wire number and back', () => {
    const wires = new Set<number>();
    for (const [code, row] of Object.entries(ErrorTable)) {
      assert.ok(!wires.has(row.wire));
      wires.add(row.wire);
      assert.equal(errorCodeFromWire(row.wire), code);
    }
    assert.equal(errorCodeFromWire(9999), 'INTERNAL');
  });
});

describe('format: record batches', () => {
  before(() => loadChecksum());

  it('header 64-bit fields read back exactly across the safe-integer range, negatives included (byte loads against a DataView)', () => {
    const { batch } = encodeBatch([{ body: 'x', timestamp: 1_795_000_000_000 }], { producerId: Number.MAX_SAFE_INTEGER, producerSequence: 2 ** 31 - 1 });
    for (const [offset, time] of [
      [0, 0],
      [2 ** 32 - 1, 2 ** 32],
      [2 ** 32 + 5, 1_795_000_000_123],
      [Number.MAX_SAFE_INTEGER - 1, Number.MAX_SAFE_INTEGER],
    ] as const) {
      patchBatch(batch, offset, time);
      const probe = probeHeader(batch, 0);
      assert.equal(probe.kind, 'ok');
      const header = (probe as { header: BatchHeader }).header;
      const dv = new DataView(batch.buffer, batch.byteOffset, batch.byteLength);
      assert.equal(header.baseOffset, offset);
      assert.equal(header.brokerTimestamp, time);
      assert.equal(header.producerId, Number(dv.getBigInt64(BatchOffset.producerId, true)));
      assert.equal(header.producerId, Number.MAX_SAFE_INTEGER);
      assert.equal(header.producerSequence, 2 ** 31 - 1);
      assert.equal(header.firstTimestamp, 1_795_000_000_000);
      assert.equal(header.checksum, dv.getBigUint64(BatchOffset.checksum, true));
    }
    const anonymous = probeHeader(encodeBatch([{ body: 'y' }]).batch, 0) as { header: BatchHeader };
    assert.equal(anonymous.header.producerId, -1, 'no producer: -1, eight 0xff bytes');
    assert.equal(anonymous.header.producerSequence, -1);
  });

  for (const { name, codec } of codecs) {
    it(`round-trips every field (${name})`, () => {
      const now = 1_795_000_000_000;
      const messages: MessageInput[] = [
        { body: 'plain', timestamp: now },
        { key: 'order-17', body: new Uint8Array([0, 1, 2, 255]), headers: { traceid: 'abc', 'content-type': 'bin' }, timestamp: now + 5 },
        { key: new Uint8Array([0xde, 0xad]), body: '', deliverAt: now + 60_000, timestamp: now - 3 },
        { body: 'x'.repeat(5000), headers: [{ name: 'h', value: new Uint8Array(0) }] },
        { key: 'ключ', body: 'größe 😀 ok' }, // UTF-8 of two to four bytes a character, key and body
      ];
      const { batch, msgIds } = encodeBatch(messages, { codec, producerId: 42, producerSequence: 7 });
      const header = validateBatch(batch);
      assert.equal(header.recordCount, 5);
      assert.equal(header.producerId, 42);
      assert.equal(header.producerSequence, 7);
      if (codec) assert.equal(header.flags & 7, Compression.lz4, 'a compressible batch is compressed');
      const records = decodeRecords(batch, 0, header, lz4Codec);
      assert.equal(records.length, 5);
      assert.deepEqual(records.map((r) => msgIdToHex(r.msgId)), msgIds.map(msgIdToHex));
      assert.equal(Buffer.from(records[0]!.body).toString(), 'plain');
      assert.equal(records[0]!.key, null);
      assert.equal(records[0]!.timestamp, now);
      assert.equal(Buffer.from(records[1]!.key!).toString(), 'order-17');
      assert.deepEqual([...records[1]!.body], [0, 1, 2, 255]);
      assert.deepEqual(records[1]!.headers.map((h) => [h.name, Buffer.from(h.value).toString()]), [['traceid', 'abc'], ['content-type', 'bin']]);
      assert.equal(records[1]!.timestamp, now + 5);
      assert.deepEqual([...records[2]!.key!], [0xde, 0xad]);
      assert.equal(records[2]!.body.length, 0);
      assert.equal(records[2]!.deliverAt, now + 60_000);
      assert.equal(records[2]!.timestamp, now - 3);
      assert.equal(records[3]!.deliverAt, null);
      assert.equal(Buffer.from(records[3]!.body).toString(), 'x'.repeat(5000));
      assert.equal(Buffer.from(records[4]!.key!).toString(), 'ключ');
      assert.equal(Buffer.from(records[4]!.body).toString(), 'größe 😀 ok');
      assert.deepEqual(records.map((r) => r.offset), [0, 1, 2, 3, 4]);
    });

    it(`round-trips every field at its limit (${name})`, () => {
      const body = new Uint8Array(formatLimits.messageBytesMax);
      for (let i = 0; i < body.length; i += 4096) body[i] = i & 0xff;
      const key = 'k'.repeat(formatLimits.keyBytesMax);
      const headers: Record<string, string> = {};
      const valueBytes = Math.floor(formatLimits.headersBytesMax / formatLimits.headerCountMax) - 4;
      for (let i = 0; i < formatLimits.headerCountMax; i++) headers[`h${String(i).padStart(3, '0')}`] = 'v'.repeat(valueBytes);
      const { batch } = encodeBatch([{ key, body, headers, deliverAt: 253402300799999 /* 9999-12-31 */ }], { codec });
      const header = validateBatch(batch);
      const [record] = decodeRecords(batch, 0, header, lz4Codec);
      assert.equal(record!.body.length, formatLimits.messageBytesMax);
      assert.ok(Buffer.from(record!.body).equals(Buffer.from(body)));
      assert.equal(record!.key!.length, formatLimits.keyBytesMax);
      assert.equal(record!.headers.length, formatLimits.headerCountMax);
    });
  }

  it('refuses every field past its limit with a typed error', () => {
    assert.equal(thrown(() => encodeBatch([{ body: new Uint8Array(formatLimits.messageBytesMax + 1) }])).code, 'MESSAGE_TOO_LARGE');
    assert.equal(thrown(() => encodeBatch([{ key: 'k'.repeat(formatLimits.keyBytesMax + 1), body: '' }])).code, 'KEY_TOO_LARGE');
    const many: Record<string, string> = {};
    for (let i = 0; i <= formatLimits.headerCountMax; i++) many[`h${i}`] = '';
    assert.equal(thrown(() => encodeBatch([{ headers: many, body: '' }])).code, 'HEADERS_TOO_LARGE');
    assert.equal(thrown(() => encodeBatch([{ headers: { big: 'v'.repeat(formatLimits.headersBytesMax) }, body: '' }])).code, 'HEADERS_TOO_LARGE');
    assert.equal(thrown(() => encodeBatch([])).code, 'INVALID_ARGUMENT');
    const big = Array.from({ length: 3 }, () => ({ body: new Uint8Array(formatLimits.messageBytesMax) }));
    assert.equal(thrown(() => encodeBatch(big)).code, 'BATCH_TOO_LARGE');
    assert.equal(thrown(() => encodeBatch([{ body: '', msgId: new Uint8Array(3) }])).code, 'INVALID_ARGUMENT');
  });

  it('checkMessage refuses exactly what encodeBatch refuses, one message at a time, and passes what it encodes', () => {
    const many: Record<string, string> = {};
    for (let i = 0; i <= formatLimits.headerCountMax; i++) many[`h${i}`] = '';
    const bad: Array<[MessageInput, string]> = [
      [{ body: new Uint8Array(formatLimits.messageBytesMax + 1) }, 'MESSAGE_TOO_LARGE'],
      [{ key: 'k'.repeat(formatLimits.keyBytesMax + 1), body: '' }, 'KEY_TOO_LARGE'],
      [{ key: 'é'.repeat(formatLimits.keyBytesMax / 2 + 1), body: '' }, 'KEY_TOO_LARGE'], // counted in UTF-8 bytes
      [{ headers: many, body: '' }, 'HEADERS_TOO_LARGE'],
      [{ headers: { big: 'v'.repeat(formatLimits.headersBytesMax) }, body: '' }, 'HEADERS_TOO_LARGE'],
      [{ headers: [{ name: 'big', value: new Uint8Array(formatLimits.headersBytesMax) }], body: '' }, 'HEADERS_TOO_LARGE'],
      [{ body: '', msgId: new Uint8Array(3) }, 'INVALID_ARGUMENT'],
      [{ body: '', timestamp: -1 }, 'INVALID_ARGUMENT'],
      [{ body: '', deliverAt: 1.5 }, 'INVALID_ARGUMENT'],
    ];
    for (const [message, code] of bad) {
      assert.equal(thrown(() => checkMessage(message, 7)).code, code);
      assert.match(thrown(() => checkMessage(message, 7)).message, /^message 7: /);
      assert.equal(thrown(() => encodeBatch([message])).code, code);
    }
    const atLimits: MessageInput[] = [
      { key: 'k'.repeat(formatLimits.keyBytesMax), body: new Uint8Array(1000), headers: { a: 'v'.repeat(formatLimits.headersBytesMax - 1) } },
      { body: 'x', timestamp: 0, deliverAt: 0, msgId: new Uint8Array(16) },
    ];
    for (const message of atLimits) {
      checkMessage(message);
      assert.equal(encodeBatch([message]).msgIds.length, 1);
    }
  });

  it('encodes the worked example of engine/FORMAT.md byte for byte', () => {
    const doc = readFileSync(path.join(__dirname, '..', '..', 'engine', 'FORMAT.md'), 'utf8');
    const section = doc.slice(doc.indexOf('### Worked example'));
    const dump = section.slice(section.indexOf('```') + 3, section.indexOf('```', section.indexOf('```') + 3));
    const expected = Buffer.from(
      dump
        .trim()
        .split('\n')
        .map((line) => line.slice(line.indexOf(':') + 1).trim().replace(/ /g, ''))
        .join(''),
      'hex',
    );
    assert.equal(expected.length, 102);
    const { batch } = encodeBatch(
      [{ msgId: Buffer.from('019a8f3c2e007f001122334455667788', 'hex'), key: 'k1', headers: { traceid: 'ab' }, body: 'hi', timestamp: 1763726400000 }],
      { producerId: 7, producerSequence: 0, codec: null },
    );
    patchBatch(batch, 42, 1763726400005);
    assert.equal(Buffer.from(batch).toString('hex'), expected.toString('hex'));
    // And the negative defaults (no producer): -1 as eight 0xff, -1 as four.
    const plain = encodeBatch([{ body: 'x' }], { codec: null }).batch;
    assert.equal(Buffer.from(plain.subarray(BatchOffset.producerId, BatchOffset.producerId + 12)).toString('hex'), 'ff'.repeat(12));
  });

  it('keeps its checksum when the broker patches offset and time', () => {
    const { batch } = encodeBatch([{ body: 'a' }, { body: 'b' }]);
    patchBatch(batch, 123456789, 1_795_000_000_000);
    const header = validateBatch(batch);
    assert.equal(header.baseOffset, 123456789);
    assert.equal(header.brokerTimestamp, 1_795_000_000_000);
    assert.deepEqual(decodeRecords(batch, 0, header, null).map((r) => r.offset), [123456789, 123456790]);
  });

  for (const { name, codec } of codecs) {
    it(`BitRotAnywhereCoveredIsDetected (${name})`, () => {
      const { batch } = encodeBatch(
        Array.from({ length: 30 }, (_, i) => ({ key: `key-${i}`, body: `message body number ${i} `.repeat(20), headers: { traceid: `t${i}` } })),
        { codec },
      );
      for (let pos = 0; pos < batch.length; pos++) {
        const copy = batch.slice();
        copy[pos] ^= 0x01 << pos % 8;
        if (pos < BatchOffset.checksum) {
          // baseOffset and brokerTimestamp sit outside the checksum by design: the broker patches them.
          validateBatch(copy);
          continue;
        }
        const err = thrown(() => validateBatch(copy));
        assert.equal(err.code, 'CORRUPT_BATCH', `flip at ${pos}`);
      }
    });
  }

  it('tells a corrupt length from a cut-short batch', () => {
    const { batch } = encodeBatch([{ body: 'hello world' }]);
    assert.equal(probeHeader(batch, 0, batch.length - 1).kind, 'short');
    assert.equal(probeHeader(batch, 0, batchHeaderBytes - 1).kind, 'short');
    const bad = batch.slice();
    bad[BatchOffset.batchLength] ^= 0x40; // length now disagrees with recordsLength
    assert.equal(probeHeader(bad, 0).kind, 'corrupt');
    const badMagic = batch.slice();
    badMagic[BatchOffset.magic] = 0;
    assert.equal(probeHeader(badMagic, 0).kind, 'corrupt');
  });
});
