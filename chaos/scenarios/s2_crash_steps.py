"""Item 2: a worker crash at each step of a job's life.

Two single-slot workers, kept alive by a process manager (the scenario restarts a worker
that died). For each step, N jobs SIGKILL their own worker on their first lease, next
to N control jobs that do the same work without crashing:

    claim  the processor kills the process on entry
    mid    half way through the run
    done   process middleware kills the process after the processor returned, before
           the outcome reached Redis (done but not acknowledged)
    retry  the processor raises on its first execution (a transient failure) and process
           middleware kills the process before the retry is recorded

Checks: nothing lost; every crash job completes; compared with its control jobs a step
adds a *successful* run (the processor returning twice) only at ``done``. Figures per
step: runs, body executions that returned / raised, attempts and stalls recorded,
restart delay after the crash.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..ledger import snapshot
from ._common import closing_checks, stats, stop_fleet, tracebacks, wait_final

QUEUE = "steps"
STEPS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # step: (data, options)
    "claim": ({"ms": 100}, {}),
    "mid": ({"ms": 400}, {}),
    "done": ({"ms": 50}, {}),
    "retry": ({"ms": 50, "fail_first": True}, {"attempts": 3, "backoff": {"type": "fixed",
                                                                        "delay": 100}}),
}
# Successful runs (processor returned) a job should make, with and without its crash.
EXPECTED_SUCCESS = {"claim": 1, "mid": 1, "done": 2, "retry": 1}


@scenario("crash-steps", 2, "Crash at each step: after claim, mid-job, done-not-acked, mid-retry")
def run(ctx: Context, res: Result) -> None:
    lease_ms, sweep_ms = 1000, 250
    n = ctx.pick(2, 8)
    srv = ctx.redis()
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    client = ctx.client(srv.url)
    producer = ctx.producer(srv.url, QUEUE, prefix)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, concurrency=1, lock_duration=lease_ms,
                      stalled_interval=sweep_ms, max_stalled=5)
    for w in [fleet.start(), fleet.start()]:
        w.wait_ready()

    ids: dict[str, list[str]] = {}
    for step, (data, opts) in STEPS.items():
        o = {"remove_on_complete": False, **opts}
        crash_ids = producer.add_jobs([("work", {**data, "crash": step}, o) for _ in range(n)])
        control_ids = producer.add_jobs([("work", dict(data), o) for _ in range(n)])
        ctx.ledger.record(crash_ids, tag=step)
        ctx.ledger.record(control_ids, tag=f"{step}-control")
        ids[step], ids[f"{step}-control"] = crash_ids, control_ids
        wait_final(ctx, client, keys, ctx.pick(40, 120), ids=crash_ids + control_ids,
                   fleet=fleet, keep_alive=2)

    snap = snapshot(client, keys)
    closing_checks(ctx, res, client, keys, fleet)
    lines = fleet.lines()
    per = {ev: Counter(ln.job_id for ln in lines if ln.event == ev)
           for ev in ("start", "finish", "raise", "crash")}
    crash_at = {ln.job_id: ln.t for ln in lines if ln.event == "crash"}
    steps: dict[str, Any] = {}
    for step in STEPS:
        fig: dict[str, Any] = {}
        for kind in (step, f"{step}-control"):
            group = ids[kind]
            fig[kind] = {
                "jobs": len(group),
                "crashes": sum(per["crash"][j] for j in group),
                "runs": sum(per["start"][j] for j in group),
                "returned": sum(per["finish"][j] for j in group),
                "raised": sum(per["raise"][j] for j in group),
                "attempts_recorded": sorted({int(snap.jobs[j]["a"] or 0) for j in group}),
                "stalls_recorded": sorted({int(snap.jobs[j]["s"] or 0) for j in group}),
                "states": dict(Counter(snap.state(j) for j in group)),
            }
        crash, control = fig[step], fig[f"{step}-control"]
        extra_success = (crash["returned"] - control["returned"]) / n
        fig["extra_successful_runs_per_job"] = extra_success
        fig["extra_body_executions_per_job"] = (
            crash["returned"] + crash["raised"] - control["returned"] - control["raised"]
        ) / n
        delays = []
        for j in ids[step]:
            later = [ln.t for ln in lines if ln.event == "start" and ln.job_id == j
                     and j in crash_at and ln.t > crash_at[j]]
            if later:
                delays.append(min(later) - crash_at[j])
        fig["restart_after_crash_s"] = stats(delays)
        steps[step] = fig
        res.expect(f"{step}: every job crashed its worker once", crash["crashes"] == n,
                   crash["crashes"])
        res.expect(f"{step}: all completed", crash["states"] == {"completed": n}
                   and control["states"] == {"completed": n}, [crash["states"],
                                                                control["states"]])
        want = EXPECTED_SUCCESS[step] - 1
        res.expect(f"{step}: extra successful runs per job = {want}", extra_success == want,
                   extra_success)
        bound = lease_ms / 1000 + sweep_ms / 1000 + 2
        res.expect(f"{step}: restarted within lease + sweep + 2 s",
                   len(delays) == n and max(delays) <= bound, stats(delays))
    res.figures["steps"] = steps
    res.figures["jobs_per_step"] = n
    res.figures["extra_successful_runs"] = {s: steps[s]["extra_successful_runs_per_job"]
                                            for s in STEPS}
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet, allow_self_deaths=True)
    res.notes.append(
        "mid-retry: the failed execution's outcome died with the process, so Redis never "
        "counted that attempt; the job came back through lease expiry (stalls=1) and its "
        "next execution succeeded: the same executions as the control job, one attempt "
        "fewer recorded."
    )
