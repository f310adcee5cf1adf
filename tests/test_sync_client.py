"""``SyncJobQueue``: the producer, query and admin methods from plain synchronous code."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from helpers import QueueFactory, in_forked_child, wait_until
from kitium_queue import (
    ConfigurationError,
    ConnectionUnavailableError,
    JobNotFoundError,
    JobStateError,
    JobStatus,
    PartitionedQueue,
    PayloadTooLargeError,
    SerializationError,
    SyncJobQueue,
    SyncPartitionedQueue,
)


@pytest.fixture
def sync_queue(backend_url: str, prefix: str) -> Iterator[SyncJobQueue]:
    q = SyncJobQueue("sync", redis=backend_url, prefix=prefix)
    try:
        yield q
    finally:
        q.close()


def _run_worker_until(
    backend_url: str, prefix: str, processors: dict[str, Any], done: Any, timeout: float = 5
) -> None:
    """Run an async worker on the same queue (own event loop) until ``done()`` is true."""

    async def main() -> None:
        factory = QueueFactory(backend_url, prefix)
        q = factory("sync")
        for name, fn in processors.items():
            q.process(name, fn)
        try:
            await q.start()
            await wait_until(lambda: done(), timeout)
        finally:
            await factory.aclose()

    # In a thread of its own, so done() may call the sync client without deadlock.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result(timeout + 10)


def test_add_and_query_from_sync_code(sync_queue: SyncJobQueue) -> None:
    q = sync_queue
    assert q.name == "sync"
    jid = q.add_job("send", {"to": "a@b.c"}, attempts=4, priority=2)
    info = q.get_job_status(jid)
    assert info is not None
    assert (info.name, info.data, info.status, info.max_attempts, info.priority) == (
        "send",
        {"to": "a@b.c"},
        JobStatus.WAITING,
        4,
        2,
    )
    ids = q.add_jobs([("send", {"i": 1}), {"name": "send", "data": {"i": 2}}])
    assert len(ids) == 2 and jid not in ids
    listed = q.get_jobs_by_status("waiting")
    assert [j.id for j in listed] == [jid, *ids]  # priority 2 first, then FIFO
    stats = q.get_stats()
    assert stats.waiting == 3 and not stats.is_paused
    health = q.health_check()
    assert health and health.error is None
    assert q.get_job_status("missing") is None
    assert q.get_job_logs(jid) == []


def test_duplicates_from_sync_code(sync_queue: SyncJobQueue) -> None:
    q = sync_queue
    assert q.add_job("n", 1, job_id="fixed") == "fixed"
    assert q.add_job("n", 2, job_id="fixed") == "fixed"
    first = q.add_job("n", 3, idempotency_key="k")
    assert q.add_job("n", 4, idempotency_key="k") == first
    assert q.get_stats().waiting == 2


def test_errors_surface_with_their_types(sync_queue: SyncJobQueue) -> None:
    q = sync_queue
    with pytest.raises(ConfigurationError, match="did you mean 'delay'"):
        q.add_job("n", {}, dely=5)
    with pytest.raises(SerializationError):
        q.add_job("n", {"x": object()})
    with pytest.raises(JobNotFoundError):
        q.retry_job("missing")
    jid = q.add_job("n")
    with pytest.raises(JobStateError):
        q.retry_job(jid)
    with pytest.raises(JobNotFoundError):
        q.cancel_job("missing")
    assert q.get_stats().waiting == 1


def test_payload_limit_applies(backend_url: str, prefix: str) -> None:
    with SyncJobQueue("sync", redis=backend_url, prefix=prefix, max_payload_bytes=100) as q:
        with pytest.raises(PayloadTooLargeError):
            q.add_job("n", "x" * 200)
        assert q.get_stats().waiting == 0


def test_admin_methods(sync_queue: SyncJobQueue) -> None:
    q = sync_queue
    a, b, c = q.add_jobs([("n", 1), ("n", 2), ("n", 3)])
    q.add_job("n", 4, delay=60_000)
    q.pause()
    stats = q.get_stats()
    assert stats.is_paused and stats.paused == 3
    q.resume()
    assert not q.get_stats().is_paused
    assert q.remove_job(a) is True and q.remove_job(a) is False
    assert q.cancel_job(b) == "removed"
    assert q.drain(delayed=False) == 1
    stats = q.get_stats()
    assert (stats.waiting, stats.delayed) == (0, 1)
    assert q.get_job_status(c) is None
    q.clear()
    assert q.get_stats().delayed == 0


def test_sync_producer_with_an_async_worker(
    sync_queue: SyncJobQueue, backend_url: str, prefix: str
) -> None:
    q = sync_queue
    ok = q.add_job("ok", {"n": 2})
    bad = q.add_job("bad", attempts=1)

    async def ok_fn(job: Any) -> int:
        await job.log("doubling")
        return int(job.data["n"]) * 2

    def bad_fn(job: Any) -> None:
        raise RuntimeError("broken")

    def finished() -> bool:
        s = q.get_stats()
        return s.completed == 1 and s.dlq == 1

    _run_worker_until(backend_url, prefix, {"ok": ok_fn, "bad": bad_fn}, finished)
    info = q.get_job_status(ok)
    assert info is not None and info.status is JobStatus.COMPLETED and info.result == 4
    assert q.get_job_logs(ok) == ["doubling"]
    dead = q.get_dlq_jobs()
    assert [d.id for d in dead] == [bad] and dead[0].failed_reason == "RuntimeError: broken"

    assert q.replay_dlq() == 1
    assert q.get_stats().waiting == 1
    assert q.bulk_retry("completed") == 1
    assert q.get_stats().waiting == 2

    def all_done() -> bool:
        s = q.get_stats()
        return s.waiting == 0 and s.active == 0 and s.completed == 2

    _run_worker_until(backend_url, prefix, {"ok": ok_fn, "bad": lambda job: "fixed"}, all_done)
    info = q.get_job_status(bad)
    assert info is not None and info.result == "fixed"
    assert info.last_error == "RuntimeError: broken"


def test_thread_safe_producers(sync_queue: SyncJobQueue) -> None:
    q = sync_queue

    def produce(worker: int) -> list[str]:
        return [q.add_job("n", {"w": worker, "i": i}) for i in range(25)]

    with ThreadPoolExecutor(8) as pool:
        ids = [i for batch in pool.map(produce, range(8)) for i in batch]
    assert len(set(ids)) == 200
    assert q.get_stats().waiting == 200


def test_close_and_context_manager(backend_url: str, prefix: str) -> None:
    before = threading.active_count()
    with SyncJobQueue("sync", redis=backend_url, prefix=prefix) as q:
        jid = q.add_job("n")
    with pytest.raises(RuntimeError, match="closed"):
        q.add_job("n")
    with pytest.raises(RuntimeError, match="closed"):
        q.get_job_status(jid)
    q.close()  # closing twice is harmless
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before, "the background loop thread must end"
    with SyncJobQueue("sync", redis=backend_url, prefix=prefix) as again:
        assert again.get_job_status(jid) is not None


def test_bad_configuration_raises_and_leaks_no_thread() -> None:
    before = threading.active_count()
    with pytest.raises(ConfigurationError, match="did you mean 'concurrency'"):
        SyncJobQueue("sync", worker={"concurency": 2})
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_unreachable_redis() -> None:
    with SyncJobQueue("sync", redis="redis://127.0.0.1:1/0") as q:
        with pytest.raises(ConnectionUnavailableError, match="cannot reach Redis"):
            q.add_job("n")
        health = q.health_check()
        assert not health and health.error


def test_sync_partitioned_queue(backend_url: str, prefix: str) -> None:
    with SyncPartitionedQueue("sorders", partitions=3, redis=backend_url, prefix=prefix) as pq:
        assert pq.partitions == 3
        spread = pq.add_jobs([("charge", {"n": i}) for i in range(6)])
        assert sorted({i.split(":")[0] for i in spread}) == ["0", "1", "2"]
        pinned = [pq.add_job("charge", {"n": n}, partition_key="cust-7") for n in range(3)]
        assert {i.split(":")[0] for i in pinned} == {str(pq.partition_of("cust-7"))}
        info = pq.get_job_status(pinned[0])
        assert info is not None and info.id == pinned[0] and info.data == {"n": 0}
        assert pq.get_stats().waiting == 9
        assert sum(s.waiting for s in pq.partition_stats()) == 9
        assert pq.remove_job(pinned[2]) is True
        assert pq.get_job_status(pinned[2]) is None
        assert pq.get_stats().waiting == 8

        async def work() -> None:
            async with PartitionedQueue(
                "sorders", partitions=3, redis=backend_url, prefix=prefix
            ) as worker:
                worker.process("charge", lambda job: job.data["n"] * 10)
                await worker.start()
                await wait_until(lambda: _completed(worker, 8), 10)

        asyncio.run(work())
        done = pq.get_job_status(pinned[1])
        assert done is not None and done.status == JobStatus.COMPLETED and done.result == 10
    with pytest.raises(RuntimeError, match="SyncPartitionedQueue is closed"):
        pq.get_stats()


async def _completed(pq: PartitionedQueue, n: int) -> bool:
    return (await pq.get_stats()).completed == n


def test_sync_twins_of_the_newer_methods(
    sync_queue: SyncJobQueue, backend_url: str, prefix: str
) -> None:
    q = sync_queue
    jobs = (("n", i) for i in range(3))  # a generator is read in the caller's thread
    ids = q.add_jobs(jobs)
    assert len(ids) == 3
    detail = q.get_job_detail(ids[0])
    assert detail is not None and detail.id == ids[0] and detail.log_lines == 0
    page = q.list_jobs("waiting", limit=2)
    assert [j.id for j in page.jobs] == ids[:2] and page.next_cursor
    assert q.promote_delayed() == 0
    assert q.recover_stalled() == ([], [])
    with SyncPartitionedQueue("sp", partitions=2, redis=backend_url, prefix=prefix) as pq:
        with pytest.raises(ConfigurationError, match="schedules belong on a plain JobQueue"):
            pq.schedule_every("tick", {}, 1000)
        assert pq.get_job_detail(pq.add_job("n", 1)) is not None


@pytest.mark.redis_only
def test_a_client_made_before_a_fork_refuses_calls_in_the_child(
    redis_url: str, prefix: str
) -> None:
    """gunicorn --preload, multiprocessing's fork: a child shared the parent's sockets
    (replies crossed: callers got another process's job ids) or, without its loop
    thread, hung for good. The child's calls are refused with what to do; the parent's
    client goes on."""
    q = SyncJobQueue("forked", redis=redis_url, prefix=prefix)
    try:
        first = q.add_job("n", {"by": "parent"})

        def child() -> str:
            q.add_job("n", {"by": "child"})
            return "no error"

        said = in_forked_child(child)
        assert said.startswith("raised RuntimeError"), said
        # close() in a child is a no-op there: the sockets are the parent's.
        assert in_forked_child(lambda: str(q.close())) == "None"
        assert "before this process was forked" in said and "post_fork" in said, said
        second = q.add_job("n", {"by": "parent"})
        assert int(second) == int(first) + 1  # the child wrote nothing
        info = q.get_job_status(second)
        assert info is not None and info.data == {"by": "parent"}
    finally:
        q.close()


@pytest.mark.redis_only
def test_a_queue_is_refused_in_another_event_loop_until_closed(redis_url: str, prefix: str) -> None:
    """asyncio.run per call (and asgiref's async_to_sync) starts a new loop each time:
    the second call hung 15 s, then failed with "Event loop is closed" although its job
    was written; concurrent loops hung for good. Now it is refused at once, nothing
    written; after close() in its loop the queue serves the next loop."""
    from kitium_queue import JobQueue

    q = JobQueue("loops", redis=redis_url, prefix=prefix)
    first = asyncio.run(q.add_job("n", {}))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(q.add_job("n", {}))
    with pytest.raises(RuntimeError, match="one JobQueue per event loop"):
        asyncio.run(q.get_stats())
    assert time.monotonic() - t0 < 5

    async def close_and_count() -> int:
        await q.close()  # from another loop: its connections are dropped, not awaited
        n = (await q.get_stats()).waiting
        await q.close()
        return n

    assert asyncio.run(close_and_count()) == 1  # only the first job was written
    assert int(asyncio.run(q.add_job("n", {}))) == int(first) + 1
    asyncio.run(q.close())


@pytest.mark.redis_only
def test_close_while_threads_add_ends_their_calls_with_the_documented_error(
    redis_url: str, prefix: str
) -> None:
    """close() took connections away under calls still running in other threads: some
    raised "Bad file descriptor" or "Connection closed by server" (redis-py's) instead
    of the documented RuntimeError."""
    q = SyncJobQueue("closing", redis=redis_url, prefix=prefix)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def add(c: int) -> None:
        try:
            while True:
                if c % 5 == 0:
                    q.add_jobs([("n", {"c": c}, {}) for _ in range(10)])
                else:
                    q.add_job("n", {"c": c})
        except BaseException as exc:  # what ends each thread
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=add, args=(c,), daemon=True) for c in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    q.close()
    for t in threads:
        t.join(10)
    assert len(errors) == 50
    odd = [f"{type(e).__name__}: {e}" for e in errors if not isinstance(e, RuntimeError)]
    assert not odd, odd
    assert all("closed" in str(e) for e in errors)
