"""Webhook figures: drain rate with a guaranteed webhook on every completion against the
plain queue (same run), and deliveries per second to a local receiver.

    .venv/bin/python bench/bench_webhooks.py                      # 3 reps, 20,000 jobs
    .venv/bin/python bench/bench_webhooks.py --reps 5 --jobs 50000 --json out.json

One private ``redis-server`` (no persistence) and one receiver process on loopback
(``chaos/receiver.py``, answers 200). Each case runs in a fresh worker process
(concurrency 20, default settings otherwise); the cases are interleaved per repetition:

  plain       drain ``--jobs`` no-op jobs (filled with ``add_jobs`` first); timed from
              ``start()`` to the last completion, worker start-up included
  webhooks    the same with ``WebhookManager`` and one guaranteed endpoint subscribed to
              ``job-completed``: every completion writes an outbox entry in its finish
              script, and the same process's delivery service sends them while it drains.
              Reports the drain time and the time until the last delivery was recorded
  offload     the same as webhooks, but the worker leaves delivery to a separate process
              (``run_service=False`` in the worker; the other process runs only the
              delivery service, as ``kitium-queue webhooks deliver`` does)
  deliver     the delivery service alone: the jobs are drained first (entries pile up in
              the outbox), then the service is started and timed until every event was
              delivered and recorded: deliveries/s of one process

Prints per repetition and the medians. Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
# This tree's package, not an installed one; KQ_BENCH_SRC: another src folder to measure
# (an earlier commit's, from git archive).
SRC = os.environ.get("KQ_BENCH_SRC") or str(ROOT / "src")
sys.path.insert(0, SRC)

from _redis import RedisServer  # noqa: E402

QUEUE = "bench-hooks"
HOOK = "bench"


# ---------------------------------------------------------------------------- children
async def _receiver() -> None:
    from chaos.receiver import Receiver

    rec = await Receiver().start()
    print(f"ready {rec.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(json.dumps({"ok": len(rec.ok()), "unique": len(rec.ids())}), flush=True)
    await rec.stop()


async def _child(args: argparse.Namespace) -> None:
    from kitium_queue import JobQueue
    from kitium_queue.features.webhooks import WebhookConfig, WebhookManager

    q = JobQueue(QUEUE, redis=args.redis, prefix=args.prefix, worker={"concurrency": 20})
    n = args.jobs
    m = None
    if args.mode != "plain":
        m = WebhookManager(q, secrets={HOOK: os.environ["KQ_BENCH_SECRET"]},
                           allow_networks=["127.0.0.0/8"], run_service=args.mode == "webhooks")
        if args.mode != "offload":  # the deliverer process registered it
            await m.register_webhook(WebhookConfig(url=args.url, id=HOOK,
                                                   events=["job-completed"]))
    if args.mode == "deliverer":
        assert m is not None
        await m.service.start(q)
        print("ready", flush=True)
        t1 = time.perf_counter()
        while m.service.delivered < n:
            await asyncio.sleep(0.005)
        await m.service.stop()
        await q.close()
        print(json.dumps({"deliver_s": time.perf_counter() - t1}), flush=True)
        return
    for s in range(0, n, 1000):
        await q.add_jobs([("noop", {"i": i}) for i in range(s, min(n, s + 1000))])
    done = asyncio.Event()
    count = 0

    async def noop(job: Any) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    q.process("noop", noop)
    t0 = time.perf_counter()
    await q.start()
    await done.wait()
    drain_s = time.perf_counter() - t0
    out: dict[str, Any] = {"drain_s": drain_s, "drain_rate": n / drain_s}
    if m is not None and args.mode != "offload":
        if args.mode == "deliver":
            t1 = time.perf_counter()
            await m.service.start(q)
        else:
            t1 = t0
        while m.service.delivered < n:
            await asyncio.sleep(0.005)
        out["deliver_s"] = time.perf_counter() - t1
        out["deliver_rate"] = n / out["deliver_s"]
        if args.mode == "deliver":
            await m.service.stop()
    await q.close()
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------- driver
def _run_case(args: argparse.Namespace, url: str, mode: str, rep: int, rec_url: str) -> \
        dict[str, Any]:
    import redis

    redis.Redis.from_url(url).flushall()
    env = {**os.environ, "KQ_BENCH_SECRET": args.secret,
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    def cmd(child: str) -> list[str]:
        return [sys.executable, __file__, "--child", child, "--redis", url, "--prefix",
                f"b{rep}{mode}", "--jobs", str(args.jobs), "--url", rec_url]

    deliverer = None
    if mode == "offload":
        deliverer = subprocess.Popen(cmd("deliverer"), stdout=subprocess.PIPE, text=True,
                                     env=env)
        assert deliverer.stdout is not None
        deliverer.stdout.readline()  # ready
    res = subprocess.run(cmd(mode), capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed: {res.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    if deliverer is not None:
        out, _ = deliverer.communicate(timeout=600)
        data["delivered_after_s"] = json.loads(out.strip().splitlines()[-1])["deliver_s"]
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="b", help=argparse.SUPPRESS)
    ap.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receiver:
        asyncio.run(_receiver())
        return
    if args.child:
        args.mode = args.child
        asyncio.run(_child(args))
        return
    from kitium_queue.features.webhooks import generate_secret

    args.secret = generate_secret()
    rows: dict[str, list[dict[str, Any]]] = {"plain": [], "webhooks": [], "offload": [],
                                             "deliver": []}
    with RedisServer() as srv:
        recv = subprocess.Popen([sys.executable, __file__, "--receiver"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert recv.stdout is not None and recv.stdin is not None
        port = int(recv.stdout.readline().split()[1])
        rec_url = f"http://127.0.0.1:{port}/hook"
        try:
            for rep in range(args.reps):
                for mode in rows:
                    r = _run_case(args, srv.url, mode, rep, rec_url)
                    rows[mode].append(r)
                    print(f"rep {rep + 1} {mode:9s} " + "  ".join(
                        f"{k}={v:,.1f}" for k, v in r.items()), flush=True)
        finally:
            recv.stdin.write("done\n")
            recv.stdin.flush()
            received = json.loads(recv.stdout.readline())
            recv.wait(10)
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for mode, rs in rows.items()}
    ratio = med["webhooks"]["drain_rate"] / med["plain"]["drain_rate"]
    print(f"\n{args.jobs:,} jobs, {args.reps} reps, medians:")
    print(f"  plain drain                       {med['plain']['drain_rate']:>10,.0f} jobs/s")
    print(f"  drain with a guaranteed webhook   {med['webhooks']['drain_rate']:>10,.0f} jobs/s"
          f"  ({ratio:.0%} of plain)")
    print(f"  ... every event delivered after   {med['webhooks']['deliver_s']:>10.2f} s"
          f"  ({med['webhooks']['deliver_rate']:,.0f} deliveries/s while draining)")
    off = med["offload"]["drain_rate"] / med["plain"]["drain_rate"]
    print(f"  drain, delivery in another process {med['offload']['drain_rate']:>9,.0f} jobs/s"
          f"  ({off:.0%} of plain; every event delivered after "
          f"{med['offload']['delivered_after_s']:.2f} s)")
    print(f"  delivery service alone            {med['deliver']['deliver_rate']:>10,.0f}"
          " deliveries/s (one process, backlog in the outbox)")
    print(f"  receiver: {received['ok']:,} requests answered 200, {received['unique']:,} "
          "distinct webhook-ids")
    if args.json:
        Path(args.json).write_text(json.dumps({"jobs": args.jobs, "reps": rows,
                                               "medians": med, "ratio": ratio,
                                               "received": received}, indent=2))


if __name__ == "__main__":
    main()
