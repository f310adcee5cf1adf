"""The dashboard: what an open dashboard costs a draining worker.

    .venv/bin/python bench/bench_dashboard.py                  # private redis-server
    .venv/bin/python bench/bench_dashboard.py --jobs 100000 --reps 3 --concurrency 20

One worker in this process drains ``--jobs`` no-op jobs (added beforehand with
``add_jobs``), timed from the worker's start to the last completion, in three variants
run interleaved, ``--reps`` times each, on one redis-server (flushed before each run):

* ``plain``: nobody watches;
* ``dashboard 1/s``: ``kitium-queue dashboard`` runs as its own process on the same
  machine and one open overview page polls it every second (``GET /api/stats``: the
  queue's counts, its throughput from the newest events, its live workers) and a queue
  page is reloaded every second (``GET /q/<queue>``: the counts and the first 50 waiting
  jobs) — what a browser left open on the dashboard does;
* ``dashboard 5 pages``: five such pollers at once (five people watching).

The pollers run in a thread of this process with their own HTTP client; the dashboard
server is a separate process (uvicorn), as in production. Prints the median (min-max)
jobs/s of each variant and its ratio to ``plain``, and how many requests the pollers
made.

Drain rates swing with other work on a shared machine; the second part measures what
does not: the CPU time one request costs, in redis-server and in the dashboard process
(``/proc`` and ``INFO cpu`` deltas over ``--requests`` requests of each kind, against a
queue whose event stream is full of completions and with 50 jobs waiting). A benchmark,
not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _drain import compare, drain, fresh_queue, report

from _redis import RedisServer, free_port
from kitium_queue import JobQueue

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("plain", "dashboard 1/s", "dashboard 5 pages")
TOKEN = "bench-" + "t" * 30
QUEUE, PREFIX = "bench-dash", "bdash"


class Dashboard:
    """``kitium-queue dashboard`` in its own process, on a free port."""

    def __init__(self, url: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        Path(self.dir.name, "bench_dash_app.py").write_text(
            "from kitium_queue import JobQueue\n"
            f"queue = JobQueue({QUEUE!r}, redis={url!r}, prefix={PREFIX!r})\n"
        )
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kitium_queue.cli",
                "dashboard",
                "bench_dash_app:queue",
                "--port",
                str(self.port),
                "--token",
                f"{TOKEN}:bench@example.com:viewer",
            ],
            cwd=self.dir.name,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/login", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the dashboard did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.dir.cleanup()


class Pollers:
    """``pages`` open pages, each fetching ``/api/stats`` and the queue page every
    second, in a thread (each its own cookie-less bearer session)."""

    def __init__(self, base: str, pages: int) -> None:
        self.base, self.pages = base, pages
        self.requests = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def get(self, path: str) -> None:
        req = urllib.request.Request(self.base + path, headers={"authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                r.read()
            self.requests += 1
        except OSError:
            pass

    def run(self) -> None:
        while self.pages and not self.stop.is_set():
            t0 = time.monotonic()
            for _ in range(self.pages):
                self.get("/api/stats")
                self.get(f"/q/{QUEUE}")
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _redis_cpu_s(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def request_cost(url: str, dash: Dashboard, requests: int, concurrency: int) -> None:
    """CPU per request of ``/api/stats`` and of a queue page, in Redis and the server."""
    q = await fresh_queue(url, QUEUE, PREFIX, concurrency)
    await drain(q, 20_000)  # the event stream now holds completions (its cap: 10,000)
    q = JobQueue(QUEUE, redis=url, prefix=PREFIX)
    await q.add_jobs([("noop", None) for _ in range(50)])
    await q.close()
    client = aioredis.Redis.from_url(url)
    poll = Pollers(dash.base, 0)
    print(f"CPU per request ({requests} of each; event stream full, 50 jobs waiting):")
    for path in ("/api/stats", f"/q/{QUEUE}"):
        r0, d0, t0 = await _redis_cpu_s(client), _proc_cpu_s(dash.proc.pid), time.perf_counter()
        await asyncio.to_thread(lambda p=path: [poll.get(p) for _ in range(requests)])
        wall = time.perf_counter() - t0
        redis_us = (await _redis_cpu_s(client) - r0) / requests * 1e6
        dash_ms = (_proc_cpu_s(dash.proc.pid) - d0) / requests * 1e3
        print(
            f"  GET {path:14s} redis-server {redis_us:7.0f} µs, dashboard process "
            f"{dash_ms:6.2f} ms, {requests / wall:6.0f} requests/s one at a time"
        )
    poll.close()
    await client.aclose()


async def main(args: argparse.Namespace) -> None:
    state: dict[str, object] = {}
    made: dict[str, int] = {v: 0 for v in VARIANTS}

    async def one_run(url: str, variant: str, n: int) -> float:
        if "dash" not in state:
            state["dash"] = Dashboard(url)
        dash = state["dash"]
        assert isinstance(dash, Dashboard)
        q = await fresh_queue(url, QUEUE, PREFIX, args.concurrency)
        pollers = None
        if variant != "plain":
            pollers = Pollers(dash.base, 1 if variant == "dashboard 1/s" else 5)
        try:
            return await drain(q, args.jobs)
        finally:
            if pollers is not None:
                pollers.close()
                made[variant] += pollers.requests

    server = None
    url = args.redis
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        rates = await compare(url, VARIANTS, args.reps, one_run)
        report(rates, args.jobs, args.concurrency, args.reps)
        for v, n in made.items():
            if v != "plain":
                print(f"  {v}: {n} requests answered over {args.reps} runs")
        dash = state["dash"]
        assert isinstance(dash, Dashboard)
        await request_cost(url, dash, args.requests, args.concurrency)
    finally:
        dash = state.get("dash")
        if isinstance(dash, Dashboard):
            dash.close()
        if server is not None:
            server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", default=None, help="a Redis URL (default: a private server)")
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--requests", type=int, default=300, help="requests per kind, CPU part")
    asyncio.run(main(p.parse_args()))
