"""Item 14: a workflow (a random DAG) under worker SIGKILL and Redis restart.

Workers (``--workflows 1``: ``JobChainManager`` on the queue; 4 slots, lease 2 s, sweep
every 250 ms) work through one workflow of 5-30 ms steps, each with 1-4 parents among
the previous 15 steps; some runs raise (``retry_attempts`` 4, fixed 20 ms backoff).
Meanwhile the scenario SIGKILLs a busy worker (a replacement is started) and SIGKILLs
redis-server and restarts it from its AOF (``always``). Checks, from the workers' run
log (outside Redis) and the durable event stream:

* no step starts before every one of its parents' successful runs ended (a parent's
  completion is recorded after its run ends, and releases the step in the same step);
* every step completes exactly once (one ``job-completed`` each), the workflow is
  ``completed`` with nothing unfinished, and nothing is left parked;
* after every restart the state sets match the records, and nothing acknowledged is
  lost.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from kitium_queue import JobChainManager, JobQueue, WorkflowStep
from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import runs_by_job
from ..ledger import check, merge, snapshot, stream
from ._common import (
    apply_faults,
    closing_checks,
    retrying,
    stats,
    stop_fleet,
    tracebacks,
    wait_final,
)

QUEUE = "workflows"
WID = "dag"

__all__ = ["early_starts", "random_dag"]


def random_dag(n: int, rnd: random.Random) -> dict[str, list[str]]:
    """Step name -> its parents: each step has 1-4 parents among the 15 before it."""
    dag: dict[str, list[str]] = {}
    for i in range(n):
        window = list(range(max(0, i - 15), i))
        k = min(len(window), rnd.randint(1, 4))
        dag[f"n{i}"] = [f"n{j}" for j in sorted(rnd.sample(window, k))]
    return dag


def early_starts(dag: dict[str, list[str]], runs: dict[str, list[Any]]) -> list[str]:
    """Steps that started before a successful run of one of their parents ended."""
    out = []
    for step, parents in dag.items():
        mine = runs.get(f"{WID}:{step}", [])
        if not mine:
            continue
        first = min(r.start for r in mine)
        for p in parents:
            ends = [r.end for r in runs.get(f"{WID}:{p}", []) if r.how == "finish" and r.end]
            if not ends or first < max(ends):
                out.append(f"{step} started before parent {p} finished")
    return out


def _submit(url: str, prefix: str, steps: list[WorkflowStep]) -> list[str]:
    async def go() -> list[str]:
        q = JobQueue(QUEUE, redis=url, prefix=prefix)
        try:
            ids = await JobChainManager(q, events=False).execute_workflow(WID, steps)
            return list(ids.values())
        finally:
            await q.close()

    return asyncio.run(go())


def _status(url: str, prefix: str) -> Any:
    async def go() -> Any:
        q = JobQueue(QUEUE, redis=url, prefix=prefix)
        try:
            return await JobChainManager(q, events=False).get_workflow_status(WID)
        finally:
            await q.close()

    return asyncio.run(go())


@scenario("workflows", 14, "a workflow (random DAG) under worker SIGKILL and Redis restart")
def run(ctx: Context, res: Result) -> None:
    lease_ms, sweep_ms = 2000, 250
    n = ctx.pick(100, 600)
    faults = ctx.pick(["kill", "restart", "kill"], ["kill", "restart"] * 4)
    rnd = random.Random(12)
    srv = ctx.redis(appendfsync="always")
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    client = ctx.client(srv.url)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, workflows=1, concurrency=4,
                      lock_duration=lease_ms, stalled_interval=sweep_ms, max_stalled=1000)
    workers = [fleet.start() for _ in range(3)]
    dag = random_dag(n, rnd)
    steps = [WorkflowStep(s, "work", {"ms": rnd.randint(5, 30),
                                      "fail_on": [a for a in range(1, 4) if rnd.random() < 0.1]},
                          depends_on=ps, retry_attempts=4,
                          options={"backoff": {"type": "fixed", "delay": 20},
                                   "remove_on_complete": False})
             for s, ps in dag.items()]
    ctx.ledger.record(_submit(srv.url, prefix, steps), tag="step")
    for w in workers:
        w.wait_ready()

    def live() -> Any:
        snap = snapshot(client, keys)
        parked = [j for j in snap.jobs if snap.state(j) == "pending"]
        return check(snap, ctx.ledger, final=False, ignore=parked)

    done_faults = apply_faults(ctx, res, srv, client, keys, fleet, faults,
                               n // (len(faults) + 2), rnd, live, progress_timeout=90)
    killed, live_checks = done_faults.killed, done_faults.live_checks
    downtimes, interrupted = done_faults.downtimes, done_faults.interrupted
    if live_checks:
        res.checker("right after each Redis restart", merge(live_checks))
    took = wait_final(ctx, client, keys, ctx.pick(120, 400))
    closing_checks(ctx, res, client, keys, fleet)
    runs = runs_by_job(fleet.lines())
    early = early_starts(dag, runs)
    res.expect("no step started before all its parents finished", not early, early[:5])
    done = Counter(e.job_id for e in stream(client, keys.events) if e.event == "job-completed")
    twice = [j for j, c in done.items() if c > 1]
    res.expect("every step completed exactly once",
               not twice and len(done) == n, f"{len(done)}/{n}, twice: {twice[:5]}")
    st = retrying(lambda: _status(srv.url, prefix), 10)
    res.expect("the workflow completed",
               st is not None and st.state == "completed" and st.unfinished == 0,
               None if st is None else (st.state, st.unfinished, st.counts))
    res.expect("nothing is left parked", int(client.hget(keys.meta, "parked") or 0) == 0)
    res.expect("the kills interrupted running steps", interrupted > 0, interrupted)
    res.figures.update({
        "steps": n,
        "kills": len(killed),
        "restarts": len(downtimes),
        "redis_downtime_s": stats(downtimes),
        "interrupted_steps": interrupted,
        "runs": sum(len(rs) for rs in runs.values()),
        "drain_after_last_fault_s": round(took, 2),
        "lease_ms": lease_ms,
    })
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
