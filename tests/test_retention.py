"""Retention (issue 22): compliance periods per state enforced by the leader-only
retention service — after the period a raw read of the whole keyspace holds nothing of
the expired jobs (records, logs, results, stored exactly-once results and their keys,
DLQ entries, indexes, workflow copies, events) while jobs not yet expired stay — and
cost-optimization limits (count and age per state, the DLQ included)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from _keyspace import holding, raw_keyspace, uncompressed_dump  # noqa: F401 (fixture)
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobStatus
from kitium_queue.features.retention import Retention

OLD, NEW = "EXPIRED-5e0a", "FRESH-77b2"


@pytest.mark.redis_only
@pytest.mark.usefixtures("uncompressed_dump")
async def test_after_the_period_nothing_of_expired_jobs_is_left(
    make_queue: QueueFactory,
    prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    q = make_queue(
        "ret",
        retry={"max_attempts": 1},
        worker={"scheduler": False},
        advanced={
            "exactly_once": {"enabled": True},
            "workflows": {"enabled": True},
            "compliance": {
                "enabled": True,
                # Long enough that a loaded machine still sees every key before it.
                "retention": {"completed": 1500, "dlq": 1500},
                "sweep_interval_ms": 100,
            },
        },
    )
    assert q.idempotency_ttl == 1500  # capped to the shortest period

    async def process(job: Any) -> Any:
        await job.log(f"line of {job.data['m']}")
        await job.update_progress({"p": job.data["m"]})
        if job.name == "fail":
            raise ValueError(f"failed {job.data['m']}")
        return {"r": job.data["m"]}

    q.process("*", process)
    d = {"m": OLD}
    old_ids = [
        await q.add_job("ok", d, job_id=f"{OLD}-done", subject_id=f"s-{OLD}"),
        await q.add_job("fail", d, job_id=f"{OLD}-dead", subject_id=f"s-{OLD}"),
        await q.add_job(
            "ok",
            d,
            job_id=f"{OLD}-eo",
            delivery_guarantee="exactly-once",
            idempotency_key=f"key-{OLD}",
        ),
    ]
    wf = await q.advanced.workflows.execute_workflow(
        "wf-1", [{"name": "a", "job_name": "ok", "data": d}]
    )
    fresh = await q.add_job("ok", {"m": NEW}, job_id=f"{NEW}-later", delay=3_600_000)
    await q.start()
    for jid in (*old_ids, wf["a"]):
        await wait_for_status(q, jid, JobStatus.COMPLETED, JobStatus.DLQ)
    before = await raw_keyspace(redis_client, prefix)
    assert {k.decode().split("}:", 1)[1].split(":", 1)[0] for k in holding(before, OLD)} >= {
        "job",
        "logs",
        "idem-r",
        "idem",
        "dep",
        "subj",
        "subjects",
        "events",
        "completed",
        "dlq",
    }

    # The leader's retention service erases them once the period is over.
    async def gone() -> bool:
        return all([await q.get_job_status(j) is None for j in (*old_ids, wf["a"])])

    await wait_until(gone, timeout=10)
    await wait_until(lambda: _no_trace(redis_client, prefix), timeout=10)
    after = await raw_keyspace(redis_client, prefix)
    assert holding(after, OLD) == []
    # Not expired: still whole.
    info = await q.get_job_status(fresh)
    assert info is not None and info.data == {"m": NEW} and info.status is JobStatus.DELAYED
    assert holding(after, NEW)


async def _no_trace(client: aioredis.Redis, prefix: str) -> bool:
    return holding(await raw_keyspace(client, prefix), OLD) == []


async def test_cost_limits_per_state(make_queue: QueueFactory) -> None:
    q = make_queue(
        "limits",
        retry={"max_attempts": 1},
        worker={"scheduler": False},
        advanced={
            "exactly_once": {"enabled": True},
            "cost_optimization": {
                "enabled": True,
                "compression": {"enabled": False},
                "retention": {"completed": {"count": 2}, "dlq": {"count": 1}},
                "sweep_interval_ms": 3_600_000,
            },
        },
    )
    ret = q.advanced.retention
    # The limits became the queue's default retention of completed jobs.
    assert q.policy.keep_completed.count == 2

    async def process(job: Any) -> Any:
        if job.name == "fail":
            raise ValueError("no")
        return job.data

    q.process("*", process)
    done = [
        await q.add_job("ok", {"i": i}, delivery_guarantee="exactly-once", idempotency_key=f"k{i}")
        for i in range(5)
    ]
    dead = [await q.add_job("fail", {"i": i}) for i in range(3)]
    await q.start()
    await wait_until(lambda: _settled(q, [*done, *dead]))
    # The leader's first pass may have run already: the rules hold either way.
    report = await ret.run_once()
    assert report.deleted["completed"] == 0 and report.deleted["dlq"] in (0, 2)
    assert [j for j in dead if await q.get_job_status(j)] == [dead[-1]]
    assert [j for j in done if await q.get_job_status(j)] == done[-2:]
    # An ordinary deletion keeps the result stored under an exactly-once key.
    stored = await q.advanced.exactly_once.get_result("k0")
    assert stored is not None and stored.result == {"i": 0}


async def _settled(q: Any, ids: list[str]) -> bool:
    """Every job finished (or already deleted by retention)."""
    finished = (JobStatus.COMPLETED, JobStatus.DLQ)
    infos = [await q.get_job_status(j) for j in ids]
    return all(i is None or i.status in finished for i in infos)


async def test_age_limits_and_by_hand(make_queue: QueueFactory) -> None:
    q = make_queue("ages", dlq={"enabled": False}, retry={"max_attempts": 1})
    ret = Retention(q, run_service=False)
    assert Retention.of(q) is ret
    # Ages long enough that a loaded machine still reads the first run as too early.
    ret.set_limit("failed", age_ms=2000)
    ret.set_limit("completed", count=100, age_ms=2000)

    def process(job: Any) -> Any:
        if job.data:
            raise ValueError("x")

    q.process("n", process)
    ids = [await q.add_job("n", {"f": True}), await q.add_job("n", None)]
    await q.start()
    await wait_for_status(q, ids[0], JobStatus.FAILED)
    await wait_for_status(q, ids[1], JobStatus.COMPLETED)
    assert (await ret.run_once()).total == 0  # not old enough yet
    await asyncio.sleep(2.1)
    report = await ret.run_once()
    assert report.deleted == {"completed": 1, "failed": 1}
    assert [await q.get_job_status(j) for j in ids] == [None, None]
    assert ret.to_dict()["states"]["failed"] == {"count": None, "age_ms": 2000, "period_ms": None}
    for bad in (lambda: ret.set_limit("waiting", count=1), lambda: ret.set_period("dlq", 0)):
        with pytest.raises(ConfigurationError):
            bad()
    with pytest.raises(ConfigurationError, match="already has retention rules"):
        Retention(q)


async def test_a_rewritten_event_stream_keeps_its_last_id(make_queue: QueueFactory) -> None:
    """Entries left out of a rewrite (the newest ones included, or all of them) never
    let a later entry take an id lower than one a reader has seen: a reader that goes on
    from the last id it read misses nothing."""
    from kitium_queue.features.retention.stream import rewrite_events

    q = make_queue("ids")
    client = await q.client()
    key = q.keys.events
    for i in range(5):
        await client.xadd(key, {"n": str(i), "drop": "1" if i >= 3 else "0"})
    seen = (await client.xrevrange(key, count=1))[0][0]  # a reader read up to here
    assert await rewrite_events(q, drop=lambda f: f.get(b"drop") == b"1") == 2
    assert len(await client.xrange(key)) == 3
    assert (await client.xinfo_stream(key))["last-generated-id"] == seen
    new = await client.xadd(key, {"n": "after"})
    rows = (await client.xread({key: seen}))[0][1]
    assert [r[0] for r in rows] == [new]
    # Every entry left out: the stream is emptied, not deleted, and keeps its last id.
    seen = new
    assert await rewrite_events(q, drop=lambda f: True) == 4
    assert await client.exists(key) == 1 and await client.xlen(key) == 0
    after = await client.xadd(key, {"n": "later"})
    rows = (await client.xread({key: seen}))[0][1]
    assert [r[0] for r in rows] == [after]
