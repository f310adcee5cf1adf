"""Item 9: FIFO message groups under worker SIGKILL and Redis restart (AOF ``always``).

Workers (``--fifo-groups 1``: ``FIFOQueueManager`` on the queue; 4 slots, lease 2 s,
sweep every 250 ms) work through groups of 5-30 ms jobs, some of whose runs raise
(attempts 5, fixed 20 ms backoff), while the scenario alternately SIGKILLs a busy
worker (a replacement is started) and SIGKILLs redis-server and restarts it from its
AOF. Checks, from the workers' run log (start/end of every run, outside Redis) and the
durable event stream:

* each group's runs go in enqueue order, and so do its recorded completions;
* no two runs of a group overlap in time; a run cut by a SIGKILL keeps its group's
  turn: the next run of its group is the same job, started after the kill;
* after every restart the state sets match the records, and nothing acknowledged is
  lost (``always``); at the end every job completed, no job completed twice, and every
  group gave its turns back (no turn, nothing in its line).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from kitium_queue import JobQueue
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import Run, runs_by_job
from ..ledger import StreamEvent, merge, snapshot, stream
from ._common import (
    apply_faults,
    closing_checks,
    live_parked_check,
    stats,
    stop_fleet,
    tracebacks,
    wait_final,
)

QUEUE = "groups"
T = TypeVar("T")

__all__ = [
    "completion_violations", "group_violations", "leftover_turns", "live_check",
    "with_manager",
]


def group_violations(
    runs: dict[str, list[Run]], order: dict[str, list[str]], killed: dict[int, float]
) -> dict[str, list[str]]:
    """Checks of the per-group run ledger.

    ``runs``: job id -> its runs (``chaos.infra.runs_by_job`` without death times, so a
    run cut by a SIGKILL has no end); ``order``: group -> job ids in enqueue order;
    ``killed``: pid -> time of its SIGKILL. Returns the violations by kind: ``order``
    (a run of a later job before a run of an earlier one), ``overlap`` (a run started
    before the group's previous run ended), ``killed`` (after a killed run, its group
    ran another job, or ran before the kill; or a run without an end whose process was
    not killed).
    """
    out: dict[str, list[str]] = {"order": [], "overlap": [], "killed": []}
    for g, ids in order.items():
        index = {j: i for i, j in enumerate(ids)}
        rs = sorted((r for j in ids for r in runs.get(j, [])), key=lambda r: r.start)
        for a, b in itertools.pairwise(rs):
            if index[b.job_id] < index[a.job_id]:
                out["order"].append(f"{g}: {b.job_id} ran after {a.job_id}")
            if a.end is not None:
                if b.start < a.end:
                    out["overlap"].append(
                        f"{g}: {b.job_id} started {a.end - b.start:.4f} s before "
                        f"{a.job_id} ended")
            elif a.pid in killed:
                if b.job_id != a.job_id or b.start < killed[a.pid]:
                    out["killed"].append(
                        f"{g}: {b.job_id} started {b.start - killed[a.pid]:+.3f} s after the "
                        f"kill of {a.job_id}'s run")
            else:
                out["killed"].append(f"{g}: run of {a.job_id} has no end, pid {a.pid} alive")
        if rs and rs[-1].end is None and rs[-1].pid not in killed:
            out["killed"].append(f"{g}: the last run ({rs[-1].job_id}) has no end")
    return out


def completion_violations(
    events: Sequence[StreamEvent], order: dict[str, list[str]]
) -> list[str]:
    """Groups whose recorded completions (``job-completed`` in the durable stream,
    written atomically with the transition) are not in enqueue order."""
    group_of = {j: (g, i) for g, ids in order.items() for i, j in enumerate(ids)}
    done: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.event == "job-completed" and e.job_id in group_of:
            g, i = group_of[e.job_id]
            done[g].append(i)
    return [f"{g}: completions in positions {seq[:20]}" for g, seq in done.items()
            if seq != sorted(seq)]


def with_manager(
    url: str, prefix: str, queue: str,
    fn: Callable[[FIFOQueueManager], Coroutine[Any, Any, T]],
) -> T:
    """Run ``fn(manager)`` on a fresh ``JobQueue`` with groups enabled (from sync code)."""

    async def go() -> T:
        q = JobQueue(queue, redis=url, prefix=prefix)
        try:
            return await fn(FIFOQueueManager(q))
        finally:
            await q.close()

    return asyncio.run(go())


def live_check(client: Any, keys: QueueKeys, ledger: Any) -> Any:
    """The ledger/consistency check while workers run: a job parked in its group's line
    (``st`` pending) is in no state set, so it must be in its blocker's set instead."""
    return live_parked_check(client, keys, ledger)


def leftover_turns(url: str, prefix: str, queue: str, groups: Iterable[str]) -> list[str]:
    """Groups that still hold a turn or have jobs in their line."""

    async def read(m: FIFOQueueManager) -> list[str]:
        out = []
        for g in groups:
            s = await m.get_group_stats(g)
            if s.turns or s.waiting or s.held or s.size:
                out.append(f"{g}: size {s.size}, waiting {s.waiting}, turns "
                           f"{[t.job_id for t in s.turns]}")
        return out

    return with_manager(url, prefix, queue, read)


@scenario("groups", 9, "FIFO message groups under worker SIGKILL and Redis restart")
def run(ctx: Context, res: Result) -> None:
    lease_ms, sweep_ms = 2000, 250
    n_groups, per_group = ctx.pick((60, 25), (200, 50))
    faults = ctx.pick(["kill", "restart", "kill"], ["kill", "restart"] * 5)
    rnd = random.Random(9)
    srv = ctx.redis(appendfsync="always")
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    client = ctx.client(srv.url)
    producer = ctx.producer(srv.url, QUEUE, prefix)
    FIFOQueueManager(producer.queue)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, fifo_groups=1, concurrency=4,
                      lock_duration=lease_ms, stalled_interval=sweep_ms, max_stalled=1000)
    workers = [fleet.start() for _ in range(3)]

    order: dict[str, list[str]] = defaultdict(list)
    jobs = []
    for j in range(per_group):
        for gi in range(n_groups):
            g, jid = f"g{gi}", f"g{gi}-{j}"
            order[g].append(jid)
            fail_on = [a for a in range(1, 4) if rnd.random() < 0.1]
            jobs.append(("work", {"ms": rnd.randint(5, 30), "fail_on": fail_on},
                         {"job_id": jid, "message_group_id": g, "attempts": 5,
                          "backoff": {"type": "fixed", "delay": 20},
                          "remove_on_complete": False}))
    for i in range(0, len(jobs), 500):
        ctx.ledger.record(producer.add_jobs(jobs[i:i + 500]), tag="group")
    for w in workers:
        w.wait_ready()

    done_faults = apply_faults(
        ctx, res, srv, client, keys, fleet, faults, len(jobs) // (len(faults) + 2), rnd,
        lambda: live_check(client, keys, ctx.ledger))
    killed, live_checks = done_faults.killed, done_faults.live_checks
    downtimes, interrupted = done_faults.downtimes, done_faults.interrupted
    if live_checks:
        res.checker("right after each Redis restart", merge(live_checks))
    took = wait_final(ctx, client, keys, ctx.pick(90, 300))
    closing_checks(ctx, res, client, keys, fleet)
    runs_all = fleet.runs()  # killed runs end at the kill (for the figures)
    runs = runs_by_job(fleet.lines())
    bad = group_violations(runs, order, killed)
    res.expect("each group's runs in enqueue order", not bad["order"], bad["order"][:5])
    res.expect("no two runs of a group overlap", not bad["overlap"], bad["overlap"][:5])
    res.expect("a killed run keeps its group's turn until it runs again after the kill",
               not bad["killed"], bad["killed"][:5])
    events = stream(client, keys.events)
    late = completion_violations(events, order)
    res.expect("each group's recorded completions in enqueue order", not late, late[:5])
    snap = snapshot(client, keys)
    done = sum(1 for j in ctx.ledger.ids() if snap.state(j) == "completed")
    res.expect("every job completed", done == len(ctx.ledger), f"{done}/{len(ctx.ledger)}")
    left = leftover_turns(srv.url, prefix, QUEUE, order)
    res.expect("every group gave its turns back", not left, left[:5])
    res.expect("the kills interrupted running jobs", interrupted > 0, interrupted)
    raised = sum(1 for rs in runs_all.values() for r in rs if r.how == "raise")
    res.figures.update({
        "groups": n_groups,
        "jobs_per_group": per_group,
        "jobs": len(ctx.ledger),
        "kills": len(killed),
        "restarts": len(downtimes),
        "redis_downtime_s": stats(downtimes),
        "interrupted_jobs": interrupted,
        "runs": sum(len(rs) for rs in runs_all.values()),
        "raised_runs": raised,
        "drain_after_last_fault_s": round(took, 2),
        "lease_ms": lease_ms,
    })
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
