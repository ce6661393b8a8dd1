/**
 * The ceiling of bench/http.ts: a bare uWebSockets.js HTTP server that answers
 * `POST /v1/topics/:topic/messages` with 200 and a small JSON body once it has read the
 * request body — the same µWS, the same route shape and the same body reading as the
 * broker's handler, with no storage, no validation and no JSON work behind it.
 *
 * Not a user tool: started by bench/http.js with fork(); reports {listening: port} over IPC;
 * stops on SIGTERM or when the parent goes away.
 */
import uWS from 'uWebSockets.js';

const reply = JSON.stringify({ msgId: '0'.repeat(32), channel: 0, offset: 0 }); // the broker's answer has this shape

function main(): void {
  if (!process.send) throw new Error('bench/http-ceiling.js is started by bench/http.js (fork)');
  const app = uWS.App();
  app.post('/v1/topics/:topic/messages', (res) => {
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    res.onData((_chunk, isLast) => {
      if (!isLast || aborted) return;
      res.cork(() => {
        res.writeStatus('200 OK');
        res.writeHeader('content-type', 'application/json');
        res.end(reply);
      });
    });
  });
  app.listen('127.0.0.1', 0, (socket) => {
    if (!socket) {
      process.send!({ error: 'cannot listen' });
      process.exit(1);
    }
    process.send!({ listening: uWS.us_socket_local_port(socket as unknown as uWS.us_socket) });
  });
  process.on('SIGTERM', () => process.exit(0));
  process.on('disconnect', () => process.exit(0));
}

main();
