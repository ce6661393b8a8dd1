/**
 * One WebSocket connection: decodes frames, answers every request with exactly one reply
 * (its own kind or an Error with the same id), and owns the connection's subscriptions.
 *
 * Bad input never crashes or stalls the broker: an unparseable frame or a text frame gets an
 * Error with id 0; a reply/push kind sent by the client, a request before Hello, or a
 * request with id 0 gets an Error — and nothing else changes. Oversized frames are closed
 * by µWS itself (maxPayloadLength, close code 1009).
 */
import type { WebSocket } from 'uWebSockets.js';
import { WaymarkError, type TopicInfo } from '../engine/index';
import { clientRequestKinds, decodeFrame, encodeFrame, encodePushFrame, errorFrame, type Frame, type FrameInit, type PushFields, type waymark } from '../protocol/frames';
import { protocolLimits, protocolVersion } from '../protocol/limits';
import { packBeginOf } from '../protocol/positions';
import { formatLimits } from '../engine/format/limits';
import type { Broker, StartKind } from './broker';
import { Subscription } from './subscription';
import { checkGroupName } from './groups';

export interface SessionData {
  session?: Session;
}

const serverName = 'waymark/0.1.0';

/** Where push frames are written on their way to a socket (a push larger than this gets its own). */
const pushScratch = Buffer.allocUnsafe(protocolLimits.pushBytesMax + 64);

export class Session {
  private greeted = false;
  private closed = false;
  private inflight = 0;
  private readonly subscriptions = new Map<number, Subscription>();
  /** Subscribes waiting for their start positions: their ids are taken, and they count against the limit. */
  private readonly opening = new Set<number>();
  /** Waiting for the socket to drain below socketBufferedBytesMax (room). */
  private readonly roomWaiters: Array<() => void> = [];
  /** Fetches are served one at a time, each once the socket has room (serveFetch). */
  private fetches: Promise<void> = Promise.resolve();

  constructor(
    private readonly ws: WebSocket<SessionData>,
    private readonly broker: Broker,
  ) {}

  /** Sends one frame; silently dropped once the socket is gone. */
  send(frame: FrameInit): void {
    if (this.closed) return;
    if (frame.error) this.broker.metrics.errors.inc([frame.error.name ?? 'INTERNAL']);
    this.write(encodeFrame(frame));
  }

  sendPush(fields: PushFields, batches: Uint8Array): void {
    if (this.closed) return;
    // µWS copies what it is given (to the socket or its own buffer): one scratch buffer serves every push.
    this.write(encodePushFrame(fields, batches, pushScratch));
  }

  /**
   * Hands a frame to µWS. Past socketBackpressureBytesMax unsent bytes µWS would drop it
   * (send answers 2), and a dropped reply or push is a silent gap (a consumer skipped
   * messages and committed past them; a request went unanswered): the connection is closed
   * instead, with a reason. Pushes and fetch replies wait for room (writable, room), so only
   * a client that sends requests and does not read their replies gets here.
   */
  private write(bytes: Uint8Array): void {
    // Closed before µWS would drop anything: µWS's own limit is a little higher
    // (server/index.ts), so the close frame still fits behind what waits and the client reads
    // 1008 and the reason once it reads again (closed by µWS's drop, it saw 1006 and nothing).
    if (this.ws.getBufferedAmount() + bytes.byteLength > protocolLimits.socketBackpressureBytesMax) return this.overflow();
    let status = 1;
    this.ws.cork(() => {
      status = this.ws.send(bytes, true);
    });
    if (status === 2) this.overflow();
  }

  private overflow(): void {
    if (this.closed) return;
    this.broker.metrics.errors.inc(['TOO_MANY_REQUESTS']); // as an oversized frame counts MESSAGE_TOO_LARGE
    this.closed = true;
    this.ws.end(1008, `the client left more than ${protocolLimits.socketBackpressureBytesMax} bytes of replies unread`);
  }

  writable(): boolean {
    return !this.closed && this.ws.getBufferedAmount() < protocolLimits.socketBufferedBytesMax;
  }

  /** Resolves once the socket holds less than socketBufferedBytesMax unsent bytes, or is gone. */
  private async room(): Promise<void> {
    while (!this.closed && !this.writable()) await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
  }

  private wakeRoomWaiters(): void {
    for (const resolve of this.roomWaiters.splice(0)) resolve();
  }

  ended(id: number): void {
    this.subscriptions.delete(id);
  }

  counted(delta: 1 | -1): void {
    this.broker.metrics.subscriptions += delta;
  }

  /** µWS drain: the socket has room again. */
  drained(): void {
    this.wakeRoomWaiters();
    for (const s of this.subscriptions.values()) s.kick();
  }

  closedBySocket(): void {
    this.closed = true;
    this.wakeRoomWaiters();
    for (const s of this.subscriptions.values()) s.close();
    this.subscriptions.clear();
  }

  onMessage(message: ArrayBuffer, isBinary: boolean): void {
    if (message.byteLength > protocolLimits.frameBytesMax) {
      this.broker.metrics.frames.inc(['oversized']);
      this.broker.metrics.errors.inc(['MESSAGE_TOO_LARGE']);
      this.closed = true;
      this.ws.end(1009, `frame of ${message.byteLength} bytes is over the ${protocolLimits.frameBytesMax}-byte limit`);
      return;
    }
    if (!isBinary) {
      this.broker.metrics.frames.inc(['text']);
      this.send(errorFrame(0, new WaymarkError('BAD_REQUEST', 'text frames are not part of the protocol; send binary frames')));
      return;
    }
    // µWS reuses `message` after this callback returns: copy once, then views are safe.
    let frame: Frame;
    try {
      frame = decodeFrame(new Uint8Array(message.slice(0)));
    } catch (err) {
      this.broker.metrics.frames.inc(['unparseable']);
      this.send(errorFrame(0, err));
      return;
    }
    const kind = frame.body;
    this.broker.metrics.frames.inc([kind ?? 'empty']);
    const id = frame.id;
    if (!kind || !clientRequestKinds.has(kind)) {
      this.send(errorFrame(id, new WaymarkError('BAD_REQUEST', kind ? `a client may not send ${kind} frames` : 'empty frame')));
      return;
    }
    if (id === 0) {
      this.send(errorFrame(0, new WaymarkError('BAD_REQUEST', 'requests need an id > 0')));
      return;
    }
    if (!this.greeted && kind !== 'hello') {
      this.send(errorFrame(id, new WaymarkError('NOT_READY', 'the first frame of a connection must be hello')));
      return;
    }
    if (this.inflight >= protocolLimits.inflightRequestCountMax) {
      this.send(errorFrame(id, new WaymarkError('TOO_MANY_REQUESTS', `more than ${protocolLimits.inflightRequestCountMax} requests in flight`)));
      return;
    }
    this.inflight++;
    if (kind === 'fetch') {
      const request = frame.fetch as waymark.v1.Fetch;
      this.fetches = this.fetches.then(() => this.serveFetch(id, request));
      return;
    }
    this.handle(frame, kind).then(
      ({ afterSend, ...reply }) => {
        this.inflight--;
        this.send({ id, ...reply });
        afterSend?.();
      },
      (err) => {
        this.inflight--;
        this.send(errorFrame(id, this.broker.clientError(err)));
      },
    );
  }

  // Decoded proto3 messages carry every scalar (defaults on the prototype), so the casts
  // from the generated optional-field types below are exact.
  private async handle(frame: Frame, kind: NonNullable<Frame['body']>): Promise<Reply> {
    const store = this.broker.store;
    switch (kind) {
      case 'hello': {
        const hello = (frame.hello as waymark.v1.Hello);
        if (hello.protocolVersion !== protocolVersion) throw new WaymarkError('UNSUPPORTED_VERSION', `protocol version ${hello.protocolVersion}; this broker speaks ${protocolVersion}`);
        this.greeted = true;
        return { helloOk: { server: serverName, protocolVersion, frameBytesMax: protocolLimits.frameBytesMax, batchBytesMax: formatLimits.batchBytesMax } };
      }
      case 'produce': {
        const p = (frame.produce as waymark.v1.Produce);
        this.broker.sameTopic(p.topic, Number(p.topicCreatedAt ?? 0)); // a producer of a topic since deleted and made again
        const appends = await this.broker.produce(p.topic, p.channel, p.batch, p.broadcast);
        return { produceOk: { appends } };
      }
      case 'subscribe':
        return this.subscribe((frame.subscribe as waymark.v1.Subscribe));
      case 'credit': {
        const c = (frame.credit as waymark.v1.Credit);
        this.subscription(c.subscription).grant(c.messages, c.bytes);
        return { ok: {} };
      }
      case 'commit': {
        const c = (frame.commit as waymark.v1.Commit);
        await this.broker.commit(c.topic, c.group, (c.positions ?? []).map((p) => ({ channel: p.channel ?? 0, offset: p.offset ?? 0, timestamp: p.timestamp ?? 0 })), Number(c.topicCreatedAt ?? 0));
        return { ok: {} };
      }
      case 'seek':
        return this.seek((frame.seek as waymark.v1.Seek));
      case 'unsubscribe': {
        const u = (frame.unsubscribe as waymark.v1.Unsubscribe);
        this.subscription(u.subscription).close();
        this.subscriptions.delete(u.subscription);
        return { ok: {} };
      }
      case 'getPositions': {
        const g = (frame.getPositions as waymark.v1.GetPositions);
        checkGroupName(g.group); // as Commit does: "" and "../x y" answered [], 70,000 bytes KEY_TOO_LARGE
        const info = store.topicInfo(g.topic);
        const positions: waymark.v1.IPosition[] = [];
        for (let channel = 0; channel < info.channels; channel++) {
          const p = await this.broker.groups.get(g.topic, g.group, channel);
          if (p) positions.push(p);
        }
        return { positions: { positions } };
      }
      case 'createTopic': {
        const c = (frame.createTopic as waymark.v1.CreateTopic);
        const info = await store.createTopic(c.topic, { channels: c.channels, retentionMs: c.retentionMs, retentionBytes: c.retentionBytes, owner: c.owner });
        return { topicInfo: topicInfoWire(info, store) };
      }
      case 'deleteTopic': {
        const name = (frame.deleteTopic as waymark.v1.DeleteTopic).topic;
        if (name.startsWith('__')) throw new WaymarkError('INVALID_NAME', `system topic ${name} cannot be deleted`);
        await store.deleteTopic(name);
        this.broker.forgetTopic(name);
        return { ok: {} };
      }
      case 'listTopics':
        return { topicList: { topics: store.listTopics().filter((t) => !t.name.startsWith('__')).map((t) => topicInfoWire(t, null)) } };
      case 'describeTopic':
        return { topicInfo: topicInfoWire(store.topicInfo((frame.describeTopic as waymark.v1.DescribeTopic).topic), store) };
      default:
        throw new WaymarkError('BAD_REQUEST', `unexpected ${kind} frame`);
    }
  }

  /**
   * A fetch reply can be as large as a read (64 MiB): read only once the socket has room, and
   * one fetch at a time, its reply sent before the next one reads — so a client pipelining
   * fetches it reads slowly holds at most one reply past the 8 MiB, instead of one per fetch
   * (past socketBackpressureBytesMax µWS dropped replies: requests went unanswered).
   */
  private async serveFetch(id: number, f: waymark.v1.Fetch): Promise<void> {
    try {
      await this.room();
      if (this.closed) return;
      const store = this.broker.store;
      const read = await store.readBatches(f.topic, f.channel, { offset: f.offset, maxBytes: f.maxBytes || 1024 * 1024 });
      const state = store.channelState(f.topic, f.channel);
      this.send({ id, fetchOk: { channel: f.channel, batches: read.bytes, nextOffset: read.nextOffset, highWatermark: state.highWatermark, logStartOffset: state.logStartOffset } });
    } catch (err) {
      this.send(errorFrame(id, this.broker.clientError(err)));
    } finally {
      this.inflight--;
    }
  }

  private subscription(id: number): Subscription {
    const s = this.subscriptions.get(id);
    if (!s) throw new WaymarkError('SUBSCRIPTION_NOT_FOUND', `no subscription ${id} on this connection`);
    return s;
  }

  private async subscribe(request: waymark.v1.Subscribe): Promise<Reply> {
    const id = request.subscription;
    if (!Number.isInteger(id) || id <= 0) throw new WaymarkError('INVALID_ARGUMENT', 'subscribe needs a subscription id > 0, chosen by the client');
    if (this.subscriptions.has(id) || this.opening.has(id)) throw new WaymarkError('INVALID_ARGUMENT', `subscription id ${id} is already in use on this connection`);
    // Subscribes still looking up their start count too: sent together, each passed the check.
    if (this.subscriptions.size + this.opening.size >= protocolLimits.subscriptionCountMax) {
      throw new WaymarkError('TOO_MANY_REQUESTS', `a connection may hold ${protocolLimits.subscriptionCountMax} subscriptions`);
    }
    this.opening.add(id);
    try {
      return await this.open(request, id);
    } finally {
      this.opening.delete(id);
    }
  }

  private async open(request: waymark.v1.Subscribe, id: number): Promise<Reply> {
    const start = (request.start || 'committed') as StartKind;
    if (!['committed', 'earliest', 'latest'].includes(start)) throw new WaymarkError('INVALID_ARGUMENT', `start must be committed, earliest or latest, not ${start}`);
    if (!['', 'earliest', 'latest'].includes(request.fallback)) throw new WaymarkError('INVALID_ARGUMENT', `fallback must be earliest or latest, not ${request.fallback}`);
    const fallback = request.fallback === 'latest' ? 'latest' : 'earliest';
    this.broker.sameTopic(request.topic, Number(request.topicCreatedAt ?? 0));
    const channels = this.broker.channelsOf(request.topic, request.channels ?? []);
    // The topic the start is looked up in: one deleted and made again meanwhile is another, and
    // a subscription to it at positions found in the old one skipped its first messages
    // without a word (helper-58). The Subscription refuses it (TOPIC_NOT_FOUND).
    const incarnation = this.broker.store.topicIncarnation(request.topic);
    const { positions, byTime, packBeginTs } = await this.broker.startPositions({
      topic: request.topic,
      group: request.group,
      channels,
      start,
      fallback,
      positions: (request.positions ?? []).map((p) => ({ channel: p.channel ?? 0, offset: p.offset ?? 0, timestamp: p.timestamp ?? 0 })),
      startTimestamp: request.startTimestamp,
    });
    // The socket closed while the start was looked up: nothing would ever close a subscription made now.
    if (this.closed) throw new WaymarkError('CONNECTION_LOST', 'the connection closed before the subscription started');
    const subscription = new Subscription(
      {
        id,
        topic: request.topic,
        group: request.group,
        positions,
        creditMessages: request.creditMessages,
        creditBytes: request.creditBytes,
        packs: request.packs,
        tickIntervalMs: request.tickIntervalMs || protocolLimits.tickIntervalMsDefault,
        packBeginTs: request.startTimestamp > 0 ? request.startTimestamp - 1 : packBeginTs,
        byTime: { channels: byTime, timestamp: request.startTimestamp },
        incarnation,
      },
      this.broker.store,
      this,
    );
    this.subscriptions.set(id, subscription);
    // The reply goes out before the first push.
    return {
      subscribeOk: { subscription: id, positions: subscription.currentPositions(), topicCreatedAt: this.broker.store.topicInfo(request.topic).createdAt, packBeginTs: subscription.nextPackBeginTs },
      afterSend: () => subscription.start(),
    };
  }

  /**
   * Seeks of one subscription are applied one after another, in the order they came: a seek
   * to a time looks its offsets up first, and a later seek by positions was applied before it
   * and then undone by it — with the older epoch, so the client dropped every push after as
   * stale and the consumer stalled for good (helper-51).
   */
  private seek(request: waymark.v1.Seek): Promise<FrameInit> {
    const subscription = this.subscription(request.subscription);
    return subscription.inSeekTurn(() => this.seekNow(subscription, request));
  }

  private async seekNow(subscription: Subscription, request: waymark.v1.Seek): Promise<FrameInit> {
    // Queued behind a slower seek, it may find the subscription gone (unsubscribed, or its topic deleted).
    if (subscription.ended) throw new WaymarkError('SUBSCRIPTION_NOT_FOUND', `subscription ${subscription.id} has ended`);
    const offsets = new Map<number, number>();
    // The next pack begins where the seek puts the stream in time: at the asked time, or at 0
    // (as a subscription without a start time does) when positions or "earliest" may go back
    // before the last pack's end — every message of a pack stays inside (beginTs, endTs].
    let packBeginTs: number | undefined;
    let byTime: { timestamp: number; channels?: number[] } | undefined;
    const current = subscription.currentPositions();
    if ((request.positions ?? []).length > 0) {
      for (const p of request.positions) offsets.set(p.channel ?? 0, p.offset ?? 0);
      packBeginTs = packBeginOf(request.positions); // 0 unless every position carries the same time
      if (request.timestamp > 0) {
        // Positions and a time: the channels not named go by the time (a client moving some
        // channels while the others still wait for a time it sought that was ahead).
        const timed: number[] = [];
        for (const { channel } of current) {
          if (offsets.has(channel)) continue;
          offsets.set(channel, await this.broker.store.offsetForTime(subscription.topic, channel, request.timestamp));
          timed.push(channel);
        }
        packBeginTs = Math.min(packBeginTs, request.timestamp - 1);
        byTime = { timestamp: request.timestamp, channels: timed };
      }
    } else if (request.timestamp > 0) {
      for (const { channel } of current) offsets.set(channel, await this.broker.store.offsetForTime(subscription.topic, channel, request.timestamp));
      packBeginTs = request.timestamp - 1;
      byTime = { timestamp: request.timestamp };
    } else if (request.to === 'earliest' || request.to === 'latest') {
      for (const { channel } of current) {
        const state = this.broker.store.channelState(subscription.topic, channel);
        offsets.set(channel, request.to === 'earliest' ? state.logStartOffset : state.highWatermark);
      }
      if (request.to === 'earliest') packBeginTs = 0;
    } else {
      throw new WaymarkError('INVALID_ARGUMENT', 'seek needs positions, a timestamp, or to = earliest|latest');
    }
    subscription.seek(offsets, request.epoch, packBeginTs, byTime);
    return { seekOk: { positions: subscription.currentPositions(), packBeginTs: subscription.nextPackBeginTs } };
  }
}

/** A reply, and what to do once it is on the wire. */
type Reply = FrameInit & { afterSend?: () => void };

export function topicInfoWire(info: TopicInfo, store: Broker['store'] | null): waymark.v1.ITopicInfo {
  return {
    name: info.name,
    channels: info.channels,
    retentionMs: info.retentionMs,
    retentionBytes: info.retentionBytes,
    owner: info.owner,
    createdAt: info.createdAt,
    channelStates: store ? store.describeTopic(info.name).channelInfo : [],
  };
}
