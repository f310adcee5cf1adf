"""Item 15 (issue 18, item 3): a slow Redis. Every worker and the producer reach Redis
through the loopback proxy (``chaos.proxy``), which delivers each chunk 20 ms late in
each direction, and every ``spike_every`` seconds holds the delay at 200 ms for
``spike_hold`` seconds.

Leases are sized the way the docs say for such a link (docs/pressure.md): the worst
round trip is ~0.4 s (a spike each way), so ``lock_renew_time`` 500 ms and
``lock_duration`` 3000 ms leave 2 s of margin. A producer adds jobs of 50-600 ms
continuously for ``seconds``; three worker processes (concurrency 6) run them.

Checks: the ledger (nothing lost, every state consistent), no job recorded completed
twice, no job run twice at all (no lease expired: no ``job-stalled`` event), no two runs
of one job overlapping in time. Figures: throughput (completions per second over the
run), how many spikes, the enqueue failures (none expected: a slow link is not a down
one).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import overlaps
from ..ledger import stream
from ..proxy import Proxy
from ._common import Producer, closing_checks, stop_fleet, tracebacks, wait_final

QUEUE = "slow"
BASE_S, SPIKE_S = 0.020, 0.200
LEASE_MS, RENEW_MS = 3000, 500


def _job(rnd: random.Random, n: int) -> tuple[str, Any, dict[str, Any]]:
    return ("work", {"ms": rnd.randint(50, 600)}, {"job_id": f"s{n}", "remove_on_complete": False})


class Spikes(threading.Thread):
    """20 ms each way; every ``every`` s a spike of 200 ms for ``hold`` s."""

    def __init__(self, proxy: Proxy, every: float, hold: float) -> None:
        super().__init__(name="chaos-spikes", daemon=True)
        self.proxy, self.every, self.hold = proxy, every, hold
        self.stop_event = threading.Event()
        self.count = 0

    def run(self) -> None:
        self.proxy.set_delay(BASE_S)
        while not self.stop_event.wait(self.every):
            self.proxy.set_delay(SPIKE_S)
            self.count += 1
            self.stop_event.wait(self.hold)
            self.proxy.set_delay(BASE_S)

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout=10)


@scenario("slow-redis", 15, "Slow Redis: 20 ms each way and 200 ms spikes through a proxy")
def run(ctx: Context, res: Result) -> None:
    seconds = ctx.pick(5, 300)
    srv = ctx.redis()
    proxy = Proxy(srv.port, max_lifetime=seconds + 300).start()
    ctx.callback(proxy.stop)
    spikes = Spikes(proxy, every=ctx.pick(1.5, 5.0), hold=ctx.pick(0.5, 1.0))
    ctx.callback(spikes.stop)
    client = ctx.client(srv.url)
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    spikes.start()
    producer = Producer(
        ctx.producer(proxy.url, QUEUE, prefix), ctx.ledger, batch=4, period=0.1, job=_job
    )
    ctx.callback(producer.stop)
    fleet = ctx.fleet(
        proxy.url,
        QUEUE,
        prefix,
        concurrency=6,
        lock_duration=LEASE_MS,
        lock_renew=RENEW_MS,
        stalled_interval=500,
        max_stalled=5,
    )
    workers = [fleet.start() for _ in range(3)]
    for w in workers:
        w.wait_ready()
    t0 = time.time()
    producer.start()
    time.sleep(seconds)
    producer.stop()
    wait_final(ctx, client, keys, ctx.pick(60, 180))
    took = time.time() - t0
    spikes.stop()
    _, dup = closing_checks(ctx, res, client, keys, fleet)
    events = stream(client, keys.events)
    stalled = sorted({e.job_id for e in events if e.event == "job-stalled"})
    over = overlaps(fleet.runs(), time.time())
    done = sum(1 for e in events if e.event == "job-completed")
    res.expect("no lease expired (no job-stalled event)", not stalled, stalled[:5])
    res.expect("no job ran twice", dup["extra_runs"] == 0, dup["extra_runs"])
    res.expect("no two runs of one job overlapped", not over, over[:5])
    res.expect("spikes happened", spikes.count >= 2, spikes.count)
    res.expect(
        "every enqueue went through the slow link", producer.failures == 0, sorted(producer.errors)
    )
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
    res.figures.update(
        {
            "delay_each_way_ms": BASE_S * 1000,
            "spike_each_way_ms": SPIKE_S * 1000,
            "spikes": spikes.count,
            "lock_duration_ms": LEASE_MS,
            "lock_renew_ms": RENEW_MS,
            "jobs": len(ctx.ledger),
            "completed": done,
            "seconds": round(took, 1),
            "completions_per_s": round(done / max(1e-9, took), 1),
            "stalled": len(stalled),
            "extra_runs": dup["extra_runs"],
            "enqueue_failures": producer.failures,
        }
    )
    res.notes.append(
        "Throughput here is bound by the producer's pace and the work per job, not by the "
        "link; bench/bench_pressure.py measures drain throughput through the same proxy."
    )
