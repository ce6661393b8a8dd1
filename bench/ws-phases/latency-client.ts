/**
 * The latency phase's SDK pass (latency.ts, sdkLatency) in a process of its own, forked by
 * the phase and pinned where the bench's client is. The pass plays one application that
 * produces and consumes 10,000 messages a second; run in the bench process, it inherited a
 * heap shaped by the phases before it — after a 10-million-message consume at 4 M msg/s the
 * young generation had grown, every scavenge took 2-2.5 ms instead of 1-1.5, five times a
 * second, and the pass's p99 was 2.3-2.4 ms against 1.7-2.0 ms run alone (BENCHMARKS.md,
 * session 16).
 *
 * Not a user tool: takes one IPC message {url, topic, params}, answers {result} or {error}.
 */
import { sdkLatency, summarizeSdkLatency, type LatencyParams } from './latency';

process.once('message', (m: { url: string; topic: string; params: LatencyParams }) => {
  sdkLatency(m.url, m.topic, m.params).then(
    (result) => process.send!({ result: summarizeSdkLatency(result, m.params) }, () => process.disconnect()),
    (err: Error) => process.send!({ error: err.stack ?? String(err) }, () => process.disconnect()),
  );
});
