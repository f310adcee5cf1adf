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
made. A benchmark, not a test: nothing here asserts.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _drain import compare, drain, fresh_queue, report

from _redis import free_port

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
        while not self.stop.is_set():
            t0 = time.monotonic()
            for _ in range(self.pages):
                self.get("/api/stats")
                self.get(f"/q/{QUEUE}")
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


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

    try:
        rates = await compare(args.redis, VARIANTS, args.reps, one_run)
    finally:
        dash = state.get("dash")
        if isinstance(dash, Dashboard):
            dash.close()
    report(rates, args.jobs, args.concurrency, args.reps)
    for v, n in made.items():
        if v != "plain":
            print(f"  {v}: {n} requests answered over {args.reps} runs")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", default=None, help="a Redis URL (default: a private server)")
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=20)
    asyncio.run(main(p.parse_args()))
