"""A job carries its producer's ``default_job_options``: its attempts, backoff and
retention are the producer's whatever the settings of the worker that runs it (a
rolling deploy runs workers of two releases side by side). Before, only the options
given to ``add_job`` were stored: a producer's ``default_job_options={"attempts": 6}``
was ignored by a worker with the default 3, and the producer then read a dead-lettered
job as "attempts 3 of 6"."""

from __future__ import annotations

from typing import Any

from helpers import QueueFactory, wait_for_status
from kitium_queue import JobStatus


async def test_the_producers_defaults_go_with_the_job(make_queue: QueueFactory) -> None:
    producer = make_queue(
        "travel",
        default_job_options={"attempts": 4, "backoff": {"type": "fixed", "delay": 10}},
    )
    worker = make_queue("travel", worker={"concurrency": 2})
    runs: list[int] = []

    @worker.process("n")
    async def n(job: Any) -> None:
        runs.append(job.attempts)
        raise RuntimeError("always")

    job_id = await producer.add_job("n", {})
    plain_id = await make_queue("travel").add_job("n", {})  # a producer without defaults
    await worker.start()
    await wait_for_status(producer, job_id, JobStatus.DLQ, timeout=15)
    await wait_for_status(producer, plain_id, JobStatus.DLQ, timeout=15)
    info = await producer.get_job_status(job_id)
    assert info is not None and (info.attempts, info.max_attempts) == (4, 4), info
    assert info.options["attempts"] == 4
    # The job of the producer without defaults ran on the worker's settings (3), and a
    # reader whose own default is 4 never says fewer than were made.
    plain = await producer.get_job_status(plain_id)
    assert plain is not None and plain.attempts == 3 and plain.max_attempts >= 3, plain
    assert sorted(runs) == [1, 1, 2, 2, 3, 3, 4]


async def test_a_jobs_own_option_wins_over_the_defaults(make_queue: QueueFactory) -> None:
    producer = make_queue("travel2", default_job_options={"attempts": 4, "priority": 3})
    job_id = await producer.add_job("n", {}, attempts=2)
    info = await producer.get_job_status(job_id)
    assert info is not None and info.options == {"attempts": 2, "priority": 3}, info.options
    assert info.max_attempts == 2
