/**
 * The Waymark SDK — the only door users use (`import { connect } from 'waymark'`).
 * Runs in Node (transport: the ws package) and in browsers (global WebSocket; no lz4).
 */
import { Connection, connectOptionNames, type ConnectOptions } from './client';
import { Admin } from './admin';
import { Consumer, type ConsumerOptions } from './consumer';
import { MsgStream } from './msg-stream';
import { checkKnown } from './options';
import { checkProducerOptions, Producer, type ProducerOptions } from './producer';

export class Client {
  readonly admin: Admin;

  constructor(private readonly connection: Connection) {
    this.admin = new Admin(connection);
  }

  get url(): string {
    return this.connection.url;
  }

  /** A batching, pipelining, idempotent producer for one topic. */
  async producer(options: ProducerOptions): Promise<Producer> {
    checkProducerOptions(options); // before the topic is looked up: producer() threw a TypeError
    const info = await this.admin.describeTopic(options.topic);
    return new Producer(this.connection, options, info.channels, info.createdAt);
  }

  /** A stream-group consumer, subscribed and ready to iterate. */
  async consumer(options: ConsumerOptions): Promise<Consumer> {
    const consumer = new Consumer(this.connection, options);
    await consumer.start();
    return consumer;
  }

  /** A Milvus-shaped message stream (AsProducer / AsConsumer / Produce / Broadcast / Seek, packs). */
  msgStream(): MsgStream {
    return new MsgStream(this.connection);
  }

  /** Listens for connection events: "disconnect" and "reconnect". */
  on(event: 'reconnect' | 'disconnect' | 'close', listener: () => void): () => void {
    return this.connection.on(event, listener);
  }

  close(): void {
    this.connection.close();
  }
}

/** Connects to a broker, e.g. connect('ws://127.0.0.1:7070/v1/ws'). */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Client> {
  checkKnown('connect', options, connectOptionNames);
  return new Client(await Connection.open(url, options));
}

export { Producer, Consumer, MsgStream, Admin };
export type { ConnectOptions, ProducerOptions, ConsumerOptions };
export type { OutgoingMessage, SendResult } from './producer';
export type { StartAt } from './consumer';
export type { Message } from './messages';
export type { MsgPack, MsgPosition, RepackFunc, AsConsumerOptions } from './msg-stream';
export type { TopicDescription, CreateTopicOptions } from './admin';
export { WaymarkError, ErrorTable, type ErrorCode } from '../protocol/errors';
export { channelForKey } from '../engine/format/repack';
