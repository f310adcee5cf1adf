"""Multi-region failover with three private ``redis-server`` processes as the regions
(issue 21, "Must show"), short forms; the long forms are the chaos scenario ``regions``
(chaos/scenarios/s15_regions.py).

* A producer adding 50 jobs/s and two worker managers; the primary is SIGKILLed: the
  producer and the workers go on at the new primary (the RTO is measured and recorded:
  ``record_property`` / ``-s``); the jobs acknowledged but not replicated are counted
  (RPO, asynchronous) and are exactly the stranded jobs the old primary reports once
  restarted from its AOF; it refuses writes as the primary; re-submitted, they run. A
  job completes twice only if its first completion, at the old primary, was not
  replicated. In synchronous mode nothing acknowledged is missing.
* A partition: a loopback proxy cuts the primary off from the managers of the other
  regions but not from one producer: the epochs written with each job show that no two
  regions ever accepted jobs as the primary at once; the cut-off primary stops within
  its lease, and what it accepted meanwhile is reported when the partition heals.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from _regions import RegionLoad, Regions, accepted, overlapping_epochs, partition_managers
from helpers import wait_until
from kitium_queue import FencedError

TIMEOUT_MS = 1500


async def missing_on(m: Any, region: str, ids: list[str]) -> list[str]:
    lane = m.region(region).lane
    return [j for j in ids if await lane.get_job_status(j) is None]


async def settled(run: RegionLoad, m: Any, region: str) -> bool:
    st = await m.region(region).lane.get_stats()
    return st.waiting == 0 and st.active == 0 and st.delayed == 0


async def kill_primary_under_load(rg: Regions) -> dict[str, Any]:
    """Run the load, SIGKILL the primary, measure; returns the figures and the run."""
    producer = await rg.manager()
    workers = [await rg.manager(), await rg.manager()]
    run = RegionLoad(rg, producer, workers, rate=50)
    await run.start()
    await asyncio.sleep(1.5)
    t_kill = time.time()
    rg.servers[0].kill()
    await wait_until(
        lambda: run.first_completion_after(t_kill, acked_after=t_kill) is not None,
        TIMEOUT_MS / 1000 + 15,
        interval=0.05,
        message="the producers and workers to go on at a new primary",
    )
    await asyncio.sleep(1.0)
    await run.stop()
    first_ack = min(at for _, at in run.acked.values() if at > t_kill)
    first_done = run.first_completion_after(t_kill, acked_after=t_kill)
    assert first_done is not None
    new = producer.primary
    assert new == rg.names[1] and all(w.primary == new for w in workers)
    await wait_until(lambda: settled(run, producer, new), 15)
    return {
        "run": run,
        "producer": producer,
        "t_kill": t_kill,
        "rto_producer_s": round(first_ack - t_kill, 3),
        "rto_workers_s": round(first_done - t_kill, 3),
    }


async def test_sigkill_primary_async_rpo_is_what_the_old_primary_reports(
    record_property: Any,
) -> None:
    async with Regions(3, aof=True, timeout_ms=TIMEOUT_MS) as rg:
        f = await kill_primary_under_load(rg)
        run: RegionLoad = f["run"]
        m = f["producer"]
        new = m.primary
        lost = await missing_on(m, new, list(run.acked))
        # A job completed twice only if its completion at the old primary came after the
        # last entry of the old primary's stream the new one applied.
        pos_ms = m.region(new).record.position_ms
        twice = run.twice()
        for jid, done in twice.items():
            (first_at, where), *_ = sorted(done)
            assert where == rg.names[0] and first_at * 1000 > pos_ms - 50, (jid, done, pos_ms)
        figures = {
            "rto_producer_s": f["rto_producer_s"],
            "rto_workers_s": f["rto_workers_s"],
            "acked": len(run.acked),
            "rpo_jobs": len(lost),
            "completed_twice": len(twice),
            "add_errors": dict(run.errors),
        }
        record_property("regions_async", figures)
        print("regions async:", figures)
        # Liveness, not speed: the new primary served well within a generous bound.
        assert f["rto_workers_s"] < TIMEOUT_MS / 1000 + 10

        # The old primary comes back from its AOF: it takes no write as the primary...
        rg.servers[0].restart()
        old = m.region(rg.names[0]).lane
        with pytest.raises(FencedError):
            await old.add_job("load", {"n": -1})
        # ...and the jobs it had acknowledged but not replicated are reported.
        await wait_until(lambda: m.region(rg.names[0]).reachable, 10)

        async def reported() -> set[str]:
            return {s.id for s in await m.stranded()}

        await wait_until(lambda: _contains(reported(), lost), 15, message="stranded report")
        stranded = await m.stranded()
        ids = {s.id for s in stranded}
        # Every job missing at the new primary is reported; any other stranded job was
        # written by the old primary as it died, and its add_job failed (never acked).
        assert set(lost) <= ids and not (ids - set(lost)) & set(run.acked)
        assert all(s.region == rg.names[0] and s.epoch == 1 for s in stranded)
        got = await m.resubmit_stranded()
        assert set(got) == ids and set(got.values()) <= {"added", "exists"}
        assert await missing_on(m, new, list(run.acked)) == []
        assert await m.stranded() == []


async def _contains(aw: Any, wanted: list[str]) -> bool:
    return set(wanted) <= await aw


async def test_sigkill_primary_sync_loses_nothing_acknowledged(record_property: Any) -> None:
    async with Regions(3, timeout_ms=TIMEOUT_MS, mode="sync") as rg:
        f = await kill_primary_under_load(rg)
        run: RegionLoad = f["run"]
        m = f["producer"]
        lost = await missing_on(m, m.primary, list(run.acked))
        figures = {
            "rto_producer_s": f["rto_producer_s"],
            "rto_workers_s": f["rto_workers_s"],
            "acked": len(run.acked),
            "rpo_jobs": len(lost),
            "completed_twice": len(run.twice()),
            "add_errors": dict(run.errors),
        }
        record_property("regions_sync", figures)
        print("regions sync:", figures)
        assert lost == []
        await wait_until(lambda: _all_done(run, m), 15)


async def _all_done(run: RegionLoad, m: Any) -> bool:
    lane = m.region(m.primary).lane
    st = await lane.get_stats()
    return st.completed >= len(run.acked)


async def test_a_partition_never_lets_two_regions_accept_as_primary(record_property: Any) -> None:
    async with Regions(3, timeout_ms=TIMEOUT_MS) as rg:
        proxies, producer, workers, cut_off = await partition_managers(rg)
        try:
            run = RegionLoad(rg, producer, workers, rate=50)
            lone = RegionLoad(rg, cut_off, [], rate=50)
            await run.start()
            await lone.start()
            await asyncio.sleep(1.0)
            t_cut = time.time()
            for p in proxies:
                p.down()
            await wait_until(lambda: producer.primary == rg.names[1], TIMEOUT_MS / 1000 + 10)
            await asyncio.sleep(1.0)
            last_lone = max(at for _, at in lone.acked.values())
            assert lone.errors["FencedError"] > 0  # the cut-off primary refused it
            for p in proxies:
                p.up()
            await wait_until(lambda: cut_off.primary == rg.names[1], 10)
            await run.stop()
            await lone.stop()
            await wait_until(lambda: m_has_stranded(producer), 10)
            jobs = await accepted(producer)
            assert overlapping_epochs(jobs) == []
            epochs = sorted({ep for ep, _ in jobs.values()})
            # One primary before the cut, one after (an election that found no majority
            # may have used an epoch number in between: numbers are not a count).
            assert len(epochs) == 2 and epochs[0] == 1, epochs
            ends = max(ts for ep, ts in jobs.values() if ep == 1)
            starts = min(ts for ep, ts in jobs.values() if ep == epochs[1])
            figures = {
                "old_primary_stopped_after_cut_s": round(last_lone - t_cut, 3),
                "new_primary_started_after_cut_s": round(starts / 1000 - t_cut, 3),
                "gap_s": round((starts - ends) / 1000, 3),
                "refused_on_the_cut_off_side": lone.errors["FencedError"],
                "stranded": len(await producer.stranded()),
            }
            record_property("regions_partition", figures)
            print("regions partition:", figures)
            # Every job the cut-off side had acknowledged exists (or is reported).
            assert set(lone.acked) <= set(jobs)
        finally:
            for p in proxies:
                p.stop()


async def m_has_stranded(m: Any) -> bool:
    return bool(await m.stranded())
