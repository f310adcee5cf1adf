"""What a queue's worker left when its event loop ended without ``close()``, once the
queue's ``close()`` in the next loop let it go (lifecycle.Lifecycle.forget_ended,
leftover.py), besides the worker itself (test_review_stop58_loop_restart.py):

* a partitioned queue's partition count refresh of the ended loop is kept, never
  collected: asyncio reported it "Task was destroyed but it is pending!" (an ERROR)
  wherever the garbage collector ran next; the partitions' workers of the next loop run
  the jobs added there at once;
* the scheduler's subscription connection of the ended loop is closed: it stayed open,
  subscribed, until the process ended (counted with PUBSUB NUMSUB on the queue's own
  channel);
* a leader service leading when its loop ended no longer says it leads (``term``,
  ``is_leader``) before a campaign of the next loop wins; one a service keeps inside it
  campaigns again there (it took the ended loop's campaign for under way).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio

from helpers import wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, LeaderService, PartitionedQueue
from test_review_stop58_loop_restart import (
    DONE_S,
    LEASE_MS,
    _collect_what_earlier_tests_left,
    _errors,
    _in_a_loop_closed_after,
    _job_1_running_in_a_loop_closed_after,
)


def test_a_partitioned_queue_serves_the_next_loop_without_errors(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    _collect_what_earlier_tests_left(caplog)
    q = PartitionedQueue(
        "prestart",
        partitions=2,
        redis=redis_url,
        prefix=prefix,
        worker={"concurrency": 4, "scheduler": False},
        settings={"lock_duration": LEASE_MS},
    )
    started = threading.Event()

    @q.process("j")
    async def run(job: Any) -> int:
        if job.data == 1:
            started.set()
            await asyncio.sleep(3600)
        return int(job.data) * 2

    first = [_job_1_running_in_a_loop_closed_after(q, started)]

    async def the_next_loop() -> list[int]:
        await q.close()  # forgets the workers gone, releases the count record
        gc.collect()  # what the ended loop left is collected here, in this loop
        await q.start()
        try:
            # Both partitions get jobs (round-robin), that of job 1 included.
            ids = await q.add_jobs([("j", n) for n in (2, 3, 4, 5)])
            done = []
            for jid in ids:
                info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=DONE_S)
                done.append(int(info.result))
            gc.collect()
            await asyncio.sleep(0.1)
            left = await q.get_job_status(first[0])
            assert left is not None and left.status == JobStatus.ACTIVE  # its lease runs
            return done
        finally:
            await q.close()

    with caplog.at_level(logging.INFO):
        assert sorted(asyncio.run(asyncio.wait_for(the_next_loop(), 3 * DONE_S))) == [4, 6, 8, 10]
        gc.collect()
    assert any("left running when their event loop" in r.getMessage() for r in caplog.records)
    assert _errors(caplog) == []


def test_the_scheduler_subscription_of_the_ended_loop_is_closed(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    _collect_what_earlier_tests_left(caplog)
    q = JobQueue(
        "srestart",
        redis=redis_url,
        prefix=prefix,
        worker={"concurrency": 2},  # the scheduler runs (default)
        settings={"lock_duration": LEASE_MS},
    )
    channels = [q.keys.schedules_channel]

    async def subscribed() -> int:
        """The connections subscribed to the queue's schedule channels (its own prefix:
        no other test's)."""
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return sum(n for _, n in await client.pubsub_numsub(*channels))
        finally:
            await client.aclose()

    async def a_loop_that_ends_without_close() -> None:
        await q.start()
        await wait_until_async(subscribed, len(channels))

    _in_a_loop_closed_after(a_loop_that_ends_without_close)

    async def the_next_loop() -> list[int]:
        seen = [await subscribed()]  # the ended loop's, still open
        await q.close()
        await wait_until_async(subscribed, 0)  # closed by the close
        await q.start()
        try:
            await wait_until_async(subscribed, len(channels))  # the new loop's only
            seen.append(await subscribed())
        finally:
            await q.close()
        await wait_until_async(subscribed, 0)
        return seen

    with caplog.at_level(logging.INFO):
        seen = asyncio.run(asyncio.wait_for(the_next_loop(), 3 * DONE_S))
        gc.collect()
    assert seen == [len(channels), len(channels)]
    assert _errors(caplog) == []


async def wait_until_async(count: Callable[[], Coroutine[Any, Any, int]], want: int) -> None:
    """Wait (up to ``DONE_S``) until ``count()`` says ``want``; else fail, saying it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DONE_S
    got = await count()
    while got != want and loop.time() < deadline:
        await asyncio.sleep(0.02)
        got = await count()
    assert got == want, f"{got} subscribed connection(s), expected {want}"


def test_a_leader_service_of_the_ended_loop_no_longer_says_it_leads(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its lease (long) still held in Redis by the ended loop's holding, the service
    campaigns in vain in the next loop: it must not say it leads, nor with which term."""
    _collect_what_earlier_tests_left(caplog)
    q = JobQueue("lrestart", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    terms: list[int] = []

    async def body(term: int) -> None:
        terms.append(term)
        await asyncio.sleep(3600)

    svc = LeaderService("held", body, lease_ms=LEASE_MS)
    q.add_service(svc)

    async def a_loop_that_ends_without_close() -> None:
        await q.start()
        await wait_until(lambda: terms, DONE_S)  # leading there when the loop ends
        assert svc.is_leader and svc.term == terms[0]

    _in_a_loop_closed_after(a_loop_that_ends_without_close)

    async def the_next_loop() -> list[Any]:
        await q.close()
        seen: list[Any] = [svc.term, svc.is_leader]
        await q.start()
        try:
            assert svc.lease is not None
            # The new campaign asked for the lease (and was refused: still held).
            await wait_until(lambda: svc.lease is not None and svc.lease.retry_after_ms > 0, DONE_S)
            seen += [svc.term, svc.is_leader, svc.lease.term, svc.lease.token]
            gc.collect()
        finally:
            await q.close()
        return seen

    with caplog.at_level(logging.INFO):
        seen = asyncio.run(asyncio.wait_for(the_next_loop(), 3 * DONE_S))
        gc.collect()
    assert seen == [None, False, None, False, None, None]
    assert terms and svc.terms == terms  # no term won in the next loop
    assert _errors(caplog) == []


class _Holding:
    """A service that runs a leader service of its own (as the encryption rotation does)."""

    name = "holding"

    def __init__(self, leader: LeaderService) -> None:
        self.leader = leader

    async def start(self, queue: Any) -> None:
        await self.leader.start(queue)

    async def stop(self) -> None:
        await self.leader.stop()


def test_a_leader_service_kept_inside_a_service_campaigns_again(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    _collect_what_earlier_tests_left(caplog)
    q = JobQueue("nrestart", redis=redis_url, prefix=prefix, worker={"scheduler": False})
    led: list[asyncio.AbstractEventLoop] = []

    async def body(term: int) -> None:
        led.append(asyncio.get_running_loop())
        await asyncio.sleep(3600)

    q.add_service(_Holding(LeaderService("inner", body, lease_ms=300)))

    async def a_loop_that_ends_without_close() -> None:
        await q.start()
        await wait_until(lambda: led, DONE_S)

    _in_a_loop_closed_after(a_loop_that_ends_without_close)

    async def the_next_loop() -> None:
        await q.close()
        await q.start()
        try:
            here = asyncio.get_running_loop()
            await wait_until(lambda: here in led, DONE_S)  # once the old lease expired
            gc.collect()
        finally:
            await q.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(asyncio.wait_for(the_next_loop(), 3 * DONE_S))
        gc.collect()
    assert _errors(caplog) == []
