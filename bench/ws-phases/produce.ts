/**
 * Produce phase of bench/ws.ts: one SDK producer on one connection sends N messages of one
 * body size to a one-channel topic; a message counts when the broker has acknowledged it
 * (sync "batch": after fdatasync). Next to it, in the same round:
 *
 *   engine  store.appendBatch in the broker process of batches of the same size and count,
 *           encoded as the producer encodes them, as many in flight as the producer keeps
 *           (16): what the broker's storage can take with no network, protocol or SDK in
 *           front of it. The ratio sdk ÷ engine is the share of the storage ceiling that a
 *           remote producer gets — the headline ratio.
 *   echo    the same produce frames (same batch bytes, same 16 in flight) sent with the `ws`
 *           package to a bare µWS server in the broker process that answers each with 16
 *           bytes: the transport ceiling, with no storage behind it.
 *
 * Bodies are random bytes (lz4 gains nothing), 1,024 distinct ones back to back in memory,
 * handed out in turn (bodyRing in shared.ts says why). The driver keeps one to two windows of
 * 8,000 messages outstanding: after each window it awaits the last promise of the window
 * before; with sendBatch it hands over arrays of 1,000 messages, 8 arrays a window. That is
 * several times what keeps the pipe full (an acknowledgement takes 1-2 ms, ~2,000 messages at
 * 1M msg/s); a deeper window only keeps more messages, promises and results alive across
 * the client's scavenges (16,000: send() 100 B ran 0.6-0.7x as fast; see BENCHMARKS.md).
 *
 * Rounds alternate the order of the sides so that noise does not land on one side only.
 */
import { WebSocket } from 'ws';
import { connect, type OutgoingMessage } from '../../sdk/index';
import { encodeFrame } from '../../protocol/frames';
import { emit, median, now, progress, sig } from '../common';
import { bodyRing, brokerBusy, CpuClock, makeBatches, settle, type BrokerChild, type Options } from './shared';

export interface ProduceFigures {
  api: string;
  bodyBytes: number;
  msgsPerSecond: number[];
  mbPerSecond: number[];
}

const batchMessages = 1000; // the producer's default batchMessagesMax
const producerInFlight = 16; // the producer's default inflightBatchesMax

type Side = 'sdk' | 'sdkBatch' | 'engine' | 'echo';

interface SideResult {
  seconds: number;
  messages: number;
  clientBusy?: number;
  brokerBusy?: number;
}

export async function producePhase(o: Options, broker: BrokerChild): Promise<ProduceFigures[]> {
  const out: ProduceFigures[] = [];
  const echo = (await broker.call({ cmd: 'echoStart' })) as { port: number };
  for (const bodyBytes of o.bodySizes) {
    const messages = Math.max(batchMessages, Math.round((bodyBytes >= 1024 ? o.produceMessages / 5 : o.produceMessages) / batchMessages) * batchMessages);
    const sides: Side[] = ['sdk', ...(o.sendBatchMessages > 0 ? (['sdkBatch'] as Side[]) : []), 'engine', 'echo'];
    const results: Record<Side, SideResult[]> = { sdk: [], sdkBatch: [], engine: [], echo: [] };
    const frames = makeBatches(64, batchMessages, bodyBytes, o.compression).map((batch, i) => encodeFrame({ id: i + 1, produce: { topic: 'echo', channel: 0, batch } }));
    const bodyPool = bodyRing(bodyBytes);
    for (let round = 0; round < o.rounds; round++) {
      const order = round % 2 === 0 ? sides : [...sides].reverse();
      for (const side of order) {
        const topic = `produce-${bodyBytes}-${side}-${round}`;
        const admin = await connect(broker.url, { clientName: 'bench-admin' });
        await admin.admin.createTopic(topic, { channels: 1 });
        admin.close();
        await broker.call({ cmd: 'gc' });
        settle();
        progress(`produce ${bodyBytes} B round ${round + 1}/${o.rounds}: ${side}, ${messages.toLocaleString('en')} messages`);
        let r: SideResult;
        if (side === 'engine') {
          const { result, brokerBusy: busy } = await brokerBusy(broker, () =>
            broker.call({ cmd: 'engineAppend', topic, batchCount: messages / batchMessages, batchMessages, bodyBytes, compression: o.compression, inFlight: producerInFlight }),
          );
          r = { seconds: result.seconds as number, messages: result.messages as number, brokerBusy: busy };
        } else if (side === 'echo') {
          const clock = new CpuClock();
          const { result, brokerBusy: busy } = await brokerBusy(broker, () => echoRound(echo.port, frames, messages / batchMessages));
          r = { seconds: result, messages, clientBusy: clock.busy().busy, brokerBusy: busy };
        } else {
          const clock = new CpuClock();
          const { result, brokerBusy: busy } = await brokerBusy(broker, () => sdkRound(broker.url, topic, bodyPool, messages, o, side === 'sdkBatch'));
          r = { seconds: result, messages, clientBusy: clock.busy().busy, brokerBusy: busy };
        }
        results[side].push(r);
        await broker.call({ cmd: 'deleteTopic', topic });
      }
    }
    // A ratio is the median over rounds of (sdk rate ÷ baseline rate in the same round).
    const summary = (side: Side): Record<string, unknown> | null => {
      const rs = results[side];
      if (rs.length === 0) return null;
      const rates = rs.map((x) => x.messages / x.seconds);
      const perRound = rates.map((x) => sig(x, 4));
      return {
        msgsPerSecond: sig(median(rates), 4),
        mbPerSecond: sig((median(rates) * bodyBytes) / 1e6, 4),
        perRoundMsgsPerSecond: perRound,
        clientBusy: rs[0]!.clientBusy === undefined ? undefined : rs.map((x) => x.clientBusy),
        brokerBusy: rs.map((x) => x.brokerBusy),
      };
    };
    const ratio = (a: Side, b: Side): number => sig(median(results[a].map((x, i) => x.messages / x.seconds / (results[b][i]!.messages / results[b][i]!.seconds))), 3);
    for (const side of ['sdk', 'sdkBatch'] as const) {
      if (results[side].length === 0) continue;
      const s = summary(side)!;
      const api = side === 'sdk' ? 'producer.send' : `producer.sendBatch(${o.sendBatchMessages})`;
      emit({
        name: 'produce',
        api,
        bodyBytes,
        messagesPerRound: messages,
        compression: o.compression,
        ...s,
        engine: summary('engine'),
        echo: summary('echo'),
        ratioVsEngine: ratio(side, 'engine'),
        ratioVsEcho: ratio(side, 'echo'),
      });
      const rates = results[side].map((x) => x.messages / x.seconds);
      out.push({ api, bodyBytes, msgsPerSecond: rates, mbPerSecond: rates.map((x) => (x * bodyBytes) / 1e6) });
    }
  }
  return out;
}

/** One SDK producer sends `messages` bodies; resolves with the seconds until the last ack. */
export async function sdkRound(url: string, topic: string, bodyPool: Uint8Array[], messages: number, o: Options, batchApi: boolean): Promise<number> {
  const client = await connect(url, { clientName: 'bench-producer' });
  try {
    const producer = await client.producer({ topic, compression: o.compression });
    const window = o.sendWindowMessages;
    const t0 = now();
    let previous: Promise<unknown> | null = null;
    if (batchApi) {
      // sendBatch: the caller hands over arrays of messages, one promise per array.
      const size = o.sendBatchMessages;
      const perWindow = Math.max(1, Math.round(window / size));
      let arrays = 0;
      for (let i = 0; i < messages; ) {
        const n = Math.min(size, messages - i);
        const batch: OutgoingMessage[] = new Array(n);
        for (let j = 0; j < n; j++) batch[j] = { body: bodyPool[(i + j) % bodyPool.length]! };
        const p = producer.sendBatch(batch);
        i += n;
        if (++arrays % perWindow === 0) {
          if (previous) await previous;
          previous = p;
        }
      }
    } else {
      // send(): one promise per message; wait for the window before last so that about two
      // windows are in the producer at any time (its own bound is bufferedBytesMax).
      for (let i = 0; i < messages; i++) {
        const p = producer.send({ body: bodyPool[i % bodyPool.length]! });
        if ((i + 1) % window === 0) {
          if (previous) await previous;
          previous = p;
        }
      }
    }
    await producer.flush();
    const seconds = (now() - t0) / 1000;
    await producer.close();
    return seconds;
  } finally {
    client.close();
  }
}

/** The transport ceiling: the same produce frames, `producerInFlight` at a time, to a bare µWS echo. */
async function echoRound(port: number, frames: Uint8Array[], count: number): Promise<number> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/echo`, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
  ws.binaryType = 'nodebuffer';
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  try {
    return await new Promise<number>((resolve) => {
      let sent = 0;
      let acked = 0;
      const t0 = now();
      const fill = (): void => {
        while (sent < count && sent - acked < producerInFlight) ws.send(frames[sent++ % frames.length]!, { binary: true });
      };
      ws.on('message', () => {
        acked++;
        if (acked === count) resolve((now() - t0) / 1000);
        else fill();
      });
      fill();
    });
  } finally {
    ws.close();
  }
}

