"""Issue 21: a multi-region queue through crashes, a planned handover and a partition.

Three private ``redis-server`` processes (AOF ``always``) are the regions; a producer
adds numbered jobs at a steady rate and two worker managers run them (every manager is
its own ``GlobalQueueManager``, as separate processes would be: tests/_regions.py). The
managers of the producer and workers reach region 0 through a loopback proxy; a second,
cut-off producer reaches regions 1 and 2 through proxies.

Phases (asynchronous replication):

1. **crash**: SIGKILL the primary; measure the RTO (producer: first acknowledged add,
   workers: first completion of a job added after the kill); count the jobs
   acknowledged but missing at the new primary (RPO); restart the old primary from its
   AOF: it refuses writes as the primary, and the missing jobs are exactly what it
   reports as stranded; re-submit them.
2. **handover**: once region 0 has rejoined (its stranded work recorded, its copy made
   afresh: a former primary is never promoted before), ``failover_to`` region 0 and
   back, under load: nothing lost, no job completed on both sides of a handover.
3. **partition**: the proxies cut region 0 (the primary again) off from the majority's
   managers and the other regions off from the cut-off producer: region 0 stops taking
   jobs within its lease, region 1 is elected after ``timeout_ms``; healed, what region 0
   accepted meanwhile is reported as stranded and re-submitted.
4. (long form) the crash again, of the new primary.

Then the same crash with synchronous replication: nothing acknowledged is missing.

Checks: every acknowledged job completed in the end; no two epochs overlap in time (from
the epoch and creation time written with every job, stranded ones included); a job
completed twice only if its first completion, at a primary that was then killed, came
after the last entry of that primary's stream the new primary applied; the RTOs within
a generous liveness bound (figures recorded, not asserted tightly). A run that began at
the lost primary before it was lost also explains one more completion: its worker held
the outcome and, stopped on the failover, gave it to the former primary once reachable
again (recorded there as a stranded outcome) while the job ran again, once, at the new
primary.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..core import Context, Result, scenario
from ..infra import ROOT

if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from _regions import (
    RegionLoad,
    Regions,
    accepted,
    overlapping_epochs,
    partition_managers,
    primary_states,
)
from helpers import wait_until


async def _until(cond: Any, timeout: float, what: str) -> Any:
    return await wait_until(cond, timeout, interval=0.05, message=what)


async def _missing(m: Any, ids: list[str]) -> list[str]:
    lane = m.region(m.primary).lane
    return [j for j in ids if await lane.get_job_status(j) is None]


_NOT_DONE: dict[str, Any] = {}


async def _all_completed(m: Any, ids: list[str], *loads: Any) -> bool:
    """Every job of ``ids`` completed at the primary (what is not: in ``_NOT_DONE``,
    with, for the first few, where each copy is and what ``loads`` saw of it)."""
    left = {j: s for j, s in (await primary_states(m, ids)).items() if s != "completed"}
    _NOT_DONE.clear()
    _NOT_DONE.update({"primary": m.primary, "count": len(left), "sample": list(left.items())[:8]})
    if left and len(left) <= 3:
        _NOT_DONE["where"] = {j: await _whereabouts(m, j, loads) for j in left}
    return not left


async def _whereabouts(m: Any, jid: str, loads: tuple[Any, ...]) -> dict[str, Any]:
    """A job's copies (their record fields, a tombstone), stranded records and what the
    loads saw (acknowledged as (n, time), runs, recorded completions)."""
    out: dict[str, Any] = {}
    for r in m.regions:
        c = m.region(r)
        if not c.reachable:
            out[r] = "unreachable"
            continue
        client = await c.lane.client()
        fields = await client.hmget(c.lane.keys.job(jid), "st", "ep", "ts", "a", "rq", "f")
        gone = await client.exists(c.lane.keys.extra("rg:gone:" + jid))
        out[r] = {"fields": [f.decode() if f else None for f in fields], "tombstone": gone}
    out["stranded"] = [
        (s.kind, s.region, s.epoch, s.state, s.here) for s in await m.stranded() if s.id == jid
    ]
    for i, load in enumerate(loads):
        out[f"load{i}"] = {
            "acked": load.acked.get(jid),
            "starts": load.starts.get(jid),
            "completions": load.completions.get(jid),
        }
    return out


#: How long before the new primary's replication position a first completion may be
#: recorded and still not have reached the lost primary's outbox, and how long after the
#: loss a run's start may be recorded and its claim still have been made before it (see
#: ``allows``): the client records both a little after Redis did it.
_FLUSH_SLACK_MS = 250


class _Crashes:
    """The kills (and the partition) of a run: (time, the region lost, the new primary's
    replication position in ms when it took over)."""

    def __init__(self) -> None:
        self.kills: list[tuple[float, str, int]] = []

    def allows(
        self,
        done: list[tuple[float, str | None]],
        starts: Sequence[tuple[float, str | None]] = (),
    ) -> bool:
        """A job completed twice is allowed only as a crash explains it: its first
        completion was recorded at the lost primary after the last entry the new primary
        applied, less ``_FLUSH_SLACK_MS`` (and soon after the loss), or, recorded
        anywhere, it was not recorded at the lost primary before that position while a
        run of the job began there before the loss (that run's outcome was held by its
        worker and reached no primary in time: a worker stopped on the failover gives it
        to the former primary when it is reachable again, a stranded outcome, and the job
        runs again at the new one, once)."""
        (first_at, where), *_ = sorted(done)
        for t, region, pos_ms in self.kills:
            # The completion is recorded when the processor returns; its outcome reaches
            # Redis with the worker's next finish call, tens of ms later on a loaded
            # machine (a job recorded 51 ms before the position was not in it).
            after = first_at * 1000 > pos_ms - _FLUSH_SLACK_MS
            if where == region and after and first_at <= t + 1.0:
                return True
            # A start is recorded when the processor begins, after the claim's reply: a
            # run recorded shortly after the loss may have been claimed before it.
            slack = _FLUSH_SLACK_MS / 1000
            began = [(at, r) for at, r in starts if at <= t + slack and r == region]
            again = sum(1 for at, r in starts if at > t and (at, r) not in began)
            if began and again <= 1 and (where != region or after):
                return True
        return False


async def _crash(
    rg: Regions,
    m: Any,
    run: RegionLoad,
    crashes: _Crashes,
    res: Result,
    label: str,
    earlier: dict[str, tuple[int, float]] | None = None,
) -> list[str]:
    """Kill the primary, wait for the new one to serve; returns the jobs missing there:
    of ``run``'s jobs acknowledged before the kill, and of ``earlier`` (jobs another
    producer had acknowledged: the cut-off side's, resubmitted here from the stranded
    report, so a later crash can strand them again)."""
    old = m.primary
    i = rg.names.index(old)
    t_kill = time.time()
    rg.servers[i].kill()
    await _until(
        lambda: run.first_completion_after(t_kill, acked_after=t_kill) is not None,
        rg.timeout_ms / 1000 + 20,
        f"{label}: the producer and workers to go on at a new primary",
    )
    first_ack = min(at for _, at in run.acked.values() if at > t_kill)
    first_done = run.first_completion_after(t_kill, acked_after=t_kill) or 0.0
    await asyncio.sleep(0.5)
    new = m.primary
    pos = m.region(new).record.position_ms
    crashes.kills.append((t_kill, old, pos))
    acked = {**(earlier or {}), **run.acked}
    lost = await _missing(m, [j for j, (_, at) in acked.items() if at < t_kill])
    res.figures[f"{label}_rto_producer_s"] = round(first_ack - t_kill, 3)
    res.figures[f"{label}_rto_workers_s"] = round(first_done - t_kill, 3)
    res.figures[f"{label}_rpo_jobs"] = len(lost)
    res.expect(
        f"{label}: the new primary serves within timeout_ms + 10 s (liveness)",
        first_done - t_kill < rg.timeout_ms / 1000 + 10,
        f"{first_done - t_kill:.2f} s",
    )
    res.expect(f"{label}: a new primary was elected", new != old, f"{old} -> {new}")
    return lost


async def _restart_and_resubmit(
    rg: Regions, m: Any, region: str, lost: list[str], acked: Any, res: Result, label: str
) -> None:
    i = rg.names.index(region)
    rg.servers[i].restart()
    try:
        await m.region(region).lane.add_job("load", {"n": -1})
        refused = False
    except Exception as exc:
        refused = type(exc).__name__ == "FencedError"
    res.expect(f"{label}: the restarted old primary refuses writes as the primary", refused)

    async def reported() -> bool:
        return set(lost) <= {s.id for s in await m.stranded()}

    await _until(reported, 20, f"{label}: the stranded report")
    stranded = await m.stranded()
    res.figures[f"{label}_stranded"] = len(stranded)
    jobs = {s.id for s in stranded if s.kind == "job"}
    res.expect(
        f"{label}: every job missing at the new primary is reported stranded",
        set(lost) <= jobs,
        {"missing": len(lost), "stranded jobs": len(jobs)},
    )
    # The others were written by the old primary as it died: their add_job failed.
    res.expect(
        f"{label}: every other stranded job was never acknowledged",
        not (jobs - set(lost)) & set(acked),
        sorted((jobs - set(lost)) & set(acked))[:5],
    )
    got = await m.resubmit_stranded()
    res.expect(
        f"{label}: every stranded record applied",
        all(v in ("added", "exists", "ended", "requeued") for v in got.values()),
        got if len(got) < 20 else len(got),
    )


async def _async_run(ctx: Context, res: Result) -> None:
    timeout_ms = ctx.pick(1500, 3000)
    rate = ctx.pick(50, 150)
    crashes = _Crashes()
    async with Regions(3, aof=True, timeout_ms=timeout_ms) as rg:
        proxies, producer, workers, cut_off = await partition_managers(rg)
        try:
            run = RegionLoad(rg, producer, workers, rate=rate)
            await run.start()
            await asyncio.sleep(ctx.pick(1.0, 10.0))

            # 1. crash
            lost = await _crash(rg, producer, run, crashes, res, "crash")
            await _restart_and_resubmit(rg, producer, rg.names[0], lost, run.acked, res, "crash")

            # 2. handover there and back, under load. A former primary is promoted only
            # once it has rejoined (its stranded work recorded, its copy made afresh):
            # promoting it while the replicator empties it lost acknowledged jobs.
            await _until(lambda: producer.region(rg.names[0]).reachable, 20, "region 0 back")
            await _until(lambda: _rejoined(producer, rg.names[0]), 30, "region 0 rejoined")
            t0 = time.time()
            there = await producer.failover_to(rg.names[0])
            await asyncio.sleep(ctx.pick(1.0, 5.0))
            back = await producer.failover_to(rg.names[1])
            await asyncio.sleep(ctx.pick(0.5, 3.0))
            final = await producer.failover_to(rg.names[0])
            t1 = time.time()
            res.figures["handover_ms"] = [there.duration_ms, back.duration_ms, final.duration_ms]
            # A job the first crash explains (it completed at the lost primary, was lost
            # with it and resubmitted, and ran again now) is not the handover's doing.
            straddling = {
                j: done
                for j, done in run.twice().items()
                if any(t0 <= at <= t1 for at, _ in done) and not crashes.allows(done, run.starts[j])
            }
            res.expect(
                "handover: no job completed twice",
                not straddling,
                {
                    "jobs": dict(list(straddling.items())[:5]),
                    "runs": {j: run.starts[j] for j in list(straddling)[:5]},
                    "handover (from, to)": (t0, t1),
                },
            )

            # 3. partition: region 0 (primary) cut off from the majority
            lone = RegionLoad(rg, cut_off, [], rate=rate)
            await lone.start()
            await asyncio.sleep(0.5)
            t_cut = time.time()
            for p in proxies:
                p.down()
            await _until(
                lambda: producer.primary == rg.names[1],
                timeout_ms / 1000 + 20,
                "partition: a new primary",
            )
            # Cut off, the old primary is as good as crashed for the majority: a job it
            # completed just before the cut, its outcome not replicated, runs again.
            new = producer.primary
            crashes.kills.append((t_cut, rg.names[0], producer.region(new).record.position_ms))
            await asyncio.sleep(ctx.pick(1.0, 5.0))
            last_lone = max(at for _, at in lone.acked.values())
            for p in proxies:
                p.up()
            await _until(lambda: cut_off.primary == rg.names[1], 20, "partition healed")
            await lone.stop()
            res.figures["partition_old_primary_stopped_after_s"] = round(last_lone - t_cut, 3)
            res.expect(
                "partition: the cut-off side was refused",
                lone.errors["FencedError"] > 0,
                dict(lone.errors),
            )
            cut_ids = lone.acked_after(t_cut)
            await wait_until(
                lambda: _has(producer, cut_ids),
                20,
                interval=0.2,
                message=lambda: f"partition: stranded report; lacking {_LACKING}",
            )
            got = await producer.resubmit_stranded()
            res.figures["partition_stranded"] = len(got)

            # 4. (long) crash the new primary as well
            if ctx.long:
                lost2 = await _crash(rg, producer, run, crashes, res, "crash2", lone.acked)
                await _restart_and_resubmit(
                    rg, producer, rg.names[1], lost2, {**lone.acked, **run.acked}, res, "crash2"
                )

            await run.stop()
            everything = list(run.acked) + list(lone.acked)
            await wait_until(
                lambda: _all_completed(producer, everything, run, lone),
                60,
                interval=0.2,
                message=lambda: f"every job completed: not yet {_NOT_DONE}",
            )
            jobs = await accepted(producer)
            res.expect(
                "no two epochs overlap in time",
                not overlapping_epochs(jobs),
                overlapping_epochs(jobs),
            )
            res.expect(
                "every acknowledged job exists",
                set(everything) <= set(jobs),
                len(set(everything) - set(jobs)),
            )
            twice = run.twice()
            unexplained = [
                j for j, done in twice.items() if not crashes.allows(done, run.starts[j])
            ]
            res.figures["acked"] = len(everything)
            res.figures["completed_twice"] = len(twice)
            res.figures["add_errors"] = dict(run.errors)
            res.expect(
                "a job completed twice only where a crash explains it",
                not unexplained,
                {
                    "jobs": {j: twice[j] for j in unexplained[:5]},
                    "kills (time, region, new primary's position ms)": crashes.kills,
                    "runs": {j: run.starts[j] for j in unexplained[:5]},
                },
            )
        finally:
            for p in proxies:
                p.stop()


async def _rejoined(m: Any, region: str) -> bool:
    """``region`` knows the current epoch and is no former primary still to rejoin (its
    record, read now). Not only ``former`` unset: a former primary back from a crash
    has it unset until it is told of the new epoch, and is marked then."""
    rec = await m.region(region).op("read")
    current = m.topo.epoch if m.topo is not None else None
    return (
        current is not None and rec.epoch is not None and rec.epoch >= current
        and rec.former is None
    )


_LACKING: dict[str, Any] = {}


async def _has(m: Any, ids: list[str]) -> bool:
    """Every id exists at the primary or is reported stranded (what is not, and where
    its copies are: in ``_LACKING``)."""
    stranded = {s.id for s in await m.stranded()}
    missing = await _missing(m, [i for i in ids if i not in stranded])
    _LACKING.clear()
    for j in missing[:5]:
        where = {}
        for r in m.regions:
            c = m.region(r)
            info = await c.lane.get_job_status(j) if c.reachable else None
            where[r] = None if info is None else info.status.value
        _LACKING[j] = where
    return not missing


async def _sync_run(ctx: Context, res: Result) -> None:
    crashes = _Crashes()
    async with Regions(3, timeout_ms=ctx.pick(1500, 3000), mode="sync") as rg:
        producer = await rg.manager()
        workers = [await rg.manager(), await rg.manager()]
        run = RegionLoad(rg, producer, workers, rate=ctx.pick(50, 150))
        await run.start()
        await asyncio.sleep(ctx.pick(1.0, 10.0))
        lost = await _crash(rg, producer, run, crashes, res, "sync_crash")
        await asyncio.sleep(ctx.pick(0.5, 5.0))
        await run.stop()
        lost += await _missing(producer, list(run.acked))
        res.expect("sync: nothing acknowledged is missing", not lost, lost[:5])
        await _until(lambda: _all_completed(producer, list(run.acked)), 60, "sync: completed")
        twice = run.twice()
        res.figures["sync_completed_twice"] = len(twice)
        res.expect(
            "sync: a job completed twice only where the crash explains it",
            all(crashes.allows(d, run.starts[j]) for j, d in twice.items()),
            list(twice)[:5],
        )


@scenario("regions", 20, "Multi-region: primary SIGKILL, handover, partition; async and sync")
def run(ctx: Context, res: Result) -> None:
    asyncio.run(_async_run(ctx, res))
    asyncio.run(_sync_run(ctx, res))
