import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { connect, type Message } from '../sdk/index';
import { BatchOffset } from '../engine/format/index';
import { BrokerProcess, httpJson } from './broker-helpers';
import { flipByte, removeTempDirs, segmentFiles, tempDir } from './helpers';

after(removeTempDirs);

/** Start position of every batch in a segment file (walking batchLength fields). */
function batchStarts(file: string): number[] {
  const bytes = fs.readFileSync(file);
  const starts: number[] = [];
  for (let at = 0; at < bytes.length; at += bytes.readUInt32LE(at + BatchOffset.batchLength)) starts.push(at);
  return starts;
}

describe('a damaged batch in the middle of what a consumer reads', function () {
  this.timeout(60_000);
  const broker = new BrokerProcess(tempDir());
  after(() => broker.stop('SIGKILL'));

  /** Ten batches of five messages in channel 0 of a new topic, then a clean stop: returns the segment file. */
  async function tenBatchesThenStop(topic: string): Promise<string> {
    const client = await connect(broker.url);
    await client.admin.createTopic(topic, { channels: 1 });
    const producer = await client.producer({ topic });
    for (let b = 0; b < 10; b++) await producer.sendBatch(Array.from({ length: 5 }, (_, i) => ({ body: `b${b}-m${i}`, channel: 0 })));
    await producer.close();
    await client.close();
    await broker.stop('SIGTERM');
    return segmentFiles(path.join(broker.data, 'topics', topic, '0'))[0]!;
  }

  /** What a group consumer from the earliest offset gets before it fails, and the failure. */
  async function consumeUntilFailure(topic: string): Promise<{ offsets: number[]; failure: (Error & { code?: string }) | null; positions: Array<{ offset: number }> }> {
    const client = await connect(broker.url);
    const consumer = await client.consumer({ topic, group: 'g', start: 'earliest' });
    const got: Message[] = [];
    let failure: (Error & { code?: string }) | null = null;
    try {
      for await (const m of consumer) got.push(m);
    } catch (err) {
      failure = err as Error & { code?: string };
    }
    await consumer.close();
    const positions = await client.admin.positions(topic, 'g');
    await client.close();
    return { offsets: got.map((m) => m.offset), failure, positions };
  }

  it('costs only what comes after it: the SDK consumer and HTTP hand out the sound messages before it, then the error', async () => {
    await broker.start();
    const log = await tenBatchesThenStop('rot');
    const starts = batchStarts(log);
    assert.equal(starts.length, 10);
    flipByte(log, starts[6]! + 70); // inside batch 6's records: its checksum fails (offsets 30–34)
    await broker.start(); // a clean shutdown before: the active segment is trusted, not scanned

    const page = await httpJson(`${broker.http}/v1/topics/rot/messages?channel=0&offset=0&max=100`);
    assert.equal(page.status, 200);
    assert.deepEqual((page.body.messages as Array<{ offset: number }>).map((m) => m.offset), [...Array(30).keys()], 'HTTP: the 30 messages before the damage');
    const bad = await httpJson(`${broker.http}/v1/topics/rot/messages?channel=0&offset=30&max=100`);
    assert.equal(bad.body.error?.code, 'CORRUPT_FILE');

    const { offsets, failure } = await consumeUntilFailure('rot');
    assert.deepEqual(offsets, [...Array(30).keys()], 'SDK: the 30 messages before the damage, then the error');
    assert.equal(failure?.code, 'CORRUPT_BATCH');
  });

  it('a flipped offset field (outside the checksum) stops the consumer at that batch with CORRUPT_FILE; it never jumps ahead or commits past it', async () => {
    const log = await tenBatchesThenStop('jump');
    flipByte(log, batchStarts(log)[6]! + BatchOffset.baseOffset + 1, 0x01); // offset 30 now says 286
    await broker.start();
    const { offsets, failure, positions } = await consumeUntilFailure('jump');
    assert.deepEqual(offsets, [...Array(30).keys()]);
    assert.equal(failure?.code, 'CORRUPT_FILE');
    assert.ok(positions.every((p) => p.offset <= 30), `committed ${JSON.stringify(positions)}`);
  });
});
