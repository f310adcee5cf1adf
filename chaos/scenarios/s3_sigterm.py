"""Item 3: SIGTERM (graceful stop).

Part A — under load: three workers (4 slots, 5 s grace, 30 s lease so lease expiry
cannot rescue anything within the run, every claim delayed 150 ms like a slow link so
that SIGTERM often lands while a claim is on the wire) work through 20-150 ms jobs; a
busy worker gets SIGTERM again and again and is replaced. Checks: exit code 0 within
grace + 2 s; nothing lost; no job run twice; no job stalled; jobs the stopping worker
had claimed but not started (the claim in flight) are handed back (``job-released`` in
the durable stream) within 1 s of the signal.

Part B — jobs longer than the grace period: a worker with a 1 s grace period runs jobs
of 60 s and gets SIGTERM. Checks: it exits within grace + 2 s; at that moment the jobs
are already ``waiting`` again (attempt not spent, no stall), handed back explicitly at
~grace, not by lease expiry 30 s later; another worker then completes them.
"""

from __future__ import annotations

import random
import signal
import time

import redis

from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import wait_for
from ..ledger import Ledger, check, events_of, merge, snapshot, stream
from ._common import closing_checks, stats, stop_fleet, tracebacks, wait_final

QUEUE = "sigterm"


@scenario("sigterm", 3, "SIGTERM: graceful stop, hand-back of unstarted and over-long jobs")
def run(ctx: Context, res: Result) -> None:
    srv = ctx.redis()
    client = ctx.client(srv.url)
    part_a(ctx, res, srv.url, client)
    part_b(ctx, res, srv.url, client)


def part_a(ctx: Context, res: Result, url: str, client: redis.Redis) -> None:
    grace_ms, lease_ms = 5000, 30_000
    terms = ctx.pick(3, 12)
    rnd = random.Random(3)
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    producer = ctx.producer(url, QUEUE, prefix)
    fleet = ctx.fleet(url, QUEUE, prefix, sub="a", concurrency=4, lock_duration=lease_ms,
                      shutdown_timeout=grace_ms, slow_claim_ms=150)
    for w in [fleet.start() for _ in range(3)]:
        w.wait_ready()

    def add(n: int) -> None:
        jobs = [("work", {"ms": rnd.randint(20, 150)}, {"remove_on_complete": False})
                for _ in range(n)]
        ctx.ledger.record(producer.add_jobs(jobs), tag="load")

    add(200)
    log: list[dict[str, object]] = []
    live_checks = []
    for _ in range(terms):
        if client.zcard(keys.wait) < 60:
            add(150)
        busy = wait_for(lambda: [w for w in fleet.live() if w.running_jobs()], 20,
                        what="a busy worker")
        victim = rnd.choice(busy)
        running = victim.running_jobs()
        t_term = victim.signal(signal.SIGTERM)
        rc = victim.wait(grace_ms / 1000 + 10)
        exit_s = time.time() - t_term
        live_checks.append(check(snapshot(client, keys), ctx.ledger, final=False))
        log.append({"t": t_term, "pid": victim.pid, "rc": rc, "exit_s": exit_s,
                    "running": sorted(running), "left_running": sorted(victim.running_jobs()),
                    "last_line": victim.lines()[-1].event if victim.lines() else None})
        fleet.start().wait_ready()
    res.checker("A: after each SIGTERM", merge(live_checks))
    wait_final(ctx, client, keys, ctx.pick(60, 180))
    _, dup = closing_checks(ctx, res, client, keys, fleet, label="A final")
    events = stream(client, keys.events)
    lines = fleet.lines()
    started_by = {(ln.job_id, ln.pid) for ln in lines if ln.event == "start"}
    handback: list[float] = []
    unstarted = 0
    released = [e for e in events if e.event == "job-released"]
    for e in released:
        # The termination this hand-back belongs to: the latest one before it.
        t_rel = e.ms / 1000
        prior = [x for x in log if float(x["t"]) <= t_rel + 0.002]
        if not prior:
            continue
        term = prior[-1]
        handback.append(t_rel - float(term["t"]))
        if (e.job_id, term["pid"]) not in started_by:
            unstarted += 1
    exits = [float(x["exit_s"]) for x in log]
    stalled = events_of(events, "job-stalled")
    res.figures.update({
        "terminations": len(log),
        "jobs": len(ctx.ledger.ids("load")),
        "grace_ms": grace_ms,
        "claim_delay_ms": 150,
        "exit_after_sigterm_s": stats(exits),
        "running_at_sigterm": sum(len(x["running"]) for x in log),  # type: ignore[arg-type, misc]
        "handed_back": len(released),
        "handed_back_unstarted": unstarted,
        "handback_delay_s": stats(handback),
        "extra_runs": dup["extra_runs"],
        "stalled": sum(stalled.values()),
    })
    res.expect("A: every SIGTERM exits with code 0", all(x["rc"] == 0 for x in log),
               [x["rc"] for x in log])
    res.expect(f"A: exit within grace + 2 s ({grace_ms / 1000 + 2:.0f} s)",
               max(exits) <= grace_ms / 1000 + 2, stats(exits))
    res.expect("A: last log line of a stopped worker is 'exit'",
               all(x["last_line"] == "exit" for x in log), [x["last_line"] for x in log])
    res.expect("A: jobs running at SIGTERM finished in that worker",
               all(not x["left_running"] for x in log), [x["left_running"] for x in log])
    res.expect("A: no job ran twice", dup["extra_runs"] == 0, dup["extra_runs"])
    res.expect("A: no job stalled (nothing waited for lease expiry)", not stalled,
               sorted(stalled)[:5])
    res.expect("A: claimed-but-unstarted jobs handed back within 1 s",
               all(d <= 1.0 for d in handback), stats(handback))
    if not unstarted:
        res.notes.append("A: no SIGTERM landed while a claim was in flight in this run, so "
                         "no claimed-but-unstarted job was handed back")
    tb = tracebacks(fleet)
    res.expect("A: no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet, label="A workers")


def part_b(ctx: Context, res: Result, url: str, client: redis.Redis) -> None:
    grace_ms, lease_ms = 1000, 30_000
    n = ctx.pick(2, 4)
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    producer = ctx.producer(url, QUEUE, prefix)
    fleet = ctx.fleet(url, QUEUE, prefix, sub="b", concurrency=n, lock_duration=lease_ms,
                      shutdown_timeout=grace_ms)
    stopping = fleet.start("stopping").wait_ready()
    ledger = Ledger()
    ids = ledger.record(producer.add_jobs(
        [("work", {"first_ms": 60_000, "ms": 50}, {"remove_on_complete": False})
         for _ in range(n)]), tag="long")
    wait_for(lambda: len(stopping.running_jobs()) == n, 20, what="the long jobs to start")
    t_term = stopping.signal(signal.SIGTERM)
    rc = stopping.wait(grace_ms / 1000 + 10)
    exit_s = time.time() - t_term
    snap = snapshot(client, keys)  # the moment the process is gone
    states = {j: (snap.state(j), int(snap.jobs[j]["a"] or -1), int(snap.jobs[j]["s"] or -1))
              for j in ids}
    events = stream(client, keys.events)
    rel = {e.job_id: e.ms / 1000 - t_term for e in events if e.event == "job-released"}
    claimed = {e.job_id: e.ms / 1000 for e in events if e.event == "job-started"}
    res.figures["over_grace"] = {
        "jobs": n,
        "grace_ms": grace_ms,
        "lease_ms": lease_ms,
        "exit_after_sigterm_s": round(exit_s, 3),
        "released_after_sigterm_s": stats(rel.values()),
        "lease_would_expire_after_sigterm_s": stats(
            claimed[j] + lease_ms / 1000 - t_term for j in ids if j in claimed),
        "state_attempts_stalls_at_exit": sorted({f"{s[0]} a={s[1]} s={s[2]}"
                                                 for s in states.values()}),
    }
    res.expect("B: exit code 0 within grace + 2 s", rc == 0 and exit_s <= grace_ms / 1000 + 2,
               (rc, round(exit_s, 3)))
    res.expect("B: jobs waiting again at exit, no attempt spent, no stall",
               all(s == ("waiting", 0, 0) for s in states.values()), states)
    res.expect("B: handed back explicitly at the end of the grace period",
               len(rel) == n and all(grace_ms / 1000 - 0.05 <= d <= grace_ms / 1000 + 1
                                     for d in rel.values()), rel)
    res.expect("B: 'handed back' logged", "handed back" in stopping.stderr())
    taker = fleet.start("taker").wait_ready()
    wait_final(ctx, client, keys, 20, ids=ids)
    snap = snapshot(client, keys)
    res.expect("B: completed by the next worker, stalls 0",
               all(snap.state(j) == "completed" and snap.result(j)["pid"] == taker.pid
                   and snap.jobs[j]["s"] == b"0" for j in ids),
               {j: (snap.state(j), snap.result(j)) for j in ids})
    closing_checks(ctx, res, client, keys, fleet, label="B final", ledger=ledger)
    stop_fleet(res, fleet, label="B workers")
