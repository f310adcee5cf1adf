"""An ``until_finished`` key whose job a process without ``IdempotencyManager`` finished.

The release fragment frees such a key when its job ends; a worker of a previous release
(without the manager) finishes jobs without it, so the key held for its whole TTL and a
new job with that key was silently deduplicated against the finished one (20 of 40
re-adds in a rolling-deploy run, 24 h by default). An add that finds the key pointing to
a finished job of that window now treats the key as free.
"""

from __future__ import annotations

from typing import Any

from helpers import QueueFactory, wait_for_status
from kitium_queue import JobStatus
from kitium_queue.features.idempotency import IdempotencyManager


async def test_a_key_whose_job_ended_elsewhere_is_free(make_queue: QueueFactory) -> None:
    producer = make_queue("uf-stale")
    IdempotencyManager(producer, window="until_finished")
    old = make_queue("uf-stale")  # a worker without the manager
    runs: list[int] = []

    @old.process("n")
    async def n(job: Any) -> None:
        runs.append(job.data)

    a = await producer.add_job("n", 1, idempotency_key="order-7")
    await old.start()
    await wait_for_status(producer, a, JobStatus.COMPLETED)
    b = await producer.add_job("n", 2, idempotency_key="order-7")
    assert b != a  # the finished job's key was free
    await wait_for_status(producer, b, JobStatus.COMPLETED)
    assert runs == [1, 2]
    # While a job of the key is unfinished, the key still holds.
    await old.worker.stop()
    c = await producer.add_job("n", 3, idempotency_key="order-8")
    assert await producer.add_job("n", 4, idempotency_key="order-8") == c
