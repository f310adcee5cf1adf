// Node BullMQ 5.x in the benchmark harness: the same roles and line protocol as
// bench/_common.py (READY, GO, P <count>, STOP, RESULT <json>), so bench/run.py drives
// it like the Python peers.
//
//   node bench/node/bullmq_peer.mjs <role> '<json params>'
//
// Roles: enqueue {mode: single|concurrent|bulk, n, batch, conc, max_seconds},
// fill {n}, steady {n, rate}, worker {concurrency, latency}. Settings: Worker(concurrency)
// and BullMQ's defaults otherwise (locks, stalled checks, completed jobs kept), as the
// Python bullmq peer. "sends" counts request writes on the sockets to Redis (one per
// command, or per pipeline / auto-pipelined batch).

import net from "node:net";
import readline from "node:readline";
import { Queue, Worker } from "bullmq";

let sends = 0;
const origWrite = net.Socket.prototype.write;
net.Socket.prototype.write = function (...args) {
  sends += 1;
  return origWrite.apply(this, args);
};

const out = (line) => process.stdout.write(line + "\n");
const role = process.argv[2];
const params = JSON.parse(process.argv[3] || "{}");
const url = new URL(params.url);
const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
// Sub-millisecond wall clock (Date.now() has whole ms): latency samples compare it with
// the time.time() a Python producer puts in the job, and the other way round.
const now = () => (performance.timeOrigin + performance.now()) / 1000;

async function enqueueRole(q) {
  const n = Number(params.n);
  const budget = Number(params.max_seconds ?? 1e9);
  for (let i = 0; i < 20; i++) await q.add("noop", { i: -i });
  const s0 = sends;
  let done = 0;
  const t0 = performance.now();
  if (params.mode === "single") {
    for (let i = 0; i < n; i++) {
      await q.add("noop", { i });
      done = i + 1;
      if (i % 256 === 255 && (performance.now() - t0) / 1000 > budget) break;
    }
  } else if (params.mode === "concurrent") {
    let next = 0;
    const one = async () => {
      while (next < n) {
        const i = next++;
        await q.add("noop", { i });
      }
    };
    await Promise.all(Array.from({ length: Number(params.conc ?? 100) }, one));
    done = n;
  } else if (params.mode === "bulk") {
    const batch = Number(params.batch ?? 1000);
    for (let s = 0; s < n; s += batch) {
      const jobs = [];
      for (let i = s; i < Math.min(n, s + batch); i++) jobs.push({ name: "noop", data: { i } });
      await q.addBulk(jobs);
    }
    done = n;
  } else {
    throw new Error(`unknown enqueue mode ${params.mode}`);
  }
  const secs = (performance.now() - t0) / 1000;
  return { n: done, seconds: secs, rate: done / secs, sends: sends - s0 };
}

async function fillRole(q) {
  const n = Number(params.n);
  const s0 = sends;
  const t0 = performance.now();
  for (let s = 0; s < n; s += 1000) {
    const jobs = [];
    for (let i = s; i < Math.min(n, s + 1000); i++) jobs.push({ name: "noop", data: { i } });
    await q.addBulk(jobs);
  }
  const secs = (performance.now() - t0) / 1000;
  return { n, seconds: secs, rate: n / secs, sends: sends - s0 };
}

async function steadyRole(q) {
  const n = Number(params.n);
  const period = 1000 / Number(params.rate);
  const lags = [];
  const t0 = performance.now() + 50;
  for (let i = 0; i < n; i++) {
    const due = t0 + i * period;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    lags.push(performance.now() - due);
    await q.add("noop", { i, t: now() });
  }
  const secs = (performance.now() - t0) / 1000;
  lags.sort((a, b) => a - b);
  return { n, seconds: secs, rate: n / secs, lag_p99_ms: lags[Math.floor(0.99 * n)] };
}

async function workerRole() {
  const latency = Boolean(params.latency);
  let count = 0;
  let first = null;
  let last = null;
  const lat = [];
  let seen = 0;
  setInterval(() => {
    if (count !== seen) {
      seen = count;
      out(`P ${count}`);
    }
  }, 10).unref();
  const report = () => {
    const res = { count, first, last, sends };
    if (latency) res.lat_ms = lat.map((x) => Math.round(x * 1e7) / 1e4);
    out("RESULT " + JSON.stringify(res));
    process.exit(0);
  };
  const worker = new Worker(
    params.queue,
    async (job) => {
      const t = now();
      if (first === null) first = t;
      if (latency && job.data && job.data.t !== undefined) lat.push(t - Number(job.data.t));
      count += 1;
      last = now();
    },
    { connection, concurrency: Number(params.concurrency ?? 20), autorun: false },
  );
  await worker.waitUntilReady();
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    const cmd = line.trim();
    if (cmd === "GO") worker.run();
    else if (cmd === "STOP") report();
  });
  rl.on("close", report);
  out("READY");
}

async function main() {
  if (role === "worker") return workerRole();
  const q = new Queue(params.queue, { connection });
  await q.waitUntilReady();
  const roles = { enqueue: enqueueRole, fill: fillRole, steady: steadyRole };
  if (!roles[role]) throw new Error(`unknown role ${role}`);
  const res = await roles[role](q);
  out("RESULT " + JSON.stringify(res));
  process.exit(0);
}

main().catch((err) => {
  out("RESULT " + JSON.stringify({ error: String(err && err.stack ? err.stack : err).slice(0, 500) }));
  process.exit(1);
});
