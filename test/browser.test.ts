import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { connect } from '../sdk/index';
import { BrokerProcess } from './broker-helpers';
import { removeTempDirs, tempDir } from './helpers';

after(removeTempDirs);

const bundle = path.join(__dirname, '..', 'browser', 'waymark.js');

describe('SDK in a browser (headless Chromium)', function () {
  this.timeout(120_000);
  const broker = new BrokerProcess(tempDir());
  let browser: Browser;

  before(async () => {
    await broker.start();
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
    await broker.stop();
  });

  it('round-trips a message through a real broker with the bundled SDK and the global WebSocket', async () => {
    const node = await connect(broker.url, { reconnect: false });
    await node.admin.createTopic('browser', { channels: 2 });
    const page = await browser.newPage();
    const logs: string[] = [];
    page.on('console', (m) => logs.push(m.text()));
    await page.goto(`${broker.http}/healthz`); // a page of the broker's own origin
    await page.addScriptTag({ path: bundle });
    const result = await page.evaluate(async (url: string) => {
      const w = (globalThis as unknown as { Waymark: typeof import('../sdk/index') }).Waymark;
      const client = await w.connect(url);
      const producer = await client.producer({ topic: 'browser' });
      const sent = await producer.send({ key: 'from-browser', body: new TextEncoder().encode('hello from chromium'), headers: { via: 'browser' } });
      const consumer = await client.consumer({ topic: 'browser', group: 'page', start: 'earliest', autoCommitIntervalMs: 0 });
      const got = await consumer.next();
      const m = got.value!;
      const answer = { sent, body: new TextDecoder().decode(m.body), key: m.key, via: m.headers.via, msgId: m.msgId, hasProcess: typeof (globalThis as { process?: unknown }).process };
      await consumer.close();
      client.close();
      return answer;
    }, broker.url);
    assert.equal(result.body, 'hello from chromium');
    assert.equal(result.key, 'from-browser');
    assert.equal(result.via, 'browser');
    assert.equal(result.msgId, result.sent.msgId);
    assert.equal(result.hasProcess, 'undefined', 'this really ran in a browser context');
    // And the message written by the browser is read back in Node, checksum verified end to end.
    const consumer = await node.consumer({ topic: 'browser', group: 'node', start: 'earliest', autoCommitIntervalMs: 0 });
    const fromNode = await consumer.next();
    assert.equal(Buffer.from(fromNode.value!.body).toString(), 'hello from chromium');
    await consumer.close();
    node.close();
    assert.deepEqual(logs.filter((l) => /error/i.test(l)), []);
  });
});
