"""Erasure of a data subject on a multi-region queue (docs/compliance.md, "Multi-region";
docs/multi-region.md), with two private ``redis-server`` processes as the regions
(``us``, the primary, and ``eu``), the compliance feature on every region's queue.

* ``erase_subject`` at the primary erases the subject's copies at the secondary too:
  waiting, delayed and completed jobs (their data, a completed job's result, its
  idempotency key) are no longer readable there, no key of the secondary holds the
  subject's data any more, and another subject's copies are untouched. Before, only
  the unfinished jobs' removals reached the secondary: a completed copy kept its data
  and result there.
* A secondary that is down (its server stopped) while the primary erases erases its
  copies when it comes back: the erasure waits in the primary's outbox.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _redis import frozen
from helpers import wait_until
from kitium_queue.features.regions import GlobalQueueManager
from regionpair import EU, US, region_pair

#: Ports of the private servers, two per test.
PORTS = {"up": 26360, "down": 26362}
A, B = "ALICE-5e0d", "BOB-91c3"  # markers in each subject's data
SUBJECT_A, SUBJECT_B = "subject-alice", "subject-bob"


def two_regions(port: int) -> Any:
    """Both regions with compliance and exactly-once on each region's queue."""
    return region_pair(
        port,
        "people",
        5000,
        queue_options={
            "advanced": {"compliance": {"enabled": True}, "exactly_once": {"enabled": True}}
        },
    )


async def state_at(m: GlobalQueueManager, region: str, jid: str) -> str | None:
    info = await m.region(region).lane.get_job_status(jid)
    return None if info is None else info.status.value


async def states_at(m: GlobalQueueManager, region: str, ids: dict[str, str]) -> dict[str, Any]:
    return {k: await state_at(m, region, jid) for k, jid in ids.items()}


async def keys_holding(m: GlobalQueueManager, region: str, mark: str) -> list[str]:
    """The keys of the region's server whose content (read whole, by type) or name
    holds ``mark``."""
    client = await m.region(region).lane.client()
    found = []
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        if kind == "string":
            value: Any = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        elif kind == "set":
            value = await client.smembers(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1)
        elif kind == "stream":
            value = await client.xrange(key)
        else:
            value = kind
        if mark.encode() in repr((key, value)).encode():
            found.append(key.decode(errors="replace"))
    return found


async def jobs_of_two_subjects(m: GlobalQueueManager) -> dict[str, dict[str, str]]:
    """For each subject: a completed job (with a result and an idempotency key), then a
    waiting and a delayed one; every copy at the secondary as at the primary."""

    @m.process("serve")
    async def serve(job: Any) -> dict[str, Any]:
        return {"echo": job.data["m"]}

    ids: dict[str, dict[str, str]] = {A: {}, B: {}}
    for mark, subject in ((A, SUBJECT_A), (B, SUBJECT_B)):
        ids[mark]["completed"] = await m.add_job(
            "serve", {"m": mark}, subject_id=subject, idempotency_key=f"order-{mark}"
        )
    await m.start(concurrency=2)

    async def copied(state: str, which: str) -> bool:
        return all([await state_at(m, r, ids[k][which]) == state for r in (US, EU) for k in (A, B)])

    await wait_until(lambda: copied("completed", "completed"), 10)
    # Held at the primary from now on: the next jobs stay waiting.
    await m.region(US).lane.pause()
    for mark, subject in ((A, SUBJECT_A), (B, SUBJECT_B)):
        ids[mark]["waiting"] = await m.add_job("serve", {"m": mark}, subject_id=subject)
        ids[mark]["delayed"] = await m.add_job(
            "serve", {"m": mark}, subject_id=subject, delay=3_600_000
        )
    await wait_until(lambda: copied("delayed", "delayed"), 10)
    # Waiting (shown as paused at the primary, where the queue is paused).
    assert await state_at(m, US, ids[A]["waiting"]) == "paused"
    assert await state_at(m, EU, ids[A]["waiting"]) == "waiting"
    copy = await m.region(EU).lane.get_job_status(ids[A]["completed"])
    assert copy is not None and copy.result == {"echo": A}
    assert await keys_holding(m, EU, A)
    assert await keys_holding(m, EU, SUBJECT_A)
    return ids


async def erased_at(m: GlobalQueueManager, region: str, ids: dict[str, str]) -> Any:
    """True once no copy of ``ids`` is left there, else what is left."""
    left = {k: s for k, s in (await states_at(m, region, ids)).items() if s is not None}
    return True if not left else Left(left)


class Left(dict[str, Any]):
    """What ``erased_at`` found left (falsy, shown in the failure)."""

    def __bool__(self) -> bool:
        return False


async def traces(m: GlobalQueueManager, region: str) -> Any:
    """True once no key there holds the subject's data or id, else those keys."""
    found = await keys_holding(m, region, A) + await keys_holding(m, region, SUBJECT_A)
    return True if not found else Left({k: "" for k in found})


async def check_erased(m: GlobalQueueManager, ids: dict[str, dict[str, str]]) -> None:
    for region in (US, EU):
        for jid in ids[A].values():
            assert await m.region(region).lane.get_job_status(jid) is None, (region, jid)
        # The primary's outbox keeps the replicated entries until every region applied
        # them, then trims them (about every second).
        await wait_until(lambda r=region: traces(m, r), 10, message=f"traces at {region}")
        # The other subject's copies are whole.
        assert await states_at(m, region, ids[B]) == {
            "completed": "completed",
            "waiting": "paused" if region == US else "waiting",
            "delayed": "delayed",
        }
        copy = await m.region(region).lane.get_job_status(ids[B]["completed"])
        assert copy is not None and copy.result == {"echo": B}
    assert await keys_holding(m, EU, B)


async def test_an_erasure_at_the_primary_erases_the_copies_at_the_secondary() -> None:
    async with two_regions(PORTS["up"]) as (m, _):
        ids = await jobs_of_two_subjects(m)
        report = await m.region(US).lane.advanced.compliance.erase_subject(SUBJECT_A)
        assert report.jobs == 3
        await wait_until(lambda: erased_at(m, EU, ids[A]), 10, message=f"left at {EU}")
        await check_erased(m, ids)


async def test_a_secondary_down_during_the_erasure_erases_when_it_comes_back() -> None:
    async with two_regions(PORTS["down"]) as (m, servers):
        ids = await jobs_of_two_subjects(m)
        primary = m.region(US).lane
        client = await primary.client()
        outbox = primary.keys.extra("outbox")
        with frozen(servers[1]):
            report = await primary.advanced.compliance.erase_subject(SUBJECT_A)
            assert report.jobs == 3
            # Not applied there: the erasure waits in the primary's outbox, in the
            # secondary's group.
            await asyncio.sleep(0.5)
            groups = {g["name"]: g for g in await client.xinfo_groups(outbox)}
            group = groups[b"rg:" + EU.encode()]
            assert int(group["pending"]) + int(group.get("lag") or 0) > 0
        await wait_until(lambda: erased_at(m, EU, ids[A]), 15, message=f"left at {EU}")
        await check_erased(m, ids)
