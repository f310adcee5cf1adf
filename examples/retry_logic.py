"""Retry logic: exponential, fixed and custom backoff, and what happens when retries run out.

A processor that raises is retried with backoff while attempts remain, then
dead-lettered with its reason and traceback. `attempts` counts every run, the first one
included: attempts=5 means 1 run + 4 retries.

Real delays are often seconds (1 s, 2 s, 4 s, ...); here they are scaled down to
milliseconds so the script finishes in about two seconds.

    python examples/retry_logic.py                                 # embedded memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/retry_logic.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from itertools import pairwise
from typing import Any

from kitium_queue import EventData, Job, JobQueue, QueueEvent

REDIS_URL = os.environ.get("KQ_REDIS_URL", "").strip() or "memory://"
# A key prefix of its own per run, so runs never collide on a shared Redis.
PREFIX = f"kq-examples-{os.getpid()}"

queue = JobQueue("my-queue", redis=REDIS_URL, prefix=PREFIX)

# When each job's attempts started (monotonic seconds), to show the delays between them.
attempt_times: dict[str, list[float]] = defaultdict(list)


class UpstreamError(Exception):
    """A transient failure of a remote service."""


async def call_flaky_api(job: Job) -> dict[str, Any]:
    # Stand-in for a remote call that fails until the service recovers.
    if job.attempts < job.data["fails"] + 1:
        raise UpstreamError(f"HTTP 503 from {job.data['url']}")
    return {"status": 200, "attempt": job.attempts}


@queue.process("api-call")
async def api_call(job: Job) -> dict[str, Any]:
    attempt_times[job.id].append(time.monotonic())
    try:
        return await call_flaky_api(job)
    except UpstreamError as error:
        print(f"  job {job.id}: attempt {job.attempts}/{job.max_attempts} failed: {error}")
        # Re-raising triggers the retry logic.
        raise


# A custom strategy: (attempts made so far, the error, the job) -> delay in ms, or None to
# stop retrying.
queue.register_backoff("linear", lambda attempts, error, job: attempts * 100)


def gaps(job_id: str) -> str:
    times = attempt_times[job_id]
    return ", ".join(f"{(b - a) * 1000:.0f} ms" for a, b in pairwise(times))


async def main() -> None:
    finished: set[str] = set()  # jobs that completed or failed for good
    all_finished = asyncio.Event()

    def on_retrying(event: EventData) -> None:
        print(f"  job {event.job_id}: retrying in {event.delay_ms} ms")

    def on_completed(event: EventData) -> None:
        finished.add(str(event.job_id))
        if len(finished) == 3:
            all_finished.set()

    def on_failed(event: EventData) -> None:
        if event.extra.get("final"):  # False while retries remain
            finished.add(str(event.job_id))
            if len(finished) == 3:
                all_finished.set()

    queue.on(QueueEvent.JOB_RETRYING, on_retrying)
    queue.on(QueueEvent.JOB_COMPLETED, on_completed)
    queue.on(QueueEvent.JOB_FAILED, on_failed)

    # Exponential backoff: the delay doubles after each failure, capped at max_delay.
    # Delays: 100, 200, 400, 400 ms (with delay=1000: 1 s, 2 s, 4 s, 8 s).
    exponential = await queue.add_job(
        "api-call", {"url": "https://api.example.com/orders", "fails": 4},
        attempts=5, backoff={"type": "exponential", "delay": 100, "max_delay": 400},
    )
    # Fixed backoff: always the same delay. This service never recovers, so after 3
    # attempts the job goes to the dead-letter queue.
    fixed = await queue.add_job(
        "api-call", {"url": "https://api.example.com/legacy", "fails": 99},
        attempts=3, backoff={"type": "fixed", "delay": 300},
    )
    # Custom backoff by name: 100 ms, 200 ms, ...
    custom = await queue.add_job(
        "api-call", {"url": "https://api.example.com/search", "fails": 2},
        attempts=4, backoff={"type": "custom", "strategy": "linear"},
    )

    await queue.start()
    try:
        await asyncio.wait_for(all_finished.wait(), timeout=15)

        for label, job_id in (("exponential", exponential), ("fixed", fixed),
                              ("custom", custom)):
            info = await queue.get_job_status(job_id)
            assert info is not None
            print(f"{label}: job {job_id} -> {info.status.value} after {info.attempts} "
                  f"attempt(s); delays between attempts: {gaps(job_id)}")
            if info.failed_reason:
                print(f"{label}: failed_reason={info.failed_reason!r}")
    finally:
        await queue.clear(force=True)
        await queue.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
