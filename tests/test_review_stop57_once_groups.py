"""Effectively-once execution and FIFO groups under faults, as a payments user would
meet them (each test failed before its fix).

* ``clean_expired`` racing a new ``record_execution`` of a key whose earlier record
  expired: it deleted the new record (a re-run then charged again).
* A replayed (or retried) group job that waits in its group's line is counted in the
  group's ``size`` at once, not only once it gets the turn.
* ``get_result(key)`` on a ``PartitionedQueue`` finds a completed exactly-once job that
  its ``message_group_id`` placed on another partition than its key.
* (Expected failure, outside these modules) a ``mode="process"`` processor's job has no
  ``lease_token`` to fence ``record_execution`` with, as the docs say it has.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus, NonRetryableError
from kitium_queue.features.groups import FIFOQueueManager
from kitium_queue.features.idempotency import IdempotencyManager
from kitium_queue.features.idempotency import manager as idem_manager

pytestmark = pytest.mark.redis_only


async def test_clean_expired_keeps_a_record_made_while_it_runs(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue("clean")
    idem = IdempotencyManager(q)
    await idem.record_execution("pay-0", "j0", "charge", 0, ttl_ms=60_000)  # keeps the index
    await idem.record_execution("pay-1", "j1", "charge", {"receipt": "old"}, ttl_ms=50)
    await asyncio.sleep(0.15)  # the first record's time is over; its entry is due
    real = idem_manager._read
    done: list[bool] = []

    async def read_then_record(client: Any, command: str, *args: Any) -> Any:
        got = await real(client, command, *args)
        if command == "zrangebyscore" and got and not done:
            # The key is used again right after clean_expired listed it as due.
            done.append(True)
            await idem.record_execution("pay-1", "j2", "charge", {"receipt": "new"})
        return got

    monkeypatch.setattr(idem_manager, "_read", read_then_record)
    await idem.clean_expired()
    monkeypatch.setattr(idem_manager, "_read", real)
    assert done
    got = await idem.get_execution_result("pay-1")
    assert got is not None and got.result == {"receipt": "new"}
    client = await q.client()
    assert await client.zscore(q.keys.extra("idem-x"), "pay-1") is not None


async def test_a_replayed_group_job_in_the_line_counts_in_the_group_size(
    make_queue: QueueFactory,
) -> None:
    q = make_queue("size", worker={"concurrency": 4})
    fifo = FIFOQueueManager(q)
    gate = asyncio.Event()
    ran: list[int] = []

    @q.process("post")
    async def post(job: Any) -> None:
        ran.append(job.data)
        if job.data == 0 and len(ran) == 1:
            raise NonRetryableError("declined")
        if job.data == 1:
            await gate.wait()

    ids = [await q.add_job("post", i, message_group_id="acct", attempts=1) for i in range(3)]
    await q.start()
    await wait_for_status(q, ids[0], JobStatus.DLQ, timeout=15)
    await wait_for_status(q, ids[1], JobStatus.ACTIVE, timeout=15)
    assert (await fifo.get_group_stats("acct")).size == 2
    assert await q.replay_dlq() == 1

    async def parked() -> bool:
        info = await q.get_job_status(ids[0])
        return info is not None and info.status is JobStatus.PENDING

    await wait_until(parked, 10)
    stats = await fifo.get_group_stats("acct")
    # Unfinished: the replayed job (in the line), the running one, the last one.
    assert (stats.size, stats.waiting, stats.active) == (3, 2, 1)
    assert stats.next_job_id == ids[0]  # before the job added after it
    gate.set()

    async def finished() -> bool:
        s = await fifo.get_group_stats("acct")
        return s.size == 0 and s.completed == 3

    await wait_until(finished, 15)
    assert ran == [0, 1, 0, 2]


async def test_get_result_finds_a_group_job_placed_away_from_its_key(
    redis_url: str, prefix: str
) -> None:
    """A customer's group places the payment on the group's partition, not on the one
    its idempotency key maps to: the completed job's result is still found by key."""
    from kitium_queue import DeliveryGuarantee, PartitionedQueue

    pq = PartitionedQueue("pay", partitions=2, redis=redis_url, prefix=prefix)
    try:
        FIFOQueueManager(pq)
        idem = IdempotencyManager(pq)
        key = "order-1"
        group = next(
            f"cust-{i}" for i in range(100) if pq.partition_of(f"cust-{i}") != pq.partition_of(key)
        )
        runs: list[Any] = []

        @pq.process("charge")
        async def charge(job: Any) -> Any:
            runs.append(job.data)
            return {"receipt": "r-1"}

        eo: dict[str, Any] = {
            "idempotency_key": key,
            "delivery_guarantee": DeliveryGuarantee.EXACTLY_ONCE,
        }
        first = await pq.add_job("charge", 1, message_group_id=group, **eo)
        await pq.start()

        async def done() -> Any:
            return await idem.get_result(key)

        got = await wait_until(done, 15)
        assert got.job_id == first and got.result == {"receipt": "r-1"}
        found = await idem.get_execution_result(key)
        assert found is not None and found.result == {"receipt": "r-1"}
        # The same customer's repeated add is caught in the group's partition.
        assert await pq.add_job("charge", 1, message_group_id=group, **eo) == first
        assert runs == [1]
    finally:
        await pq.close()


def _child_job_attributes(job: Any) -> list[str]:
    return sorted(a for a in vars(job) if not a.startswith("_"))


async def test_a_child_process_job_has_its_lease_token(make_queue: QueueFactory) -> None:
    q = make_queue("child")
    q.process("charge", _child_job_attributes, mode="process")
    jid = await q.add_job("charge", {})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=30)
    assert "lease_token" in info.result
