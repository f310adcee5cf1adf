"""The producer, query and admin API of ``JobQueue`` on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import (
    ConnectionUnavailableError,
    HealthStatus,
    JobActiveError,
    JobNotFoundError,
    JobQueue,
    JobStateError,
    JobStatus,
    NonRetryableError,
    QueueActiveError,
)

UNREACHABLE = "redis://127.0.0.1:1/0"


async def _hold_active(q: JobQueue, name: str = "hold") -> tuple[str, asyncio.Event]:
    """Start a worker and return (id of a job it is running, event that lets it finish)."""
    release = asyncio.Event()

    async def hold(job: Any) -> str:
        await release.wait()
        return "released"

    q.process(name, hold)
    jid = await q.add_job(name, {})
    await q.start()
    await wait_for_status(q, jid, JobStatus.ACTIVE)
    return jid, release


# ---------------------------------------------------------------- add_job / add_jobs


async def test_add_job_returns_id_and_stores_the_job(make_queue: QueueFactory) -> None:
    q = make_queue()
    first = await q.add_job("send-email", {"to": "a@b.c", "n": [1, 2]}, attempts=5, priority=7)
    second = await q.add_job("send-email")
    assert isinstance(first, str) and first != second
    info = await q.get_job_status(first)
    assert info is not None
    assert (info.id, info.name, info.status) == (first, "send-email", JobStatus.WAITING)
    assert info.data == {"to": "a@b.c", "n": [1, 2]}
    assert (info.attempts, info.max_attempts, info.priority) == (0, 5, 7)
    assert info.created_at is not None and info.started_at is None and info.finished_at is None
    none_data = await q.get_job_status(second)
    assert none_data is not None and none_data.data is None
    assert (await q.get_stats()).waiting == 2


async def test_add_jobs_returns_ids_in_order(make_queue: QueueFactory) -> None:
    q = make_queue()
    ids = await q.add_jobs(
        [
            {"name": "a", "data": {"i": 0}},
            ("b", {"i": 1}),
            ("c", {"i": 2}, {"priority": 3}),
            {"name": "d", "data": {"i": 3}, "opts": {"delay": 60_000}},
            {"name": "e", "data": {"i": 4}, "options": {"attempts": 9}},
        ]
    )
    assert len(ids) == len(set(ids)) == 5
    infos = [await q.get_job_status(i) for i in ids]
    assert [(i.name, i.data["i"]) for i in infos if i] == [
        ("a", 0),
        ("b", 1),
        ("c", 2),
        ("d", 3),
        ("e", 4),
    ]
    assert infos[2] is not None and infos[2].priority == 3
    assert infos[3] is not None and infos[3].status is JobStatus.DELAYED
    assert infos[4] is not None and infos[4].max_attempts == 9
    assert await q.add_jobs([]) == []


async def test_add_jobs_large_batch_spans_several_round_trips(make_queue: QueueFactory) -> None:
    q = make_queue()
    ids = await q.add_jobs([("n", {"i": i}) for i in range(2300)])
    assert len(ids) == len(set(ids)) == 2300
    stats = await q.get_stats()
    assert stats.waiting == 2300
    for k in (0, 999, 1000, 1001, 2299):
        info = await q.get_job_status(ids[k])
        assert info is not None and info.data == {"i": k}


async def test_concurrent_add_job_calls_each_get_their_own_id(make_queue: QueueFactory) -> None:
    q = make_queue()
    ids = await asyncio.gather(*(q.add_job("n", {"i": i}) for i in range(60)))
    assert len(set(ids)) == 60
    for i, jid in enumerate(ids):
        info = await q.get_job_status(jid)
        assert info is not None and info.data == {"i": i}


async def test_duplicate_job_id_returns_existing_and_writes_nothing(
    make_queue: QueueFactory,
) -> None:
    q = make_queue()
    jid = await q.add_job("order", {"v": 1}, job_id="order-42")
    assert jid == "order-42"
    client = await q.client()
    events_before = await client.xlen(q.keys.events)
    again = await q.add_job("other-name", {"v": 2}, job_id="order-42", priority=9, delay=5000)
    assert again == "order-42"
    info = await q.get_job_status(jid)
    assert info is not None
    assert (info.name, info.data, info.priority, info.status) == (
        "order",
        {"v": 1},
        0,
        JobStatus.WAITING,
    )
    assert await client.xlen(q.keys.events) == events_before
    stats = await q.get_stats()
    assert (stats.waiting, stats.delayed) == (1, 0)
    # In a batch too, also against a job of the same batch.
    ids = await q.add_jobs(
        [
            ("x", 1, {"job_id": "order-42"}),
            ("y", 2, {"job_id": "fresh"}),
            ("z", 3, {"job_id": "fresh"}),
        ]
    )
    assert ids == ["order-42", "fresh", "fresh"]
    fresh = await q.get_job_status("fresh")
    assert fresh is not None and fresh.name == "y"
    assert (await q.get_stats()).waiting == 2


async def test_duplicate_idempotency_key_returns_original_id(make_queue: QueueFactory) -> None:
    q = make_queue()
    first = await q.add_job("charge", {"amount": 10}, idempotency_key="charge-7")
    second = await q.add_job("charge", {"amount": 999}, idempotency_key="charge-7")
    other = await q.add_job("charge", {"amount": 10}, idempotency_key="charge-8")
    assert second == first and other != first
    info = await q.get_job_status(first)
    assert info is not None and info.data == {"amount": 10}
    assert info.options.get("idempotency_key") == "charge-7"
    assert (await q.get_stats()).waiting == 2
    batch = await q.add_jobs(
        [
            ("charge", 1, {"idempotency_key": "charge-9"}),
            ("charge", 2, {"idempotency_key": "charge-9"}),
        ]
    )
    assert batch[0] == batch[1]
    assert (await q.get_stats()).waiting == 3


async def test_idempotency_key_still_dedupes_after_completion(make_queue: QueueFactory) -> None:
    q = make_queue()
    runs: list[str] = []

    @q.process("charge")
    async def charge(job: Any) -> str:
        runs.append(job.id)
        return "done"

    first = await q.add_job("charge", {}, idempotency_key="once")
    await q.start()
    await wait_for_status(q, first, JobStatus.COMPLETED)
    assert await q.add_job("charge", {}, idempotency_key="once") == first
    stats = await q.get_stats()
    assert (stats.waiting, stats.completed) == (0, 1)
    assert runs == [first]


async def test_get_job_status_of_unknown_job(make_queue: QueueFactory) -> None:
    q = make_queue()
    assert await q.get_job_status("does-not-exist") is None
    assert await q.get_job_logs("does-not-exist") == []


async def test_job_info_to_dict(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("a", {"k": "v"}, priority=2)
    info = await q.get_job_status(jid)
    assert info is not None
    d = info.to_dict()
    assert d["status"] == "waiting" and d["data"] == {"k": "v"} and d["priority"] == 2
    assert d["id"] == jid and d["name"] == "a"


# ---------------------------------------------------------------- queries


async def test_get_jobs_by_status_order(make_queue: QueueFactory) -> None:
    q = make_queue()
    low = await q.add_job("n", {}, priority=1)
    high = await q.add_job("n", {}, priority=9)
    low2 = await q.add_job("n", {}, priority=1)
    late = await q.add_job("n", {}, delay=90_000)
    soon = await q.add_job("n", {}, delay=30_000)
    waiting = await q.get_jobs_by_status(JobStatus.WAITING)
    assert [j.id for j in waiting] == [high, low, low2]
    assert [j.id for j in await q.get_jobs_by_status("waiting", limit=2)] == [high, low]
    assert [j.id for j in await q.get_jobs_by_status("delayed")] == [soon, late]
    assert await q.get_jobs_by_status(JobStatus.PAUSED) == []
    assert await q.get_jobs_by_status(JobStatus.PENDING) == []


async def test_finished_jobs_are_listed_newest_first(make_queue: QueueFactory) -> None:
    q = make_queue(worker={"concurrency": 1})
    order: list[str] = []

    @q.process("n")
    async def run(job: Any) -> None:
        order.append(job.id)

    ids = await q.add_jobs([("n", i) for i in range(4)])
    await q.start()
    await wait_until(lambda: len(order) == 4)
    await wait_until(lambda: _count(q, "completed", 4))
    completed = await q.get_jobs_by_status(JobStatus.COMPLETED)
    assert [j.id for j in completed] == list(reversed(ids))
    assert [j.id for j in await q.get_jobs_by_status("completed", limit=1)] == [ids[-1]]


async def _count(q: JobQueue, field: str, n: int) -> bool:
    return bool(getattr(await q.get_stats(), field) == n)


async def test_get_stats_counts_every_state(make_queue: QueueFactory) -> None:
    q = make_queue(worker={"concurrency": 4})
    release = asyncio.Event()

    @q.process("ok")
    async def ok(job: Any) -> str:
        return "fine"

    @q.process("bad")
    async def bad(job: Any) -> None:
        raise NonRetryableError("no")

    @q.process("slow")
    async def slow(job: Any) -> None:
        await release.wait()

    ok_id = await q.add_job("ok")
    bad_id = await q.add_job("bad")
    slow_id = await q.add_job("slow")
    await q.start()
    await wait_for_status(q, ok_id, JobStatus.COMPLETED)
    await wait_for_status(q, bad_id, JobStatus.DLQ)
    await wait_for_status(q, slow_id, JobStatus.ACTIVE)
    await q.pause()
    await q.add_jobs([("ok", 1), ("ok", 2)])
    await q.add_job("ok", delay=60_000)
    stats = await q.get_stats()
    assert stats.to_dict() == {
        "waiting": 2,
        "active": 1,
        "delayed": 1,
        "completed": 1,
        "failed": 0,
        "dlq": 1,
        "paused": 2,
        "is_paused": True,
        "latency_ms": stats.latency_ms,
        "pending": 0,
        "missing_records": 0,
    }
    assert stats["active"] == 1
    release.set()
    await wait_for_status(q, slow_id, JobStatus.COMPLETED)


async def test_latency_is_the_age_of_the_next_job(make_queue: QueueFactory) -> None:
    q = make_queue()
    assert (await q.get_stats()).latency_ms == 0
    await q.add_job("n")
    await wait_until(lambda: _latency_at_least(q, 60), 3)
    await q.add_job("n")  # a newer job behind it does not change the head's age
    assert (await q.get_stats()).latency_ms >= 60
    await q.drain()
    assert (await q.get_stats()).latency_ms == 0


async def _latency_at_least(q: JobQueue, ms: int) -> bool:
    return (await q.get_stats()).latency_ms >= ms


async def test_health_check_healthy(make_queue: QueueFactory) -> None:
    q = make_queue()
    health = await q.health_check()
    assert isinstance(health, HealthStatus)
    assert health and health.healthy and health.error is None
    assert health.redis_latency_ms is not None and health.redis_latency_ms >= 0
    assert health.worker_running is False
    q.process("n", lambda job: None)
    await q.start()
    assert (await q.health_check()).worker_running is True


async def test_health_check_unreachable_is_falsy_and_does_not_raise() -> None:
    q = JobQueue("q", redis=UNREACHABLE)
    try:
        health = await q.health_check()
        assert not health and health.healthy is False
        assert health.error and "cannot reach Redis" in health.error
        assert "127.0.0.1:1" in health.backend
    finally:
        await q.close()


async def test_unreachable_redis_raises_a_clear_error() -> None:
    q = JobQueue("orders", redis=UNREACHABLE)
    q.process("n", lambda job: None)
    try:
        for call in (q.add_job("n", {}), q.get_stats(), q.start()):
            with pytest.raises(ConnectionUnavailableError) as err:
                await call
            msg = str(err.value)
            assert "cannot reach Redis at" in msg and "127.0.0.1:1" in msg
            assert "'orders'" in msg and "redis=" in msg
        assert q.worker is None or not q.worker.running
    finally:
        await q.close()


# ---------------------------------------------------------------- pause / resume / drain / clear


async def test_pause_and_resume_state(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("n")
    await q.pause()
    stats = await q.get_stats()
    assert stats.is_paused and stats.paused == 1 and stats.waiting == 1
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.PAUSED
    assert [j.id for j in await q.get_jobs_by_status(JobStatus.PAUSED)] == [jid]
    await q.add_job("n")  # producers may add while paused
    assert (await q.get_stats()).paused == 2
    await q.resume()
    stats = await q.get_stats()
    assert not stats.is_paused and stats.paused == 0 and stats.waiting == 2
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.WAITING


async def test_drain_removes_jobs_that_have_not_started(make_queue: QueueFactory) -> None:
    q = make_queue()
    active, release = await _hold_active(q)
    await q.pause()  # keep the worker from starting what follows
    waiting = await q.add_jobs([("n", i) for i in range(3)])
    delayed = await q.add_job("n", delay=60_000)
    assert await q.drain(delayed=False) == 3
    assert all([await q.get_job_status(i) is None for i in waiting])
    assert await q.get_job_status(delayed) is not None
    assert await q.drain() == 1
    assert await q.get_job_status(delayed) is None
    assert await q.drain() == 0
    stats = await q.get_stats()
    assert (stats.waiting, stats.delayed, stats.active) == (0, 0, 1)
    release.set()
    await wait_for_status(q, active, JobStatus.COMPLETED)


async def test_drain_more_than_one_batch(make_queue: QueueFactory) -> None:
    q = make_queue()
    await q.add_jobs([("n", i) for i in range(1500)])
    assert await q.drain() == 1500
    assert (await q.get_stats()).waiting == 0


async def test_clear_refused_while_jobs_run_then_forced(make_queue: QueueFactory) -> None:
    q = make_queue()
    active, release = await _hold_active(q)
    await q.pause()
    await q.add_jobs([("n", i) for i in range(3)])
    with pytest.raises(QueueActiveError, match=r"1 jobs are active.*force=True"):
        await q.clear()
    assert (await q.get_stats()).waiting == 3
    await q.clear(force=True)
    stats = await q.get_stats()
    assert (stats.waiting, stats.active, stats.completed) == (0, 0, 0)
    assert await q.get_job_status(active) is None
    release.set()
    # The running job's outcome finds no job to record on: nothing comes back.
    await asyncio.sleep(0.05)
    assert await q.get_job_status(active) is None
    assert (await q.get_stats()).completed == 0


async def test_clear_deletes_every_key(make_queue: QueueFactory) -> None:
    q = make_queue()
    await q.add_jobs([("n", i) for i in range(1200)])
    await q.add_job("n", delay=60_000, job_id="d")
    await q.pause()
    await q.clear()
    client = await q.client()
    # Only the id and lease-token counters remain, so ids and fencing tokens never repeat,
    # and the queue's settings: a queue paused to be cleared stays paused.
    left = {k.decode() for k in await client.keys(q.keys.base + "*")}
    assert left <= {q.keys.id, q.keys.lease, q.keys.meta}, left
    assert await client.hgetall(q.keys.meta) == {b"paused": b"1"}
    assert (await q.get_stats()).is_paused
    # The queue is usable afterwards.
    await q.resume()
    jid = await q.add_job("n")
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.WAITING


# ---------------------------------------------------------------- retry / remove / cancel


async def test_retry_job_errors(make_queue: QueueFactory) -> None:
    q = make_queue()
    with pytest.raises(JobNotFoundError, match=r"job nope does not exist"):
        await q.retry_job("nope")
    jid = await q.add_job("n")
    with pytest.raises(JobStateError, match=rf"job {jid} is waiting"):
        await q.retry_job(jid)
    delayed = await q.add_job("n", delay=60_000)
    with pytest.raises(JobStateError, match=r"is delayed"):
        await q.retry_job(delayed)
    active, release = await _hold_active(q, "hold")
    with pytest.raises(JobStateError, match=r"is active"):
        await q.retry_job(active)
    release.set()


async def test_remove_job(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("n")
    delayed = await q.add_job("n", delay=60_000)
    assert await q.remove_job(jid) is True
    assert await q.get_job_status(jid) is None
    assert await q.remove_job(jid) is False
    assert await q.remove_job("never-existed") is False
    assert await q.remove_job(delayed) is True
    stats = await q.get_stats()
    assert (stats.waiting, stats.delayed) == (0, 0)


async def test_remove_job_refuses_an_active_job(make_queue: QueueFactory) -> None:
    q = make_queue()
    active, release = await _hold_active(q)
    with pytest.raises(JobActiveError, match=rf"job {active} is running.*cancel_job"):
        await q.remove_job(active)
    info = await q.get_job_status(active)
    assert info is not None and info.status is JobStatus.ACTIVE
    release.set()
    await wait_for_status(q, active, JobStatus.COMPLETED)
    assert await q.remove_job(active) is True


async def test_cancel_job_waiting_delayed_finished_unknown(make_queue: QueueFactory) -> None:
    q = make_queue()
    waiting = await q.add_job("n")
    delayed = await q.add_job("n", delay=60_000)
    assert await q.cancel_job(waiting) == "removed"
    assert await q.cancel_job(delayed) == "removed"
    assert await q.get_job_status(waiting) is None
    assert await q.get_job_status(delayed) is None
    with pytest.raises(JobNotFoundError, match=r"job nope does not exist"):
        await q.cancel_job("nope")
    q.process("done", lambda job: 1)
    done = await q.add_job("done")
    await q.start()
    await wait_for_status(q, done, JobStatus.COMPLETED)
    assert await q.cancel_job(done) == "finished"


async def test_promote_delayed(make_queue: QueueFactory) -> None:
    q = make_queue()
    jid = await q.add_job("n", delay=1)
    await wait_until(lambda: q.promote_delayed(), 2)
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.WAITING
    assert info.delayed_until is None
    assert await q.promote_delayed() == 0


async def test_queue_is_an_async_context_manager(backend_url: str, prefix: str) -> None:
    async with JobQueue("ctx", redis=backend_url, prefix=prefix) as q:
        jid = await q.add_job("n")
    # A closed queue reconnects on next use.
    info = await q.get_job_status(jid)
    assert info is not None
    await q.close()
