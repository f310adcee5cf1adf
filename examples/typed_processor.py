"""Typed processors: ``JobProcessor[EmailData]`` and ``QueueConfig``, checked by mypy.

Typed processors: a processor typed as
``JobProcessor[EmailData]`` sees ``job.data`` as an ``EmailData`` (``mypy --strict``
flags ``job.data["too"]``), and ``QueueConfig`` holds a queue's whole configuration.
The test suite runs mypy (strict) on this file.

    python examples/typed_processor.py                                 # memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/typed_processor.py
"""

from __future__ import annotations

import asyncio
import os
from typing import TypedDict

from kitium_queue import Job, JobProcessor, JobQueue, QueueConfig, RetryConfig


class EmailData(TypedDict):
    to: str
    subject: str


class EmailResult(TypedDict):
    sent_to: str


async def send_email(job: Job[EmailData]) -> EmailResult:
    # mypy knows job.data["to"] is a str here.
    return {"sent_to": job.data["to"].lower()}


# JobProcessor[T]: a processor of EmailData jobs.
processor: JobProcessor[EmailData] = send_email

config = QueueConfig(
    "typed-emails",
    redis=os.environ.get("KQ_REDIS_URL", "").strip() or "memory://",
    prefix=f"kq-examples-{os.getpid()}",
    retry=RetryConfig(max_attempts=3),
    worker={"concurrency": 5},
)


async def main() -> None:
    queue = JobQueue(config)
    queue.process("send-email", processor)
    data: EmailData = {"to": "User@Example.com", "subject": "Hi"}
    job_id = await queue.add_job("send-email", data)
    await queue.start()
    while True:
        info = await queue.get_job_status(job_id)
        if info is not None and info.status.value == "completed":
            break
        await asyncio.sleep(0.01)
    print(f"typed job {job_id}: result={info.result}")
    print(f"queue {queue.name!r} from QueueConfig: max_attempts={queue.retry.max_attempts}")
    await queue.clear(force=True)
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
