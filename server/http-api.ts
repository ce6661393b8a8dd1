/**
 * The HTTP API (DESIGN §1), served by µWS on the same port as the WebSocket endpoint.
 * JSON in and out; errors are {"error": {"code", "message"}} with the status from the error
 * table. A µWS request object is only valid until the handler returns, so every header,
 * parameter and query value is read before the first await.
 */
import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js';
import { channelForKey, msgIdFromHex, MsgIdGenerator, WaymarkError, encodeBatch, lz4Codec, formatLimits, limits, type StoredMessage, type Header } from '../engine/index';
import { describeType } from '../engine/format/record-batch';
import { shown } from '../engine/format/errors';
import { ErrorTable } from '../protocol/errors';
import { toWaymarkError } from '../protocol/frames';
import type { Broker } from './broker';

interface Reply {
  status: number;
  body: string;
  contentType?: string;
  /** Set on error replies (for the errors-by-code metric). */
  errorCode?: string;
}

const json = (value: unknown, status = 200): Reply => ({ status, body: JSON.stringify(value) });
const statusText: Record<number, string> = { 200: 'OK', 201: 'Created', 400: 'Bad Request', 404: 'Not Found', 409: 'Conflict', 413: 'Payload Too Large', 416: 'Range Not Satisfiable', 429: 'Too Many Requests', 500: 'Internal Server Error', 501: 'Not Implemented', 503: 'Service Unavailable' };

export interface HttpContext {
  broker: Broker;
  /** True once the broker is shutting down: /healthz says so, and every reply closes its connection. */
  isClosing: () => boolean;
  /** Extra metrics text (lag gauges etc.) appended to /metrics. */
  metricsExtra: (out: string[]) => void;
}

/** Methods counted by name in /metrics; any other (a client may send anything) counts as OTHER. */
const knownMethods = new Set(['GET', 'HEAD', 'PUT', 'POST', 'DELETE', 'PATCH', 'OPTIONS']);

/** The query of a request without one (routes only read it). */
const noQuery = new URLSearchParams();
/** A % not followed by two hex digits. */
const malformedEscape = /%(?![0-9A-Fa-f]{2})/;

/**
 * A request with Content-Length more than once: its body's length is ambiguous.
 * µWebSockets.js takes the first, so the rest of the body was read as a second request on
 * the connection — a request smuggled past a proxy that took the other length (RFC 9112
 * §6.3: refuse it and close the connection). µWS closes one with Content-Length and
 * Transfer-Encoding itself.
 */
function lengthTwice(req: HttpRequest): boolean {
  let lengths = 0;
  req.forEach((k) => void (k === 'content-length' && lengths++));
  return lengths > 1;
}

/**
 * A request with an ambiguous body length: the connection is closed at once, without an
 * answer, as µWebSockets.js does itself. (An answer first does not do: µWS goes on parsing
 * what the connection already sent after it, the hidden request included, and a response
 * ended cannot be closed.) Counted as a 400 BAD_REQUEST in /metrics.
 */
function refuseAmbiguous(res: HttpResponse, ctx: HttpContext, methodLabel: string, pattern: string): void {
  ctx.broker.metrics.httpRequests.inc([methodLabel, pattern, 400]);
  ctx.broker.metrics.errors.inc(['BAD_REQUEST']);
  res.close();
}

/** Serves one route: reads what it needs from req synchronously, then runs `work`. */
function route(
  app: TemplatedApp,
  method: 'get' | 'head' | 'put' | 'post' | 'del',
  pattern: string,
  ctx: HttpContext,
  work: (input: { params: string[]; query: URLSearchParams; headers: Map<string, string>; body: Promise<Buffer> }) => Promise<Reply> | Reply,
  options: { readBody?: boolean } = {},
): void {
  const paramCount = (pattern.match(/:/g) ?? []).length;
  const methodLabel = method === 'del' ? 'DELETE' : method.toUpperCase();
  const queryAllowed = queryNames[`${methodLabel} ${pattern}`];
  app[method](pattern, (res: HttpResponse, req: HttpRequest) => {
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    const params: string[] = new Array(paramCount);
    let badParameter: string | null = null;
    for (let i = 0; i < paramCount; i++) {
      const raw = req.getParameter(i) ?? '';
      try {
        params[i] = raw.includes('%') ? decodeURIComponent(raw) : raw; // nothing to decode: skip the call
      } catch {
        badParameter = raw; // a malformed %-escape: answered below, never thrown out of the handler
        params[i] = raw;
      }
    }
    const rawQuery = req.getQuery();
    const query = rawQuery ? new URLSearchParams(rawQuery) : noQuery;
    // URLSearchParams keeps a malformed %-escape as its text: `?key=%ZZ` stored the key "%ZZ".
    const badQuery = rawQuery && queryAllowed && malformedEscape.test(rawQuery) ? rawQuery : null;
    // Routes that take any query (/healthz, /metrics) read none of it: nothing in it is refused
    // (a repeated name was 400 there, a malformed escape 200).
    const repeated = rawQuery && queryAllowed ? repeatedName(query) : null;
    const unknown = rawQuery && queryAllowed ? unknownName(query, queryAllowed) : null;
    const headers = new Map<string, string>();
    let repeatedHeader: string | null = null;
    let lengthRepeated = false;
    req.forEach((k, v) => {
      if (headers.has(k)) {
        if (k === 'content-length') lengthRepeated = true;
        else if (k.startsWith('waymark-') || k === 'traceparent') repeatedHeader ??= k;
      }
      headers.set(k, v);
    });
    if (lengthRepeated) return refuseAmbiguous(res, ctx, methodLabel, pattern); // as lengthTwice, in the one pass over the headers
    const body = options.readBody ? readBody(res, formatLimits.messageBytesMax) : Promise.resolve(Buffer.alloc(0));
    body.catch(() => undefined); // an aborted or oversized body is answered below
    Promise.resolve()
      .then(() => {
        if (badParameter !== null) throw new WaymarkError('BAD_REQUEST', `malformed %-escape in the path: ${JSON.stringify(badParameter)}`);
        if (badQuery !== null) throw new WaymarkError('BAD_REQUEST', `malformed %-escape in the query: ${JSON.stringify(badQuery)} (a literal % is %25)`);
        // Refused before the route runs, so nothing is stored or changed (see repeatedName).
        if (repeated !== null) throw new WaymarkError('INVALID_ARGUMENT', `query parameter ${JSON.stringify(repeated)} is given more than once; give it once`);
        if (unknown !== null) {
          const takes = queryAllowed!.length > 0 ? `this route takes ${queryAllowed!.join(', ')}` : 'this route takes none';
          throw new WaymarkError('INVALID_ARGUMENT', `unknown query parameter ${JSON.stringify(unknown)} (${takes})`);
        }
        if (repeatedHeader !== null) throw new WaymarkError('INVALID_ARGUMENT', `header ${repeatedHeader} is given more than once; give it once`);
        return work({ params, query, headers, body });
      })
      .catch((err) => errorReply(ctx.broker.clientError(err)))
      .then((reply) => {
        ctx.broker.metrics.httpRequests.inc([methodLabel, pattern, reply.status]);
        if (reply.errorCode) ctx.broker.metrics.errors.inc([reply.errorCode]);
        if (aborted) return;
        res.cork(() => {
          res.writeStatus(`${reply.status} ${statusText[reply.status] ?? ''}`.trim());
          res.writeHeader('content-type', reply.contentType ?? 'application/json');
          // While shutting down a keep-alive client is told to go (it kept a stopping broker busy for good).
          endReply(res, method === 'head', reply.body, ctx.isClosing());
        });
      });
  });
}

/**
 * Ends a reply; to a HEAD request without its body but with the length a GET's would have: a
 * body after a HEAD reply is read as the start of the next reply on that connection. The
 * length is written as a header: µWS 20.30's endWithoutBody(length) aborts the process when
 * called from a handler that did not wait, and closes the connection when it did; given
 * `undefined` it reports a length of 2^63.
 */
function endReply(res: HttpResponse, head: boolean, body: string, close: boolean): void {
  if (!head) {
    res.end(body, close);
    return;
  }
  res.writeHeader('content-length', String(Buffer.byteLength(body)));
  if (close) res.writeHeader('connection', 'close'); // (endWithoutBody's own flag needs a length)
  res.endWithoutBody();
}

/**
 * The query parameters each route reads (README's table). Any other name is refused: a
 * misspelt `?ofset=5` read from the channel's start in silence. Routes not listed here
 * (/healthz, /metrics) take any, and read none: probes and scrapers may add their own.
 */
const queryNames: Record<string, readonly string[]> = {
  'GET /v1/topics': [],
  'GET /v1/topics/:topic': [],
  'PUT /v1/topics/:topic': [],
  'DELETE /v1/topics/:topic': [],
  'POST /v1/topics/:topic/messages': ['key'],
  'GET /v1/topics/:topic/messages': ['channel', 'offset', 'max', 'encoding'],
  'GET /v1/messages/:msgId': ['topic', 'encoding'],
  'GET /v1/topics/:topic/keys/:key': ['limit', 'from', 'to', 'encoding'],
};

function unknownName(query: URLSearchParams, allowed: readonly string[]): string | null {
  for (const name of query.keys()) if (!allowed.includes(name)) return name;
  return null;
}

/**
 * The first query parameter name that occurs more than once, or null. No route takes a
 * parameter twice, and URLSearchParams.get() silently took the first of them: `?key=a&key=b`
 * stored the message under key a, `?from=1&from=2` looked from 1. The broker cannot tell
 * which one the client meant, so such a request is refused — any name, since one rule is
 * easier to rely on than a list per route.
 */
function repeatedName(query: URLSearchParams): string | null {
  const seen = new Set<string>();
  for (const name of query.keys()) {
    if (seen.has(name)) return name;
    seen.add(name);
  }
  return null;
}

function errorReply(err: unknown): Reply {
  const typed = toWaymarkError(err);
  return { ...json({ error: { code: typed.code, message: typed.message } }, ErrorTable[typed.code].http), errorCode: typed.code };
}

/** Collects a request body up to `bytesMax`; past it, rejects with MESSAGE_TOO_LARGE. */
function readBody(res: HttpResponse, bytesMax: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    res.onData((chunk, isLast) => {
      if (failed) return;
      size += chunk.byteLength;
      if (size > bytesMax) {
        failed = true;
        reject(new WaymarkError('MESSAGE_TOO_LARGE', `the body is over ${bytesMax} bytes`));
        return;
      }
      chunks.push(Buffer.from(chunk.slice(0))); // µWS reuses the chunk's memory
      if (isLast) resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
    });
  });
}

export function messageJson(m: StoredMessage, encoding: string): Record<string, unknown> {
  return {
    topic: m.topic,
    channel: m.channel,
    offset: m.offset,
    msgId: m.msgId,
    key: m.key,
    headers: Object.fromEntries(m.headers.map((h: Header) => [h.name, Buffer.from(h.value).toString('utf8')])),
    ...(encoding === 'base64' ? { bodyBase64: m.body.toString('base64') } : { body: m.body.toString('utf8') }),
    timestamp: m.timestamp,
    brokerTimestamp: m.brokerTimestamp,
    ...(m.deliverAt !== null ? { deliverAt: m.deliverAt } : {}),
  };
}

function intParam(value: string | null, name: string, fallback?: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (value === null) {
    if (fallback !== undefined) return fallback;
    throw new WaymarkError('INVALID_ARGUMENT', `${name} is required`);
  }
  if (value === '') throw emptyParam(name);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value)) || Number(value) < min || Number(value) > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `from ${min} to ${max}`;
    throw new WaymarkError('INVALID_ARGUMENT', `${name} must be a whole number ${range}, not ${JSON.stringify(value)}`);
  }
  return Number(value);
}

/** A parameter (`?name=`, a header) given with nothing in it: a client's bug (an unset variable), not a request for the default. */
function emptyParam(name: string): WaymarkError {
  return new WaymarkError('INVALID_ARGUMENT', `${name} is empty; give a value or leave it out`);
}

/** Messages one GET of /v1/topics/T/messages returns at most (`max`, documented as 1–10,000). */
const readMessagesMax = 10_000;

/** Bytes of bodies one read or key lookup returns at most (at least one message). */
const readBytesMax = 8 * 1024 * 1024;

/** The first messages whose bodies add up to at most `bytes` (always the first one). */
function withinBodyBytes<M extends { body: Uint8Array }>(messages: M[], bytes: number): M[] {
  let total = 0;
  for (let i = 0; i < messages.length; i++) {
    total += messages[i]!.body.length;
    if (i > 0 && total > bytes) return messages.slice(0, i);
  }
  return messages;
}

/**
 * A header the API reads, or null when it is absent.
 *
 * µWebSockets.js (20.30) gives header values to JS decoded as UTF-8, but its parser first
 * trims "whitespace" off both ends with a signed-char test (`c < 33`), which also takes every
 * byte ≥ 0x80 there: `waymark-key: ключ` arrives as "" and `ключ-1` as "-1" (checked with raw
 * requests; Bun fixed its copy of the parser, oven-sh/bun#27269). What reaches us of a
 * non-ASCII value may have lost bytes, and nothing tells how many, so such a value is refused:
 * one with non-ASCII characters left (from its middle; U+FFFD stands for bytes that are not
 * UTF-8), and an empty one (what a value of only non-ASCII bytes becomes). A value whose
 * non-ASCII bytes were all at its ends arrives as plain ASCII and cannot be caught here: the
 * README says to send a non-ASCII key as `?key=` (the query is not trimmed).
 */
function headerValue(headers: Map<string, string>, name: string): string | null {
  const value = headers.get(name);
  if (value === undefined) return null;
  if (value === '') throw new WaymarkError('INVALID_ARGUMENT', `header ${name} is empty (a value of only non-ASCII bytes arrives empty; send a non-ASCII key as ?key=<percent-encoded UTF-8>)`);
  if (!/^[\t\x20-\x7e]*$/.test(value)) {
    throw new WaymarkError('INVALID_ARGUMENT', `header ${name} must be ASCII: non-ASCII bytes at the start or end of a header value are lost on the way in; send a non-ASCII key as ?key=<percent-encoded UTF-8>`);
  }
  return value;
}

/** The `waymark-*` headers POST /v1/topics/T/messages takes; any other is refused. */
const produceHeaders = ['waymark-key', 'waymark-channel', 'waymark-msg-id', 'waymark-deliver-at', 'waymark-delay-ms'];

/** The message key: the `waymark-key` header (ASCII) or `?key=` (percent-encoded UTF-8), not both. */
function keyOf(headers: Map<string, string>, query: URLSearchParams): string | null {
  const fromHeader = headerValue(headers, 'waymark-key');
  const fromQuery = query.get('key');
  if (fromQuery === null) return fromHeader;
  if (fromHeader !== null) throw new WaymarkError('INVALID_ARGUMENT', 'give the key once: the waymark-key header or ?key=, not both');
  if (fromQuery === '') throw emptyParam('key');
  // URLSearchParams decodes a %-escape that is not UTF-8 as U+FFFD rather than failing.
  if (fromQuery.includes('\uFFFD')) throw new WaymarkError('INVALID_ARGUMENT', '?key= is not percent-encoded UTF-8');
  return fromQuery;
}

/** `?encoding=`: how bodies are put in JSON, utf8 (default) or base64. */
function encodingParam(query: URLSearchParams): 'utf8' | 'base64' {
  const value = query.get('encoding') ?? 'utf8';
  if (value !== 'utf8' && value !== 'base64') throw new WaymarkError('INVALID_ARGUMENT', `encoding must be utf8 or base64, not ${JSON.stringify(value)}`);
  return value;
}

function parseJsonBody(body: Buffer): Record<string, unknown> {
  if (body.length === 0) return {};
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new WaymarkError('BAD_REQUEST', `the body is not valid JSON: ${(err as Error).message}`);
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new WaymarkError('BAD_REQUEST', `the body must be a JSON object, not ${describeType(value)}`);
  const twice = repeatedTopLevelKey(body.toString('utf8'));
  // As a query parameter or header given twice is: JSON.parse kept the last ({"channels": 1, "channels": 3} made 3; helper-50).
  if (twice !== null) throw new WaymarkError('INVALID_ARGUMENT', `field ${JSON.stringify(twice)} is given twice`);
  return value as Record<string, unknown>;
}

/** The first key the top-level object of `json` (valid JSON, an object) has twice, or null. */
function repeatedTopLevelKey(json: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    if (c === '"') {
      let end = i + 1;
      while (json[end] !== '"') end += json[end] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        const key = JSON.parse(json.slice(i, end + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
        expectKey = false;
      }
      i = end;
    } else if (c === '{' || c === '[') {
      depth++;
      expectKey = c === '{' && depth === 1;
    } else if (c === '}' || c === ']') {
      depth--;
    } else if (c === ',' && depth === 1) {
      expectKey = true;
    }
  }
  return null;
}

/** The fields a topic is created with (PUT /v1/topics/T); any other is refused: `{"chanels": 2}` made a one-channel topic. */
const topicFields = ['channels', 'retentionMs', 'retentionBytes', 'owner'];

/** W3C traceparent: version-traceid-parentid-flags; the trace id is indexed as `traceid`. */
function traceIdOf(traceparent: string): string | null {
  const m = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(traceparent.trim());
  return m ? m[1]! : null;
}

export function installHttpApi(app: TemplatedApp, ctx: HttpContext): void {
  const { broker } = ctx;
  const store = broker.store;
  const ids = new MsgIdGenerator();

  // A failed channel (sticky until restart) makes the broker "degraded", still 200: it serves
  // every other channel and the failed one's reads, and a probe that restarted it on a full
  // disk would only cut every client off, again and again.
  const health = (): Reply => {
    if (ctx.isClosing()) return json({ status: 'shutting down' }, 503);
    const failedChannels = store
      .channelHealth()
      .filter((h) => h.failed !== null)
      .map((h) => ({ topic: h.topic, channel: h.channel, error: h.failed }));
    return json(failedChannels.length > 0 ? { status: 'degraded', failedChannels } : { status: 'ok' });
  };
  route(app, 'get', '/healthz', ctx, health);
  route(app, 'head', '/healthz', ctx, health); // load balancers probe with HEAD too
  // Never waits: until the start-up pass over __groups is done (waymark_group_positions_loaded 0), lag rows cover the groups used since.
  route(app, 'get', '/metrics', ctx, () => ({ status: 200, body: broker.metrics.render(ctx.metricsExtra), contentType: 'text/plain; version=0.0.4' }));

  route(app, 'get', '/v1/topics', ctx, () => json({ topics: store.listTopics().filter((t) => !t.name.startsWith('__')) }));
  route(app, 'get', '/v1/topics/:topic', ctx, ({ params }) => json(describe(params[0]!)));
  route(
    app,
    'put',
    '/v1/topics/:topic',
    ctx,
    async ({ params, body }) => {
      const config = parseJsonBody(await body);
      const unknownField = Object.keys(config).find((k) => !topicFields.includes(k));
      if (unknownField !== undefined) throw new WaymarkError('INVALID_ARGUMENT', `unknown field ${JSON.stringify(unknownField)} (a topic takes ${topicFields.join(', ')})`);
      const info = await store.createTopic(params[0]!, {
        channels: config.channels === undefined ? 1 : (config.channels as number),
        retentionMs: config.retentionMs as number | undefined,
        retentionBytes: config.retentionBytes as number | undefined,
        owner: config.owner as string | undefined, // checked by the store: a string or absent
      });
      return json(describe(info.name), 201); // the shape GET /v1/topics/T answers (it lacked segmentBytes and segmentMs)
    },
    { readBody: true },
  );
  route(app, 'del', '/v1/topics/:topic', ctx, async ({ params }) => {
    const name = params[0]!;
    if (name.startsWith('__')) throw new WaymarkError('INVALID_NAME', `system topic ${name} cannot be deleted`);
    await store.deleteTopic(name);
    broker.forgetTopic(name);
    return json({ deleted: name });
  });

  route(
    app,
    'post',
    '/v1/topics/:topic/messages',
    ctx,
    async ({ params, query, headers, body }) => {
      const topic = params[0]!;
      if (topic.startsWith('__')) throw new WaymarkError('INVALID_NAME', `system topic ${topic} is written by the broker only`);
      // A misspelt one (`waymark-chanel: 3`) was ignored: the message went elsewhere, with 200.
      for (const name of headers.keys()) {
        if (name.startsWith('waymark-') && !produceHeaders.includes(name)) {
          throw new WaymarkError('INVALID_ARGUMENT', `unknown header ${shown(name)} (this route takes ${produceHeaders.join(', ')})`);
        }
      }
      if (headers.has('waymark-deliver-at') || headers.has('waymark-delay-ms')) {
        throw new WaymarkError('UNSUPPORTED', 'scheduled delivery (waymark-deliver-at / waymark-delay-ms) is not available on this broker yet');
      }
      const key = keyOf(headers, query);
      const channelHeader = headerValue(headers, 'waymark-channel');
      const explicitChannel = channelHeader !== null ? intParam(channelHeader, 'waymark-channel') : null;
      let msgId: Uint8Array | undefined;
      const msgIdHeader = headerValue(headers, 'waymark-msg-id');
      if (msgIdHeader !== null) {
        msgId = msgIdFromHex(msgIdHeader) ?? undefined;
        if (!msgId) throw new WaymarkError('INVALID_ARGUMENT', 'waymark-msg-id must be 32 hex digits');
      }
      const messageHeaders: Record<string, string> = {};
      const traceparent = headerValue(headers, 'traceparent');
      if (traceparent !== null) {
        const traceId = traceIdOf(traceparent);
        if (!traceId) throw new WaymarkError('INVALID_ARGUMENT', 'traceparent is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)');
        messageHeaders.traceparent = traceparent.trim();
        messageHeaders.traceid = traceId;
      }
      const payload = await body;
      // The topic is looked up, and the message routed, as it is once the body is in: a delete
      // and re-create with fewer channels while a large body uploaded made a keyed message
      // CHANNEL_NOT_FOUND, and a lookup when the headers came raced a create made meanwhile.
      const channels = store.topicInfo(topic).channels;
      if (explicitChannel !== null && explicitChannel >= channels) throw new WaymarkError('CHANNEL_NOT_FOUND', `topic ${topic} has channels 0..${channels - 1}, not ${explicitChannel}`);
      let channel: number;
      if (explicitChannel !== null) channel = explicitChannel;
      else if (key !== null) channel = channelForKey(key, channels);
      else channel = broker.roundRobin(topic, channels);
      const { batch, msgIds } = encodeBatch([{ msgId, key, body: payload, headers: messageHeaders }], { codec: lz4Codec, msgIds: ids });
      const [append] = await broker.produce(topic, channel, batch, false);
      return json({ msgId: Buffer.from(msgIds[0]!).toString('hex'), channel, offset: append!.baseOffset });
    },
    { readBody: true },
  );

  route(app, 'get', '/v1/topics/:topic/messages', ctx, async ({ params, query }) => {
    const topic = params[0]!;
    const channel = intParam(query.get('channel'), 'channel', 0);
    const offset = intParam(query.get('offset'), 'offset', store.channelState(topic, channel).logStartOffset);
    const max = intParam(query.get('max'), 'max', 100, 1, readMessagesMax);
    const encoding = encodingParam(query);
    const state = store.channelState(topic, channel);
    const read = offset >= state.highWatermark && offset === state.highWatermark ? [] : await store.read(topic, channel, { offset, maxMessages: max, maxBytes: readBytesMax });
    // store.read counts stored batch bytes after a first batch it always returns whole (up to
    // 16 MiB): a reply held up to ~24 MiB of bodies. Cut to 8 MiB of bodies, at least one message.
    const messages = withinBodyBytes(read, readBytesMax);
    return json({
      topic,
      channel,
      messages: messages.map((m) => messageJson(m, encoding)),
      nextOffset: messages.length ? messages[messages.length - 1]!.offset + 1 : offset,
      highWatermark: state.highWatermark,
      logStartOffset: state.logStartOffset,
    });
  });

  route(app, 'get', '/v1/messages/:msgId', ctx, async ({ params, query }) => {
    const msgId = params[0]!;
    const wanted = query.get('topic');
    if (wanted === '') throw emptyParam('topic');
    const encoding = encodingParam(query);
    const topics = wanted ? [wanted] : store.listTopics().map((t) => t.name).filter((n) => !n.startsWith('__'));
    for (const topic of topics) {
      const found = await store.lookupMsgId(topic, msgId);
      if (found) return json(messageJson(found, encoding));
    }
    throw new WaymarkError('MESSAGE_NOT_FOUND', `no message ${msgId}${wanted ? ` in topic ${wanted}` : ''}`);
  });

  route(app, 'get', '/v1/topics/:topic/keys/:key', ctx, async ({ params, query }) => {
    const encoding = encodingParam(query);
    const timeFrom = query.get('from') !== null ? intParam(query.get('from'), 'from') : undefined;
    const timeTo = query.get('to') !== null ? intParam(query.get('to'), 'to') : undefined;
    if (timeFrom !== undefined && timeTo !== undefined && timeFrom > timeTo) throw new WaymarkError('INVALID_ARGUMENT', `from ${timeFrom} is after to ${timeTo}`);
    const { messages, truncated } = await store.lookupKeyPage(params[0]!, params[1]!, {
      // Past 1,000 it was cut to 1,000 in silence; a reply holds 8 MiB of bodies at most, as a read does.
      limit: intParam(query.get('limit'), 'limit', 100, 1, limits.lookupResultCountMax),
      maxBytes: readBytesMax,
      timeFrom,
      timeTo,
    });
    // truncated: cut at `limit` or at 8 MiB of bodies; older ones may match (it was silent: helper-59).
    return json({ messages: messages.map((m) => messageJson(m, encoding)), truncated });
  });

  app.any('/*', (res, req) => {
    const url = req.getUrl();
    const method = req.getMethod().toUpperCase();
    if (lengthTwice(req)) return refuseAmbiguous(res, ctx, knownMethods.has(method) ? method : 'OTHER', 'other');
    // NOT_FOUND, not BAD_REQUEST: the status a client sees is the table's for the code it reads.
    const reply = errorReply(new WaymarkError('NOT_FOUND', `no route ${method} ${url}`));
    ctx.broker.metrics.httpRequests.inc([knownMethods.has(method) ? method : 'OTHER', 'other', reply.status]);
    ctx.broker.metrics.errors.inc([reply.errorCode!]);
    res.cork(() => {
      res.writeStatus(`${reply.status} ${statusText[reply.status]}`);
      res.writeHeader('content-type', 'application/json');
      endReply(res, method === 'HEAD', reply.body, ctx.isClosing());
    });
  });

  function describe(topic: string): Record<string, unknown> {
    const info = store.describeTopic(topic);
    const { channelInfo, ...rest } = info;
    return { ...rest, channelStates: channelInfo };
  }
}
