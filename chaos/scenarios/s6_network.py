"""Item 6: connection drops and delays through a loopback TCP proxy.

Two workers reach Redis through the proxy (``chaos.proxy``), a third one directly; lease
1 s (renewed every 500 ms), sweep every 250 ms, 3 slots each. A producer thread adds
jobs continuously (mostly 10-60 ms, one in ten 1.2 s so that leases are held across
the faults). Faults, one after the other:

    cut          every proxied connection reset at once (clients reconnect)
    stall        nothing forwarded for 0.25 x lease (connections stay open)
    long stall   nothing forwarded for 2 x lease
    unreachable  connection refused for 2 x lease (and open connections reset)

After each fault: the proxied workers are alive and each starts a job again (delay
measured from the end of the fault). At the end the checker must pass. What happened is
recorded per fault: jobs the proxied workers held, jobs that stalled (lease expired and
recovered), lease losses the workers reported, and the re-runs. A fault shorter than
lease - renew interval (the margin a renewed lease has left) must cause no re-run; a
longer one may: the long form also records a stall of exactly that margin (0.5 x lease).
"""

from __future__ import annotations

import random
import time
from typing import Any

from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import Timeout, wait_for
from ..ledger import check, merge, snapshot, stream
from ..proxy import Proxy
from ._common import Producer, closing_checks, stop_fleet, tracebacks, wait_final

QUEUE = "network"


def _job(rnd: random.Random, n: int) -> tuple[str, Any, dict[str, Any]]:
    ms = 1200 if rnd.random() < 0.1 else rnd.randint(10, 60)
    return ("work", {"ms": ms}, {"job_id": f"n{n}", "remove_on_complete": False})


@scenario("network", 6, "Connection cuts, stalls and Redis unreachable via a loopback proxy")
def run(ctx: Context, res: Result) -> None:
    lease_ms, renew_ms = 1000, 500
    srv = ctx.redis()
    proxy = Proxy(srv.port, max_lifetime=ctx.pick(120, 900)).start()
    ctx.callback(proxy.stop)
    client = ctx.client(srv.url)
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    ledger = ctx.ledger
    # Short form: 50 jobs/s, about what the 9 slots get through (100 jobs/s outran them
    # and left a backlog of seconds to drain after the faults); long form: 100 jobs/s.
    producer = Producer(ctx.producer(srv.url, QUEUE, prefix), ledger, batch=5,
                        period=ctx.pick(0.1, 0.05), job=_job)
    ctx.callback(producer.stop)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, concurrency=3, lock_duration=lease_ms,
                      lock_renew=renew_ms, stalled_interval=250, max_stalled=10)
    proxied = [fleet.start("p1", url=proxy.url), fleet.start("p2", url=proxy.url)]
    direct = fleet.start("direct")
    for w in [*proxied, direct]:
        w.wait_ready()
    producer.start()

    plan: list[tuple[str, float]] = [
        ("cut", 0.0),
        ("stall", 0.25 * lease_ms / 1000),
        ("stall", 2 * lease_ms / 1000),
        ("unreachable", 2 * lease_ms / 1000),
    ]
    if ctx.long:
        # 0.5 x lease = lease - renew interval: the margin leases have, recorded only.
        plan = [*plan, ("stall", 0.5 * lease_ms / 1000)] * 3 + [("cut", 0.0)] * 5
    faults: list[dict[str, Any]] = []
    live_checks = []
    for kind, seconds in plan:
        # Load on the proxied workers before each fault.
        wait_for(lambda: all(w.running_jobs() for w in proxied), 20,
                 what="both proxied workers to be busy")
        held = sorted(set().union(*(w.running_jobs() for w in proxied)))
        t0 = time.time()
        if kind == "cut":
            proxy.cut()
        elif kind == "stall":
            proxy.stall(None)
            _hold(seconds, proxied)
            proxy.resume()
        else:
            proxy.down()
            _hold(seconds, proxied)
            proxy.up()
        t1 = time.time()
        resume = []
        for w in proxied:
            try:
                t = wait_for(lambda w=w, t1=t1: next(
                    (ln.t for ln in w.lines() if ln.event == "start" and ln.t > t1), None),
                    15, what=f"{w.name} to start a job after the fault")
                resume.append(round(t - t1, 3))
            except Timeout:
                resume.append(float("inf"))
        live_checks.append(check(snapshot(client, keys), ledger, final=False))
        faults.append({"fault": kind, "seconds": seconds, "t0": t0, "t1": t1,
                       "held_by_proxied_workers": held, "resume_after_fault_s": resume})
        res.expect(f"{kind} {seconds:g} s: proxied workers alive",
                   all(w.alive() for w in proxied))
        res.expect(f"{kind} {seconds:g} s: proxied workers resume within 3 s",
                   max(resume) <= 3.0, resume)
        # Let what the fault hit play out before the next one, so that every re-run can
        # be attributed to one fault.
        wait_for(lambda h=set(held): not (h & set().union(*(w.running_jobs() for w in proxied))),
                 20, what="the jobs held at the fault to end")

    producer.stop()
    res.checker("after each fault", merge(live_checks))
    wait_final(ctx, client, keys, ctx.pick(60, 180))
    _, dup = closing_checks(ctx, res, client, keys, fleet)
    events = stream(client, keys.events)
    runs = fleet.runs()
    reruns_total = 0
    for i, f in enumerate(faults):
        t_end = faults[i + 1]["t0"] if i + 1 < len(faults) else time.time()
        window = [e for e in events if f["t0"] <= e.ms / 1000 < t_end]
        stalled = sorted({e.job_id for e in window if e.event == "job-stalled"})
        # Re-runs that started in this fault's window.
        reran = sorted(j for j, rs in runs.items()
                       if any(f["t0"] <= r.start < t_end for r in rs[1:]))
        f["stalled"] = len(stalled)
        f["reran"] = len(reran)
        reruns_total += len(reran)
        f["released"] = sum(1 for e in window if e.event == "job-released")
        del f["t0"], f["t1"]
        f["held_by_proxied_workers"] = len(f["held_by_proxied_workers"])
        if f["seconds"] < (lease_ms - renew_ms) / 1000:
            res.expect(f"fault {i + 1} ({f['fault']} {f['seconds']:g} s, shorter than lease - "
                       "renew interval): no job ran twice", not reran, reran[:5])
    err = "\n".join(w.stderr() for w in proxied)
    res.figures.update({
        "faults": len(faults),
        "lease_ms": lease_ms,
        "per_fault": faults,
        "jobs": len(ledger),
        "reruns_total": reruns_total,
        "extra_runs": dup["extra_runs"],
        "extra_successful_runs": dup["extra_successful_runs"],
        "proxied_worker_reports": {
            "outages": err.count("Redis unreachable"),
            "recoveries": err.count("reachable again"),
            "leases_lost_at_renewal": err.count("abandoning this run"),
            "outcomes_refused_by_fencing": err.count("was lost before its outcome"),
        },
        "proxy_connections_accepted": proxy.connections,
        "enqueue_failures": producer.failures,
    })
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
    res.notes.append(
        "Re-runs are expected once a fault outlasts lease - renew interval: renewals stop "
        "reaching Redis, the leases expire, the direct worker (or the proxied worker's own "
        "next claim, once traffic flows again) recovers them and the job runs again; the "
        "late outcomes of the first runs are refused (fencing)."
    )


def _hold(seconds: float, watch: list[Any]) -> None:
    """Keep the fault on for ``seconds`` while checking the workers stay up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dead = [w.name for w in watch if not w.alive()]
        if dead:
            raise AssertionError(f"worker(s) {dead} exited during the fault")
        time.sleep(0.02)
