"""Item 4: a worker frozen with SIGSTOP for 3 x the lease, then SIGCONT.

Lease 1 s (renewed every 500 ms), sweep every 200 ms, 2 slots per worker.

Phase 1 — leases renew normally: three workers run jobs of 1.5-2.5 s (longer than the
lease, so every job lives on renewals). Checks: no job stalls, none runs twice, no two
runs of a job overlap in time (start/finish lines of the logs).

Phase 2 — freeze cycles: worker F runs two jobs whose first execution would take 30 s;
J1 returns as soon as it notices the process was frozen, J2 keeps running. F gets
SIGSTOP; a rescuer worker starts; 3 x lease later F gets SIGCONT. Checks: both jobs were
re-leased to the rescuer while F was frozen (after their lease expired, not before);
F's outcome is never recorded (J1's completion is rejected by fencing, or the job is
abandoned first); F abandons J2 within one renew interval of waking; the rescuer's
result is the one recorded, once; F stays alive and keeps working.
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import redis

from kitium_queue import SyncJobQueue
from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import Fleet, WorkerProc, overlaps, wait_for
from ..ledger import events_of, snapshot, stream
from ._common import closing_checks, stats, stop_fleet, tracebacks, wait_final

QUEUE = "freeze"


@scenario("freeze", 4, "Worker frozen (SIGSTOP) for 3 x lease: re-lease, fencing, abandon")
def run(ctx: Context, res: Result) -> None:
    lease_ms, renew_ms, sweep_ms = 1000, 500, 200
    srv = ctx.redis()
    client = ctx.client(srv.url)
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    producer = ctx.producer(srv.url, QUEUE, prefix)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, concurrency=2, lock_duration=lease_ms,
                      lock_renew=renew_ms, stalled_interval=sweep_ms, max_stalled=5)
    frozen = fleet.start("frozen")
    others = [fleet.start("a"), fleet.start("b")]
    for w in [frozen, *others]:
        w.wait_ready()

    # ---------------------------------------------------------------- phase 1
    rnd = random.Random(4)
    n = ctx.pick(6, 36)  # short: one job per slot (3 workers x 2), each longer than a lease
    normal = ctx.ledger.record(producer.add_jobs(
        [("work", {"ms": rnd.randint(1500, 2500)}, {"remove_on_complete": False})
         for _ in range(n)]), tag="renewed")
    wait_final(ctx, client, keys, ctx.pick(40, 90), ids=normal)
    events = stream(client, keys.events)
    runs = fleet.runs()
    stalled = events_of(events, "job-stalled")
    ov = overlaps({j: runs.get(j, []) for j in normal}, time.time())
    res.figures["renewal_phase"] = {
        "jobs": n, "job_length_ms": "1500-2500", "lease_ms": lease_ms, "renew_ms": renew_ms,
        "stalled": sum(stalled[j] for j in normal),
        "runs_more_than_once": sum(1 for j in normal if len(runs.get(j, [])) > 1),
        "overlapping_runs": len(ov),
    }
    res.expect("renewal phase: no job stalled", not any(stalled[j] for j in normal))
    res.expect("renewal phase: no job ran twice",
               all(len(runs.get(j, [])) == 1 for j in normal))
    res.expect("renewal phase: no two runs of a job overlapped", not ov, ov[:5])
    for w in others:
        w.signal(signal.SIGTERM)
        w.wait(15)

    # ---------------------------------------------------------------- phase 2
    cycles = []
    for c in range(ctx.pick(1, 3)):
        cycles.append(freeze_cycle(ctx, res, fleet, frozen, producer, client, keys,
                                   lease_ms, renew_ms, c))
    res.figures["freezes"] = len(cycles)
    res.figures["cycles"] = cycles
    res.figures["relet_after_stop_s"] = stats(x for c in cycles for x in c["relet_after_stop_s"])
    res.figures["abandon_after_wake_s"] = stats(c["j2_abandoned_after_wake_s"] for c in cycles
                                                if c["j2_abandoned_after_wake_s"] is not None)
    res.figures["j1_outcomes"] = [c["j1_outcome"] for c in cycles]
    closing_checks(ctx, res, client, keys, fleet)
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)


def freeze_cycle(ctx: Context, res: Result, fleet: Fleet, frozen: WorkerProc,
                 producer: SyncJobQueue, client: redis.Redis, keys: QueueKeys,
                 lease_ms: int, renew_ms: int, cycle: int) -> dict[str, Any]:
    tag = f"cycle {cycle + 1}"
    j1, j2 = ctx.ledger.record(producer.add_jobs([
        ("work", {"first_ms": 30_000, "ms": 3000, "wake": True}, {"remove_on_complete": False}),
        ("work", {"first_ms": 30_000, "ms": 3000}, {"remove_on_complete": False}),
    ]), tag="frozen")
    wait_for(lambda: frozen.running_jobs() >= {j1, j2}, 20, what="F to run both jobs")
    before = snapshot(client, keys)
    deadlines = {j: before.sets["active"].get(j) for j in (j1, j2)}
    t_stop = frozen.signal(signal.SIGSTOP)
    rescuer = fleet.start(f"rescuer{cycle + 1}")
    rescuer.wait_ready()
    wait_for(lambda: rescuer.running_jobs() >= {j1, j2}, 20,
             what="the rescuer to take over both jobs")
    wait_for(lambda: time.time() >= t_stop + 3 * lease_ms / 1000, 10, what="3 x lease")
    t_cont = frozen.signal(signal.SIGCONT)
    wait_final(ctx, client, keys, 30, ids=[j1, j2])
    # F has woken and dealt with both jobs (J1 returned or cancelled, J2 cancelled).
    wait_for(lambda: not (frozen.running_jobs() & {j1, j2}), 10, what="F to drop both jobs")
    lines = frozen.lines()
    err = frozen.stderr()
    events = stream(client, keys.events)
    claims = {j: [e.ms for e in events if e.event == "job-started" and e.job_id == j]
              for j in (j1, j2)}
    relet = {j: claims[j][1] / 1000 - t_stop for j in (j1, j2) if len(claims[j]) > 1}
    early = {}
    for j in (j1, j2):
        deadline = deadlines[j]
        if len(claims[j]) > 1 and deadline is not None and claims[j][1] < deadline:
            early[j] = deadline - claims[j][1]
    f_end = {ln.job_id: ln for ln in lines if ln.job_id in (j1, j2)
             and ln.event in ("finish", "cancel") and ln.t > t_cont}
    j1_how = f_end.get(j1).event if f_end.get(j1) else None
    rejected = f"lease of job {j1} was lost before its outcome" in err
    j1_outcome = ("completion rejected (fencing)" if j1_how == "finish" and rejected
                  else "abandoned before completing" if j1_how == "cancel" else f"? {j1_how}")
    j2_abandon = f_end[j2].t - t_cont if j2 in f_end and f_end[j2].event == "cancel" else None
    snap = snapshot(client, keys)
    recorded = {j: snap.result(j) for j in (j1, j2)}
    res_runs = fleet.runs()
    double = []
    for j in (j1, j2):
        mine = [r for r in res_runs.get(j, []) if r.pid == frozen.pid]
        theirs = [r for r in res_runs.get(j, []) if r.pid == rescuer.pid]
        for m in mine:
            for t in theirs:
                lo, hi = max(t_cont, t.start), min(m.end or time.time(), t.end or time.time())
                if hi > lo:
                    double.append(hi - lo)
    out = {
        "frozen_for_s": round(t_cont - t_stop, 3),
        "relet_after_stop_s": [round(v, 3) for v in relet.values()],
        "relet_before_lease_deadline_ms": early,
        "j1_outcome": j1_outcome,
        "j2_abandoned_after_wake_s": None if j2_abandon is None else round(j2_abandon, 3),
        "ran_twice_at_once_after_wake_s": round(max(double), 3) if double else 0.0,
        "recorded_results_pid": {j: (r or {}).get("pid") for j, r in recorded.items()},
    }
    res.expect(f"{tag}: both jobs re-leased while F was frozen",
               len(relet) == 2 and all(v < t_cont - t_stop for v in relet.values()), relet)
    res.expect(f"{tag}: no re-lease before the lease deadline", not early, early)
    res.expect(f"{tag}: F's outcome never recorded; the rescuer's result recorded",
               all((r or {}).get("pid") == rescuer.pid for r in recorded.values()), recorded)
    res.expect(f"{tag}: J1's completion rejected or J1 abandoned",
               j1_outcome != f"? {j1_how}", j1_outcome)
    res.expect(f"{tag}: F abandons J2 within one renew interval ({renew_ms} ms) of waking",
               j2_abandon is not None and j2_abandon <= renew_ms / 1000, j2_abandon)
    res.expect(f"{tag}: F still alive", frozen.alive())
    rescuer.signal(signal.SIGTERM)
    rescuer.wait(15)
    # F keeps working after losing its leases.
    probe = ctx.ledger.record(producer.add_jobs([("work", {"ms": 10}, {})]), tag="probe")
    wait_final(ctx, client, keys, 15, ids=probe)
    res.expect(f"{tag}: F completes new work after waking",
               (snapshot(client, keys).result(probe[0]) or {}).get("pid") == frozen.pid)
    return out
