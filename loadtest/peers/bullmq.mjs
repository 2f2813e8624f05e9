// BullMQ throughput for `loadtest peers`: `runs` jobs added in bulk chunks
// of 256 (as many in flight as jetsched's loadtest keeps), a no-op processor
// with `concurrency`, counted when each job completes. Prints one JSON line.
//
//   node bullmq.mjs --port 6379 --runs 20000 --concurrency 256
import { Queue, Worker } from 'bullmq';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '6379' },
    runs: { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '256' },
  },
});
const runs = Number(values.runs);
const concurrency = Number(values.concurrency);
const connection = { host: '127.0.0.1', port: Number(values.port) };
const name = `bench-${process.pid}`;
const queue = new Queue(name, { connection });
await queue.waitUntilReady();

let done = 0;
let finish;
const finished = new Promise((resolve) => { finish = resolve; });
const worker = new Worker(name, async () => ({ ok: true }), { connection, concurrency, autorun: false });
worker.on('completed', () => { if (++done === runs) finish(); });
worker.on('error', (err) => { console.error(err); process.exit(1); });
worker.run();
await worker.waitUntilReady();

const t0 = performance.now();
for (let i = 0; i < runs; i += 256) {
  const n = Math.min(256, runs - i);
  await queue.addBulk(Array.from({ length: n }, (_, k) => ({
    name: 'noop',
    data: { i: i + k },
    opts: { removeOnComplete: true, removeOnFail: true },
  })));
}
await finished;
const seconds = (performance.now() - t0) / 1000;
console.log(JSON.stringify({ system: `BullMQ, concurrency ${concurrency}`, runs, seconds, runs_per_s: runs / seconds }));
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
