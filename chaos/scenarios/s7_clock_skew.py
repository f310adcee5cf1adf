"""Item 7: worker clocks 60 s apart.

Three workers: one with its wall clock 60 s ahead, one 60 s behind (``time.time``,
``time.time_ns`` and ``datetime.now`` patched in the process before kitium_queue is
imported), one on time. Lease 1 s, renewed every 500 ms, sweep every 200 ms, 2 slots
each; jobs of 1.2-2.4 s, so every job lives on renewals.

Checks while all three run: the skew is really in place (each worker logs what it
believes the time is); no job stalls, none runs twice, no two runs overlap — a worker
that computed lease deadlines from its own clock would see the others' leases as 60 s
expired and steal them. Then the skewed workers are SIGKILLed in turn: their jobs are
re-leased no earlier than the lease deadline Redis holds for them (read from the active
set right after the kill) and no later than lease + sweep + 2 s after the kill.
"""

from __future__ import annotations

import random
import time

from kitium_queue.keys import QueueKeys

from ..core import Context, Result, scenario
from ..infra import overlaps, wait_for
from ..ledger import events_of, snapshot, stream
from ._common import closing_checks, stats, stop_fleet, tracebacks, wait_final

QUEUE = "skew"
SKEWS = {"ahead": 60.0, "behind": -60.0, "ontime": 0.0}


@scenario("clock-skew", 7, "Clock skew of +/-60 s between workers: no early re-lease")
def run(ctx: Context, res: Result) -> None:
    lease_ms, renew_ms, sweep_ms = 1000, 500, 200
    srv = ctx.redis()
    client = ctx.client(srv.url)
    prefix = ctx.prefix()
    keys = QueueKeys(QUEUE, prefix)
    producer = ctx.producer(srv.url, QUEUE, prefix)
    fleet = ctx.fleet(srv.url, QUEUE, prefix, concurrency=2, lock_duration=lease_ms,
                      lock_renew=renew_ms, stalled_interval=sweep_ms, max_stalled=5)
    workers = {name: fleet.start(name, clock_skew=skew or None) for name, skew in SKEWS.items()}
    for w in workers.values():
        w.wait_ready()
    measured = {}
    for name, w in workers.items():
        clock = next(ln for ln in w.lines() if ln.event == "clock")
        measured[name] = round(float(clock.job_id) - clock.t, 3)
    res.figures["skews_s"] = measured
    res.expect("workers' clocks are skewed as configured",
               all(abs(measured[n] - SKEWS[n]) < 0.5 for n in SKEWS), measured)

    # ---------------------------------------------------------------- renewals
    rnd = random.Random(7)
    n = ctx.pick(6, 60)  # short: one job per slot (3 workers x 2), each longer than a lease
    ids = ctx.ledger.record(producer.add_jobs(
        [("work", {"ms": rnd.randint(1200, 2400)}, {"remove_on_complete": False})
         for _ in range(n)]), tag="renewed")
    wait_final(ctx, client, keys, ctx.pick(60, 180), ids=ids)
    events = stream(client, keys.events)
    runs = fleet.runs()
    stalled = events_of(events, "job-stalled")
    by_worker = {name: sum(1 for j in ids for r in runs.get(j, []) if r.pid == w.pid)
                 for name, w in workers.items()}
    ov = overlaps({j: runs.get(j, []) for j in ids}, time.time())
    res.figures["stalls_during_renewal"] = sum(stalled[j] for j in ids)
    res.figures["renewal_phase"] = {"jobs": n, "runs_by_worker": by_worker,
                                    "runs_more_than_once": sum(1 for j in ids
                                                               if len(runs.get(j, [])) > 1),
                                    "overlapping_runs": len(ov)}
    res.expect("every worker ran jobs", all(by_worker.values()), by_worker)
    res.expect("no job stalled while leases were renewed", not any(stalled[j] for j in ids))
    res.expect("no job ran twice", all(len(runs.get(j, [])) == 1 for j in ids))
    res.expect("no two runs of a job overlapped", not ov, ov[:5])

    # ---------------------------------------------------------------- kills
    relet_early: list[str] = []
    relet_delay: list[float] = []
    recover_delay: list[float] = []
    for victim_name in ("ahead", "behind"):
        victim = workers[victim_name]
        more = ctx.ledger.record(producer.add_jobs(
            [("work", {"ms": 1500}, {"remove_on_complete": False})
             # Two per live worker fill every slot, so the victim surely gets some.
             for _ in range(2 * len([w for w in workers.values() if w.alive()]))]),
            tag=f"killed-{victim_name}")
        wait_for(lambda v=victim: len(v.running_jobs()) >= 1, 20,
                 what=f"the {victim_name} worker to be busy")
        held = victim.running_jobs()
        t_kill = victim.kill()
        snap = snapshot(client, keys)
        deadlines = {j: snap.sets["active"].get(j) for j in held}
        wait_final(ctx, client, keys, 30, ids=more)
        events = stream(client, keys.events)
        for j in held:
            claims = [e.ms for e in events if e.event == "job-started" and e.job_id == j]
            recovered = [e.ms for e in events if e.event == "job-stalled" and e.job_id == j]
            deadline = deadlines[j]
            if len(claims) < 2 or not recovered or deadline is None:
                relet_early.append(f"{j}: claims={claims} recovered={recovered} "
                                   f"deadline={deadline}")
                continue
            if recovered[0] < deadline or claims[-1] < deadline:
                relet_early.append(f"{j}: recovered {deadline - recovered[0]:.0f} ms early")
            recover_delay.append(recovered[0] / 1000 - t_kill)
            relet_delay.append(claims[-1] / 1000 - t_kill)
    bound = lease_ms / 1000 + sweep_ms / 1000 + 2
    res.figures["relet_early"] = len(relet_early)
    res.figures["recovered_after_kill_s"] = stats(recover_delay)
    res.figures["reclaimed_after_kill_s"] = stats(relet_delay)
    res.figures["recovery_bound_s"] = bound
    res.expect("killed skewed workers' jobs: not recovered before the Redis lease deadline",
               not relet_early, relet_early[:5])
    res.expect(f"killed skewed workers' jobs: recovered within lease + sweep + 2 s ({bound} s)",
               bool(recover_delay) and max(recover_delay) <= bound, stats(recover_delay))
    res.notes.append("reclaimed_after_kill_s includes waiting for a free slot: the other "
                     "workers were busy with 1.5 s jobs when the recovered jobs went back to "
                     "the queue.")
    closing_checks(ctx, res, client, keys, fleet)
    tb = tracebacks(fleet)
    res.expect("no traceback in worker logs", not tb, tb[:2])
    stop_fleet(res, fleet)
