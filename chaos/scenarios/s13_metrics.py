"""Issue 16: the metrics endpoint through a Redis crash and a worker SIGKILL.

Two workers (lease 1 s, sweep every 250 ms) work through a backlog of 5-30 ms jobs
while a ``PrometheusExporter`` (gauges only, as ``kitium-queue metrics`` runs it)
serves ``/metrics`` from a thread of this process, scraped over loopback HTTP again and
again. Redis (``appendfsync always``) is SIGKILLed, scraped while down, and restarted
from its AOF; a busy worker is SIGKILLed and replaced.

Checks: every scrape is answered (HTTP 200, parseable, within a bound) whether Redis is
up or not; while Redis is down the queue reports ``kitium_queue_up 0`` and no stale
count; after the restart ``up`` returns to 1 without restarting the exporter; the final
scrape's per-state counts equal Redis' own (every job completed, none waiting or
active); the ledger's final check; no traceback.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import wait_for
from ._common import closing_checks, retrying, stats, stop_fleet, tracebacks, wait_final

QUEUE = "metrics"
#: A scrape must be answered within this (the exporter's Redis timeouts are 1 s).
SCRAPE_BOUND_S = 8.0


class _Exporter:
    """The exporter on a loop of its own thread; ``url`` once it listens."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url, self.prefix = redis_url, prefix
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the exporter did not start")

    async def _main(self) -> None:
        from kitium_queue import JobQueue
        from kitium_queue.features.prometheus import PrometheusExporter

        sep = "&" if "?" in self.redis_url else "?"
        q = JobQueue(QUEUE, prefix=self.prefix,
                     redis=f"{self.redis_url}{sep}socket_timeout=1&socket_connect_timeout=1")
        server = await PrometheusExporter(q, subscribe=False).serve("127.0.0.1", 0)
        self.url = server.url
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.close()
            await q.close()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


def _scrape(url: str) -> tuple[int, float, dict[str, float]]:
    """(HTTP status, seconds, {"up" / state: value}) of one scrape of queue QUEUE."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_BOUND_S * 2) as resp:
            status, body = resp.status, resp.read().decode()
    except Exception as exc:  # the check reports it
        return -1, time.monotonic() - t0, {"error": hash(type(exc).__name__)}
    took = time.monotonic() - t0
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.labels.get("queue") != QUEUE:
                continue
            if s.name == "kitium_queue_up":
                out["up"] = s.value
            elif s.name == "kitium_queue_jobs":
                out[s.labels["state"]] = s.value
    return status, took, out


@scenario("metrics", 16, "Metrics endpoint through a Redis SIGKILL and restart, worker SIGKILL")
def run(ctx: Context, res: Result) -> None:
    rnd = random.Random(16)
    srv = ctx.redis(appendfsync="always")
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    client = ctx.client(srv.url)
    producer = ctx.producer(srv.url, QUEUE, prefix)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, concurrency=4, lock_duration=1000,
                      stalled_interval=250, max_stalled=1000)
    for w in [fleet.start(), fleet.start()]:
        w.wait_ready()
    exporter = _Exporter(srv.url, prefix)
    exporter.start()
    ctx.callback(exporter.stop)
    scrapes: list[tuple[str, int, float, dict[str, float]]] = []

    def scrape(phase: str) -> dict[str, float]:
        status, took, got = _scrape(exporter.url)
        scrapes.append((phase, status, took, got))
        return got

    jobs = [("work", {"ms": rnd.randint(5, 30)}, {"remove_on_complete": False})
            for _ in range(ctx.pick(400, 3000))]
    ctx.ledger.record(producer.add_jobs(jobs), tag="load")
    wait_for(lambda: client.zcard(keys.completed) >= 50, 30, what="first completions")
    for _ in range(3):
        scrape("up")

    # Redis goes away: every scrape is still answered, reporting up 0.
    srv.kill()
    for _ in range(3):
        scrape("down")
    srv.restart()
    busy = wait_for(lambda: [w for w in fleet.live() if w.running_jobs()], 30,
                    what="a busy worker to kill")
    rnd.choice(busy).kill()
    fleet.start().wait_ready()
    wait_for(lambda: scrape("back").get("up") == 1, 30, what="up 1 after the restart")

    wait_final(ctx, client, keys, ctx.pick(90, 300))
    final = scrape("final")
    want = {"completed": retrying(lambda: client.zcard(keys.completed), 15),
            "waiting": 0, "active": 0}
    snap, _ = closing_checks(ctx, res, client, keys, fleet)
    exporter.stop()

    answered = [s for s in scrapes if s[1] == 200 and "up" in s[3]]
    res.figures.update({
        "jobs": len(ctx.ledger), "scrapes": len(scrapes),
        "scrape_s": stats(s[2] for s in scrapes),
        "scrape_s_while_down": stats(s[2] for s in scrapes if s[0] == "down"),
        "final": final,
    })
    res.expect("every scrape answered with a parseable 200", len(answered) == len(scrapes),
               [s for s in scrapes if s not in answered][:3])
    res.expect(f"every scrape within {SCRAPE_BOUND_S} s",
               all(s[2] <= SCRAPE_BOUND_S for s in scrapes), max(s[2] for s in scrapes))
    down = [s[3] for s in scrapes if s[0] == "down"]
    res.expect("while Redis is down: up 0 and no stale count",
               all(d.get("up") == 0 and "completed" not in d for d in down), down)
    res.expect("before the crash: up 1", all(s[3].get("up") == 1 for s in scrapes
                                             if s[0] == "up"), None)
    got = {k: final.get(k) for k in want}
    res.expect("final scrape equals Redis' own counts", got == want, {"scrape": got, "redis": want})
    res.expect("every job completed", len(snap.sets["completed"]) == len(ctx.ledger),
               f"{len(snap.sets['completed'])}/{len(ctx.ledger)}")
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
