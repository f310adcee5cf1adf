"""Basic usage: register a processor, add a job, react to its completion.

Basic job processing: the smallest complete use of a queue.

    python examples/basic_usage.py                                 # embedded memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/basic_usage.py
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from kitium_queue import EventData, Job, JobQueue, QueueEvent

REDIS_URL = os.environ.get("KQ_REDIS_URL", "").strip() or "memory://"
# A key prefix of its own per run, so runs never collide on a shared Redis.
PREFIX = f"kq-examples-{os.getpid()}"

# Initialize the queue.
queue = JobQueue("my-queue", redis=REDIS_URL, prefix=PREFIX)


# Register a job processor. An async function runs on the event loop; what it returns is
# stored as the job's result.
@queue.process("send-email")
async def send_email(job: Job) -> dict[str, Any]:
    print(f"Sending email to {job.data['email']} (subject: {job.data['subject']!r})")
    # Your job logic here.
    return {"success": True}


async def main() -> None:
    completed = asyncio.Event()

    # Listen for events. Handlers receive an EventData and run in this process, which
    # is also the one running the worker.
    def on_completed(event: EventData) -> None:
        print(f"Job {event.job_id} completed! result={event.result}")
        completed.set()

    queue.on(QueueEvent.JOB_COMPLETED, on_completed)

    # Start a worker in this process, next to our code (a service would run
    # `await queue.run_worker()` or `kitium-queue worker app:queue` instead).
    await queue.start()
    try:
        # Add a job.
        job_id = await queue.add_job(
            "send-email", {"email": "user@example.com", "subject": "Hello"}
        )
        print(f"Added job {job_id}")

        await asyncio.wait_for(completed.wait(), timeout=10)

        info = await queue.get_job_status(job_id)
        assert info is not None
        print(f"Job {info.id}: status={info.status.value} attempts={info.attempts} "
              f"result={info.result}")
    finally:
        # Delete this run's jobs, then stop the worker and release the connection.
        await queue.clear(force=True)
        await queue.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
