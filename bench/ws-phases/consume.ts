/**
 * Consume phase of bench/ws.ts: a backlog of N messages (100 B bodies by default, batches of
 * 1,000 as the SDK producer makes them, lz4 as the producer's default) is appended in the
 * broker process; then a stream-group consumer with a new group reads it from the earliest
 * offset, every message taken from the SDK: one at a time (`consumer.next()`, what `for await`
 * calls), and in the batches the SDK has received (`consumer.nextBatch(1000)`, one promise
 * per batch, as `producer.sendBatch()` is for sending). Next to them, in the same round:
 *
 *   wire    a bare subscription on the SDK's Connection: the same Subscribe, the same credit
 *           window returned in the same quarter-window chunks, but the client only counts the
 *           records of each push (no checksum, no decoding, no Message objects): the broker's
 *           push path plus the transport, i.e. the ceiling of a consumer on this broker.
 *   engine  store.readBatches of the same backlog in the broker process, in push-sized chunks
 *           (1 MiB): the storage's read rate with no network in front of it.
 *
 * The data is in the page cache (it was just written): these are warm figures.
 */
import { connect } from '../../sdk/index';
import { Connection } from '../../sdk/client';
import { countRecords } from '../../sdk/consumer';
import { protocolLimits } from '../../protocol/limits';
import { emit, median, now, progress, sig } from '../common';
import { brokerBusy, CpuClock, settle, type BrokerChild, type Options } from './shared';

type Side = 'next' | 'batch' | 'wire' | 'engine';

const apis = { next: 'consumer.next (stream group, start earliest)', batch: 'consumer.nextBatch(1000) (stream group, start earliest)' } as const;
const batchMessages = 1000;

const prefetchMessages = 10_000; // the consumer's defaults
const prefetchBytes = 8 * 1024 * 1024;

export async function consumePhase(o: Options, broker: BrokerChild): Promise<Array<{ api: string; rates: number[] }>> {
  const topic = 'consume-backlog';
  const admin = await connect(broker.url, { clientName: 'bench-admin' });
  await admin.admin.createTopic(topic, { channels: 1 });
  admin.close();
  progress(`consume: filling a backlog of ${o.backlogMessages.toLocaleString('en')} messages of ${o.consumeBodyBytes} B`);
  const filled = await broker.call({ cmd: 'fill', topic, messages: o.backlogMessages, bodyBytes: o.consumeBodyBytes, batchMessages: 1000 });
  const total = filled.highWatermark as number;
  progress(`consume: backlog of ${total.toLocaleString('en')} messages written in ${sig(filled.seconds as number, 3)} s`);
  const sides: Side[] = ['next', 'batch', 'wire', 'engine'];
  const results: Record<Side, Array<{ seconds: number; clientBusy?: number; brokerBusy: number }>> = { next: [], batch: [], wire: [], engine: [] };
  for (let round = 0; round < o.rounds; round++) {
    const order = round % 2 === 0 ? sides : [...sides].reverse();
    for (const side of order) {
      await broker.call({ cmd: 'gc' });
      settle();
      progress(`consume round ${round + 1}/${o.rounds}: ${side}`);
      const clock = new CpuClock();
      const { result, brokerBusy: busy } = await brokerBusy(broker, async () => {
        if (side === 'engine') return (await broker.call({ cmd: 'engineRead', topic, maxBytes: protocolLimits.pushBytesMax })).seconds as number;
        if (side === 'wire') return wireRound(broker.url, topic, total);
        return sdkRound(broker.url, topic, `bench-${side}-${round}`, total, side === 'batch' ? batchMessages : 0);
      });
      results[side].push({ seconds: result, clientBusy: side === 'engine' ? undefined : clock.busy().busy, brokerBusy: busy });
    }
  }
  const rates = (side: Side): number[] => results[side].map((r) => total / r.seconds);
  const ratio = (a: Side, b: Side): number => sig(median(rates(a).map((x, i) => x / rates(b)[i]!)), 3);
  const summary = (side: Side): Record<string, unknown> => ({
    msgsPerSecond: sig(median(rates(side)), 4),
    mbPerSecond: sig((median(rates(side)) * o.consumeBodyBytes) / 1e6, 4),
    perRoundMsgsPerSecond: rates(side).map((x) => sig(x, 4)),
    clientBusy: results[side].map((r) => r.clientBusy),
    brokerBusy: results[side].map((r) => r.brokerBusy),
  });
  for (const side of ['next', 'batch'] as const) {
    emit({
      name: 'consume',
      api: apis[side],
      bodyBytes: o.consumeBodyBytes,
      backlogMessages: total,
      prefetchMessages,
      prefetchBytes,
      ...summary(side),
      wire: summary('wire'),
      engine: summary('engine'),
      ratioVsWire: ratio(side, 'wire'),
      ratioVsEngine: ratio(side, 'engine'),
    });
  }
  await broker.call({ cmd: 'deleteTopic', topic });
  return [
    { api: apis.next, rates: rates('next') },
    { api: apis.batch, rates: rates('batch') },
  ];
}

/**
 * A new group reads the whole backlog through the SDK, with next() or (batch > 0) with
 * nextBatch(batch); seconds from subscribe to the last message.
 */
export async function sdkRound(url: string, topic: string, group: string, total: number, batch = 0): Promise<number> {
  const client = await connect(url, { clientName: 'bench-consumer' });
  try {
    const t0 = now();
    const consumer = await client.consumer({ topic, group, start: 'earliest', prefetchMessages, prefetchBytes });
    let count = 0;
    while (count < total) {
      if (batch > 0) {
        const messages = await consumer.nextBatch(batch);
        if (messages.length === 0) throw new Error(`consumer ended after ${count} messages`);
        count += messages.length;
      } else {
        const r = await consumer.next();
        if (r.done) throw new Error(`consumer ended after ${count} messages`);
        count++;
      }
    }
    const seconds = (now() - t0) / 1000;
    await consumer.close();
    return seconds;
  } finally {
    client.close();
  }
}

/** The same subscription without the SDK's decoding: counts records per push, returns credit. */
async function wireRound(url: string, topic: string, total: number): Promise<number> {
  const connection = await Connection.open(url, { clientName: 'bench-wire' });
  try {
    const subscription = connection.takeSubscriptionId();
    let count = 0;
    let owedMessages = 0;
    let owedBytes = 0;
    const t0 = now();
    const done = new Promise<number>((resolve, reject) => {
      connection.onPush(subscription, (frame) => {
        const push = frame.push;
        if (!push) return reject(new Error('unexpected push kind'));
        if ((push.needMessages ?? 0) > 0 || (push.needBytes ?? 0) > 0) {
          connection.request({ credit: { subscription, messages: push.needMessages ?? 0, bytes: push.needBytes ?? 0 } }).catch(() => undefined);
          return;
        }
        const batches = push.batches ?? new Uint8Array(0);
        const n = countRecords(batches);
        count += n;
        owedMessages += n;
        owedBytes += batches.length;
        if (count >= total) return resolve((now() - t0) / 1000);
        // The SDK returns credit per quarter window as messages are taken; here they are taken at once.
        if (owedMessages >= prefetchMessages / 4 || owedBytes >= prefetchBytes / 4) {
          // A credit still in flight when the round ends is rejected by close(): nothing to do.
          connection.request({ credit: { subscription, messages: owedMessages, bytes: owedBytes } }).catch(() => undefined);
          owedMessages = 0;
          owedBytes = 0;
        }
      });
    });
    await connection.request({ subscribe: { topic, group: 'bench-wire', start: 'earliest', creditMessages: prefetchMessages, creditBytes: prefetchBytes, subscription } });
    return await done;
  } finally {
    connection.close();
  }
}
