import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { connect, type Message } from '../sdk/index';
import { countRecords } from '../sdk/consumer';
import { BatchOffset } from '../engine/format/index';
import { BrokerProcess, httpJson } from './broker-helpers';
import { batchLayout, flipByte, removeTempDirs, segmentFiles, tempDir } from './helpers';

after(removeTempDirs);

/** Start position of every batch in a segment file (walking batchLength fields). */
function batchStarts(file: string): number[] {
  return batchLayout(fs.readFileSync(file)).starts;
}

describe('a damaged batch in the middle of what a consumer reads', function () {
  this.timeout(60_000);
  const broker = new BrokerProcess(tempDir());
  after(() => broker.stop('SIGKILL'));

  /** Ten batches of five messages in channel 0 of a new topic, then a clean stop: returns the segment file. */
  async function tenBatchesThenStop(topic: string, body: (b: number, i: number) => string | Uint8Array = (b, i) => `b${b}-m${i}`): Promise<string> {
    const client = await connect(broker.url);
    await client.admin.createTopic(topic, { channels: 1 });
    const producer = await client.producer({ topic });
    for (let b = 0; b < 10; b++) await producer.sendBatch(Array.from({ length: 5 }, (_, i) => ({ body: body(b, i), channel: 0 })));
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
    // Named inside the data folder, not by the broker's own path on its machine (helper-59).
    assert.match(bad.body.error.message, /topics\/rot\/0/);
    assert.ok(!bad.body.error.message.includes(broker.data), bad.body.error.message);

    const { offsets, failure } = await consumeUntilFailure('rot');
    assert.deepEqual(offsets, [...Array(30).keys()], 'SDK: the 30 messages before the damage, then the error');
    assert.equal(failure?.code, 'CORRUPT_BATCH');
    // Where, and what to do: it said "batch at offset 30 fails its checksum" (or, for a damaged
    // header, "batch at byte 279 of a push is …"), no topic, no channel, no next step.
    assert.equal(failure?.message, "topic rot channel 0: the batch at offset 30 fails its checksum; the broker's copy may be damaged (waymark verify on its data folder lists what is)");
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

  it('when the damaged batch comes in a later push than the sound ones, nothing after it is handed out or committed', async () => {
    // 100 KiB random bodies (lz4 cannot shrink them): 500 KiB batches, two to a 1 MiB push, and
    // the 8 MiB window lets the broker send the pushes after the damaged one at once.
    const log = await tenBatchesThenStop('split', () => randomBytes(100 * 1024));
    flipByte(log, batchStarts(log)[3]! + 5000); // inside batch 3's records (offsets 15–19)
    await broker.start();
    const client = await connect(broker.url);
    // The application reads only once batches 0–5 are pushed (30 records): batches after the
    // damaged one are then in hand before the error is (and were handed out, before the fix).
    const connection = (client as unknown as { connection: { onPush(subscription: number, handler: (frame: { push?: { batches?: Uint8Array | null } | null }) => void): () => void } }).connection;
    const onPush = connection.onPush.bind(connection);
    let pushed = 0;
    let sixBatches!: () => void;
    const inHand = new Promise<void>((resolve) => (sixBatches = resolve));
    connection.onPush = (subscription, handler) =>
      onPush(subscription, (frame) => {
        handler(frame);
        pushed += countRecords(frame.push?.batches ?? undefined);
        if (pushed >= 30) sixBatches();
      });
    const consumer = await client.consumer({ topic: 'split', group: 'g', start: 'earliest', autoCommitIntervalMs: 0 });
    await inHand;
    const offsets: number[] = [];
    let failure: (Error & { code?: string }) | null = null;
    try {
      for await (const m of consumer) offsets.push(m.offset);
    } catch (err) {
      failure = err as Error & { code?: string };
    }
    await consumer.close(); // commits what was delivered
    assert.deepEqual(offsets, [...Array(15).keys()], 'batches 0–2, then the error: no batch after the damaged one');
    assert.equal(failure?.code, 'CORRUPT_BATCH');
    const positions = await client.admin.positions('split', 'g');
    assert.ok(positions.every((p) => p.offset <= 15), `committed ${JSON.stringify(positions)}`);
    client.close();
  });
});
