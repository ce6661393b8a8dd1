import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { openStore } from '../engine/index';
import { verifyStore } from '../engine/inspect/index';
import { bodyFor, removeTempDirs, tempDir } from './helpers';

const child = path.join(__dirname, 'fixtures', 'engine-child.js');

after(removeTempDirs);

interface Ack {
  channel: number;
  baseOffset: number;
  count: number;
  seed: string;
}

/** Resolves when the child has printed a line matching `wanted`. */
function waitForLine(proc: ChildProcess, wanted: RegExp): Promise<string> {
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: proc.stdout! });
    lines.on('line', (line) => {
      if (wanted.test(line)) {
        lines.close();
        resolve(line);
      }
    });
    proc.once('exit', (code) => reject(new Error(`child exited (${code}) before printing ${wanted}`)));
  });
}

function exited(proc: ChildProcess): Promise<void> {
  return new Promise((resolve) => (proc.exitCode !== null || proc.signalCode !== null ? resolve() : proc.once('exit', () => resolve())));
}

describe('crash: SIGKILL during appends in sync mode "batch"', () => {
  it('every acknowledged message survives, bit-identical, and no partial batch is visible (25 rounds)', async function () {
    this.timeout(300_000);
    const dir = tempDir();
    const acked: Ack[] = [];
    const rounds = 25;
    for (let round = 0; round < rounds; round++) {
      const proc = spawn(process.execPath, [child, 'append', dir, String(round)], { stdio: ['ignore', 'pipe', 'inherit'] });
      // Kill after a random number of acknowledgements, while other appends are in flight.
      const killAfter = 1 + Math.floor(Math.random() * 120);
      let seen = 0;
      const killed = new Promise<void>((resolve, reject) => {
        const lines = readline.createInterface({ input: proc.stdout! });
        lines.on('line', (line) => {
          const [word, channel, baseOffset, count, seed] = line.split(' ');
          if (word !== 'ack') return;
          acked.push({ channel: Number(channel), baseOffset: Number(baseOffset), count: Number(count), seed: seed! });
          if (++seen === killAfter) proc.kill('SIGKILL');
        });
        proc.once('exit', (code, signal) => (signal === 'SIGKILL' ? resolve() : reject(new Error(`child exited with ${code} before the kill`))));
      });
      await killed;
      await exited(proc);
      // The child opened what the last round closed cleanly, wrote no checkpoint at open (its
      // files were as that close left them), then appended: the checkpoint still says clean,
      // with the segment then active shorter than it is now. verify must not call that a fault.
      const verified = await verifyStore(dir);
      assert.deepEqual(
        verified.faults.filter((f) => /checkpoint\.json says/.test(f.what)),
        [],
        `round ${round}: verify after the kill`,
      );

      const store = await openStore(dir, { segmentBytes: 256 * 1024 });
      try {
        for (const report of store.recoveryReport) assert.equal(report.kind, 'torn', `round ${round}: only torn tails, never corruption: ${JSON.stringify(report)}`);
        for (const ch of [0, 1]) {
          // Reading the whole channel verifies every batch's checksum: no partial batch is visible.
          const { highWatermark } = store.channelState('t', ch);
          let offset = 0;
          while (offset < highWatermark) {
            const page = await store.read('t', ch, { offset, maxMessages: 5000, maxBytes: 8 * 1024 * 1024 });
            assert.ok(page.length > 0);
            assert.equal(page[0]!.offset, offset, 'offsets are dense');
            offset = page[page.length - 1]!.offset + 1;
          }
        }
        for (const ack of acked) {
          const messages = await store.read('t', ack.channel, { offset: ack.baseOffset, maxMessages: ack.count, maxBytes: 8 * 1024 * 1024 });
          assert.equal(messages.length, ack.count, `round ${round}: ack ${ack.seed} has all its messages`);
          messages.forEach((m, i) => {
            assert.equal(m.key, ack.seed, `round ${round}: offset ${m.offset} belongs to ${ack.seed}`);
            assert.ok(m.body.equals(bodyFor(ack.seed, i, 2000)), `round ${round}: ${ack.seed} message ${i} is bit-identical`);
          });
        }
      } finally {
        await store.close();
      }
    }
    assert.ok(acked.length >= rounds, 'every round acknowledged something');
  });
});

describe('lock: one process per data folder', () => {
  it('a second process is refused at once, naming the folder and the holder pid; the lock dies with its holder', async function () {
    this.timeout(60_000);
    const dir = tempDir();
    const store = await openStore(dir);
    const tryer = spawn(process.execPath, [child, 'try', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    const answer = JSON.parse(await waitForLine(tryer, /^\{/)) as { code?: string; message?: string };
    await exited(tryer);
    assert.equal(answer.code, 'STORE_LOCKED');
    assert.ok(answer.message!.includes(path.resolve(dir)), answer.message);
    assert.ok(answer.message!.includes(`pid ${process.pid}`), answer.message);
    await store.close();

    const holder = spawn(process.execPath, [child, 'hold', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    await waitForLine(holder, /^held$/);
    const err = await openStore(dir).then(
      () => null,
      (e: Error & { code?: string }) => e,
    );
    assert.equal(err?.code, 'STORE_LOCKED');
    assert.ok(err!.message.includes(`pid ${holder.pid}`), err!.message);
    holder.kill('SIGKILL');
    await exited(holder);
    const again = await openStore(dir);
    await again.close();
  });

  it('removing the LOCK file does not free the folder: a second process is still refused while the holder lives, and told its pid (as verify is)', async function () {
    this.timeout(60_000);
    const dir = tempDir();
    const holder = spawn(process.execPath, [child, 'hold', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await waitForLine(holder, /^held$/);
      fs.rmSync(path.join(dir, 'LOCK'));
      const tryer = spawn(process.execPath, [child, 'try', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
      const answer = JSON.parse(await waitForLine(tryer, /^\{/)) as { code?: string; message?: string };
      await exited(tryer);
      assert.equal(answer.code, 'STORE_LOCKED', JSON.stringify(answer));
      assert.ok(answer.message!.includes(path.resolve(dir)), answer.message);
      assert.ok(answer.message!.includes(`another process (pid ${holder.pid})`), `the kernel's lock table names the holder: ${answer.message}`);
      const report = await verifyStore(dir);
      assert.ok(report.notes.some((n) => n.startsWith(`the store is open by a running process (pid ${holder.pid})`)), JSON.stringify(report.notes));
    } finally {
      holder.kill('SIGKILL');
      await exited(holder);
    }
    const again = await openStore(dir);
    await again.close();
  });
});
