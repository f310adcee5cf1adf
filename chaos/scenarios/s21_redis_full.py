"""Issue 18, item 2: Redis full (``maxmemory`` with ``noeviction``) and Redis unable to
save (``MISCONF`` after a failed background save), each while workers drain.

Two phases, each on its own private ``redis-server``. Two workers (4 slots, lease 5 s)
drain what a producer thread adds continuously (10 jobs of ~2 KB every 20 ms, each with
a unique ``job_id``, kept after completion: the memory in use only grows).

* ``oom``: each cycle caps ``maxmemory`` a few MB above what is in use, so Redis fills
  up during the drain. While it is full: the producer's adds are refused with
  ``WriteRefusedError`` naming the cause, the workers stay alive and keep draining
  (claims and outcomes free or barely grow memory: Redis lets a script that already
  wrote go on), an atomic snapshot passes the consistency check. Then memory is freed
  (the cap lifted) and adds go through again.
* ``misconf``: each cycle makes a background save fail (the server's directory is
  removed from under it): Redis refuses every write, and ``PING``, until a save
  succeeds. The adds are refused whole; nothing completes; a worker started during the
  refusal starts (it waits) and runs jobs once the save is mended. On the long form
  the refusal outlasts the leases: the jobs come back and run again, and the outcomes
  of the first runs are refused by their fencing tokens.

At the end of each phase every acknowledged job has completed, none twice (recorded
completions in the event stream), no job of a refused call exists, the ledger and
consistency check passes, no worker logged a traceback, and each exits 0 on SIGTERM.
"""

from __future__ import annotations

import random
import time
from typing import Any

from helpers import SAVING_SERVER_ARGS, fail_saves, mend_saves  # tests/ (chaos.infra)
from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import RedisServer, Timeout, wait_for
from ..ledger import Ledger, check, snapshot
from ._common import Producer, closing_checks, stats, stop_fleet, tracebacks, wait_final

QUEUE = "full"
PAD = "x" * 2000
HEADROOM = 3 * 1024 * 1024  # bytes of room left above what is in use, per oom cycle


class RefusedProducer(Producer):
    """``Producer`` that also keeps the ids of the calls refused, and one message per
    error type (read once the producer has stopped)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused_ids: list[str] = []
        self.messages: dict[str, str] = {}

    def refused(self, jobs: list[tuple[str, Any, dict[str, Any]]], exc: Exception) -> None:
        self.messages.setdefault(type(exc).__name__, str(exc)[:300])
        self.refused_ids += [options["job_id"] for _, _, options in jobs]


@scenario("redis-full", 21, "Redis full (maxmemory) and unable to save (MISCONF) during a drain")
def run(ctx: Context, res: Result) -> None:
    phases = {phase: one_phase(ctx, res, phase) for phase in ("oom", "misconf")}
    res.figures.update(phases)
    res.figures["refused_adds"] = sum(f["refused_calls"] for f in phases.values())
    res.figures["resume_after_s"] = stats(v for f in phases.values() for v in f.pop("_resume"))


def _job(tag: str) -> Any:
    def make(rnd: random.Random, n: int) -> tuple[str, Any, dict[str, Any]]:
        data = {"ms": rnd.randint(5, 30), "pad": PAD}
        return ("work", data, {"job_id": f"{tag}{n}", "remove_on_complete": False})

    return make


def one_phase(ctx: Context, res: Result, phase: str) -> dict[str, Any]:
    misconf = phase == "misconf"
    srv = RedisServer(*(SAVING_SERVER_ARGS if misconf else ())).start()
    ctx.callback(srv.close)
    saves = ctx.dir / f"{phase}-rdb"
    saves.mkdir(parents=True, exist_ok=True)
    client = ctx.client(srv.url)
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    ledger = Ledger()
    producer = RefusedProducer(
        ctx.producer(srv.url, QUEUE, prefix), ledger, period=0.02, job=_job(phase[0])
    )
    ctx.callback(producer.stop)
    # Each refusal longer than a lease counts a stall for the jobs running through it
    # (their leases could not be renewed): on the long form a job can live through all
    # three, which max_stalled_count=2 would dead-letter (docs/pressure.md).
    fleet = ctx.fleet(srv.url, QUEUE, prefix, sub=phase, concurrency=4, lock_duration=5000,
                      stalled_interval=500, max_stalled=1000)
    workers = [fleet.start(f"{phase}-w1"), fleet.start(f"{phase}-w2")]
    for w in workers:
        w.wait_ready()
    producer.start()

    cycles = ctx.pick(2, 5) if not misconf else ctx.pick(1, 3)
    hold = ctx.pick(1.2, 7.0) if misconf else ctx.pick(1.2, 5.0)
    resume: list[float] = []
    drained_while_refused: list[int] = []
    late: Any = None
    for k in range(cycles):
        label = f"{phase} cycle {k + 1}"
        base = client.zcard(keys.completed)
        wait_for(lambda b=base: client.zcard(keys.completed) >= b + 100, 30,
                 what="progress before the fault")
        refused_before = producer.failures
        if misconf:
            fail_saves(srv.port)
        else:
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", used + HEADROOM)
        try:
            wait_for(lambda r=refused_before: producer.failures >= r + 3, 60,
                     what="Redis to refuse adds")
        except Timeout:
            res.expect(f"{label}: Redis refused adds", False, producer.failures - refused_before)
            break
        if misconf and late is None:  # a worker that starts while writes are refused
            late = fleet.start(f"{phase}-late")
            late.wait_ready()
        done0 = client.zcard(keys.completed)
        t_end = time.monotonic() + hold
        while time.monotonic() < t_end:
            dead = [w.name for w in fleet.procs if not w.alive()]
            if dead:
                break
            time.sleep(0.05)
        res.expect(f"{label}: every worker alive while writes were refused",
                   all(w.alive() for w in fleet.procs), [w.name for w in fleet.procs
                                                          if not w.alive()])
        drained_while_refused.append(client.zcard(keys.completed) - done0)
        snap = snapshot(client, keys)
        c = check(snap, ledger, final=False)
        problems = {kk: len(v) for kk, v in c.problems.items() if v}
        res.expect(f"{label}: consistency check while writes were refused", not problems,
                   problems)
        acked = len(ledger)
        t_free = time.monotonic()
        if misconf:
            mend_saves(srv.port, saves)
        else:
            client.config_set("maxmemory", 0)
        try:
            wait_for(lambda a=acked: len(ledger) > a, 20, what="adds accepted again")
            resume.append(time.monotonic() - t_free)
        except Timeout:
            res.expect(f"{label}: adds accepted again once writes were", False, "")
    ran_late = False
    if late is not None:  # the producer goes on: there is work for every worker
        try:
            wait_for(lambda: any(ln.event == "finish" for ln in late.lines()), 30,
                     what="the worker started during the refusal to run a job")
            ran_late = True
        except Timeout:
            pass
    producer.stop()

    ids = ledger.ids()
    wait_final(ctx, client, keys, ctx.pick(90, 240), ids=ids)
    _, dup = closing_checks(ctx, res, client, keys, fleet, label=f"{phase} final",
                            ledger=ledger)
    refused, errors, messages = producer.refused_ids, sorted(producer.errors), producer.messages
    pipe = client.pipeline(transaction=False)
    for jid in refused:
        pipe.exists(keys.job(jid))
    written = [j for j, e in zip(refused, pipe.execute(), strict=True) if e]
    cause = "background save failed" if misconf else "out of memory"
    res.expect(f"{phase}: adds were refused", bool(refused), len(refused))
    res.expect(f"{phase}: every refusal was WriteRefusedError naming the cause",
               errors == ["WriteRefusedError"] and cause in messages.get("WriteRefusedError", ""),
               messages)
    res.expect(f"{phase}: no job of a refused call was written", not written, written[:5])
    if misconf:
        res.expect("misconf: nothing completed while every write was refused",
                   all(n <= 8 for n in drained_while_refused), drained_while_refused)
        res.expect("misconf: the worker started during the refusal ran jobs afterwards",
                   ran_late, "")
    else:
        res.expect("oom: workers kept draining while Redis was full",
                   all(n > 0 for n in drained_while_refused), drained_while_refused)
    tb = tracebacks(fleet)
    res.expect(f"{phase}: no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet, label=f"{phase} workers")
    return {
        "cycles": cycles,
        "hold_s": hold,
        "jobs_acknowledged": len(ids),
        "refused_calls": len(refused) // 10,
        "refused_errors": errors,
        "completed_while_refused": drained_while_refused,
        "adds_accepted_again_after_s": stats(resume),
        "_resume": resume,
        "extra_runs": dup["extra_runs"],
        "used_memory_bytes": int(client.info("memory")["used_memory"]),
    }

