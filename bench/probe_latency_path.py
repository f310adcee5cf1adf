"""Where the enqueue → start time of an idle worker goes (issue 18, item 8).

A worker (concurrency 20) runs in this process; a ``SyncJobQueue`` producer in a child
process adds ``--jobs`` jobs at ``--rate`` jobs/s, each carrying its send time. Against a
private ``redis-server`` with ``SLOWLOG`` recording every command, it prints:

* enqueue → start: from the producer's clock read before ``add_job`` to the processor's
  first line (both processes read the same wall clock);
* the worker's side, from the wake-up exchange's reply (the claim riding on the
  ``BZPOPMIN``) to the processor: to ``Runner.launch``, inside it (the claimed entry
  decoded, the job's task created), the loop's turn until that task runs, and the task's
  own steps before the processor is called;
* Redis time per call (``SLOWLOG``, threshold 0), median, and their sum per job
  enqueued: the enqueue, claim, finish and extend scripts (every call: the worker's own
  claim rounds as well as the claim riding on its wake-up) and the ``BZPOPMIN``.

The worker's methods are wrapped with clock reads for the run (a probe, not a
benchmark: its own reads add a few µs). The first 100 jobs are left out (warm-up).

    .venv/bin/python bench/probe_latency_path.py [--jobs 1500] [--rate 200]

Nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _redis import RedisServer
from kitium_queue import JobQueue
from kitium_queue import runner as runner_mod
from kitium_queue import scripts as scripts_mod

_PRODUCER = """
import sys, time
sys.path.insert(0, {src!r})
from kitium_queue import SyncJobQueue
q = SyncJobQueue("latpath", redis={url!r})
gap = 1.0 / {rate}
for i in range({jobs}):
    q.add_job("n", {{"t": time.time()}})
    time.sleep(gap)
q.close()
"""


def _ms(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs) * 1000:.3f} ms"


async def probe(url: str, jobs: int, rate: float) -> None:
    stamp: dict[str, float] = {"reply": 0.0, "launch": 0.0, "launched": 0.0, "task": 0.0}
    rows: list[tuple[float, ...]] = []

    after_block = scripts_mod.ScriptRegistry.after_block
    launch = runner_mod.Runner.launch
    run = runner_mod.Runner.run

    async def timed_after_block(self: Any, *a: Any) -> Any:
        reply = await after_block(self, *a)
        stamp["reply"] = time.time()
        return reply

    def timed_launch(self: Any, *a: Any) -> None:
        stamp["launch"] = time.time()
        launch(self, *a)
        stamp["launched"] = time.time()

    async def timed_run(self: Any, *a: Any) -> None:
        stamp["task"] = time.time()
        await run(self, *a)

    async def processor(job: Any) -> None:
        now = time.time()
        s = stamp
        rows.append(
            (
                now - float(job.data["t"]),
                s["launch"] - s["reply"],
                s["launched"] - s["launch"],
                s["task"] - s["launched"],
                now - s["task"],
            )
        )

    scripts_mod.ScriptRegistry.after_block = timed_after_block  # type: ignore[method-assign]
    runner_mod.Runner.launch = timed_launch  # type: ignore[method-assign]
    runner_mod.Runner.run = timed_run  # type: ignore[method-assign]
    q = JobQueue("latpath", redis=url, worker={"concurrency": 20})
    q.process("n", processor)
    try:
        await q.start()
        await asyncio.sleep(0.5)
        src = str(Path(__file__).resolve().parents[1] / "src")
        code = _PRODUCER.format(src=src, url=url, rate=rate, jobs=jobs)
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        await child.wait()
        await asyncio.sleep(0.3)
    finally:
        await q.close()
        scripts_mod.ScriptRegistry.after_block = after_block  # type: ignore[method-assign]
        runner_mod.Runner.launch = launch  # type: ignore[method-assign]
        runner_mod.Runner.run = run  # type: ignore[method-assign]
    kept = rows[100:]
    labels = (
        "enqueue -> start",
        "  reply -> launch",
        "  launch (entry decoded, task created)",
        "  loop turn until the task runs",
        "  task -> processor",
    )
    print(f"{len(kept)} jobs at {rate:g}/s (first 100 left out):")
    for i, label in enumerate(labels):
        print(f"  {label:40s} {_ms([r[i] for r in kept])}")


def slowlog_medians(r: redis.Redis, shas: dict[str, str]) -> None:
    """Median Redis time of each script in ``shas`` (sha -> name) and of ``BZPOPMIN``."""
    got: dict[str, list[int]] = {f"{name} script": [] for name in shas.values()}
    got["BZPOPMIN"] = []
    for entry in r.slowlog_get(1_000_000):
        cmd = entry["command"].split(b" ")
        name = cmd[0].upper()
        if name == b"EVALSHA" and len(cmd) > 1 and cmd[1].decode() in shas:
            got[f"{shas[cmd[1].decode()]} script"].append(entry["duration"])
        elif name == b"BZPOPMIN":
            got["BZPOPMIN"].append(entry["duration"])
    jobs = max(1, len(got["enqueue script"]))
    print("Redis time per call (SLOWLOG, median), and in all per job enqueued:")
    for label, xs in got.items():
        shown = (
            f"{statistics.median(xs):.0f} µs over {len(xs)} calls; {sum(xs) / jobs:.0f} µs/job"
            if xs
            else "not seen"
        )
        print(f"  {label:40s} {shown}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1500)
    p.add_argument("--rate", type=float, default=200.0)
    args = p.parse_args(argv)
    server = RedisServer()
    server.start()
    try:
        r = redis.Redis.from_url(server.url)
        r.config_set("slowlog-log-slower-than", 0)
        r.config_set("slowlog-max-len", 1_000_000)
        asyncio.run(probe(server.url, args.jobs, args.rate))
        scripts = JobQueue("latpath", redis=server.url).producer.ctx.scripts
        hot = ("enqueue", "claim", "finish", "extend")
        slowlog_medians(r, {scripts.get(n).sha: n for n in hot})
        r.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
