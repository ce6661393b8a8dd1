/**
 * The SDK's lifecycle as an application uses it, from a black-box review: messages of the
 * wrong type, closing a client under waiting consumers, what a consumer commits when the
 * application's processing fails, leaving a msgStream's loop, options out of range.
 */
import { strict as assert } from 'node:assert';
import { brokerForSuite } from './broker-helpers';
import { rejection, removeTempDirs } from './helpers';

after(removeTempDirs);

describe('sdk lifecycle: messages of the wrong type', function () {
  this.timeout(30_000);
  const { client } = brokerForSuite();

  it('are refused with INVALID_ARGUMENT at send(), and the producer goes on (one wedged every later send)', async () => {
    await client().admin.createTopic('types', { channels: 1 });
    const producer = await client().producer({ topic: 'types' });
    const bad: unknown[] = [
      { body: 'x', headers: { retries: 3 } },
      { body: 'x', key: 42 },
      { body: { total: 42 } },
      { body: null },
      { body: 'x', headers: [1, 2] },
      { body: 'x', msgId: 7 },
      null,
    ];
    for (const message of bad) {
      const err = await rejection(producer.send(message as never));
      assert.equal(err.code, 'INVALID_ARGUMENT', `${JSON.stringify(message)}: ${err.message}`);
      const inArray = await rejection(producer.sendBatch([{ body: 'fine' }, message as never]));
      assert.equal(inArray.code, 'INVALID_ARGUMENT', `${JSON.stringify(message)} in sendBatch: ${inArray.message}`);
      assert.match(inArray.message, /^message 1: /);
    }
    for (const channel of ['0', 0.5, -1]) assert.equal((await rejection(producer.send({ body: 'x', channel } as never))).code, 'CHANNEL_NOT_FOUND', `channel ${JSON.stringify(channel)}`);
    const good = await producer.send({ body: 'good', key: 'k', headers: { a: 'b', c: new Uint8Array([1]) } });
    assert.equal(good.offset, 0, 'nothing of the refused messages was stored; the producer is not wedged');
    await producer.close();
  });
});
