"""Dead-letter queue: alerts, inspection, replay.

The dead-letter queue (the `dlq` configuration with its notification handler) and
event-based error handling: payments
fail while the payment gateway is down; when their retries run out they are dead-lettered
(an operator is alerted), inspected with `get_dlq_jobs`, the job that can never succeed is
removed, and once the gateway is back the rest are replayed with `replay_dlq`.

    python examples/dlq_handling.py                                # embedded memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/dlq_handling.py
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from kitium_queue import EventData, Job, JobInfo, JobQueue, NonRetryableError, QueueEvent

REDIS_URL = os.environ.get("KQ_REDIS_URL", "").strip() or "memory://"
# A key prefix of its own per run, so runs never collide on a shared Redis.
PREFIX = f"kq-examples-{os.getpid()}"


async def alert_on_call(job: JobInfo) -> None:
    # Send alert, log, etc. Called with the stored record of each dead-lettered job.
    print(f"ALERT: job {job.id} ({job.name}) moved to the DLQ: {job.failed_reason}")


queue = JobQueue(
    "payments",
    redis=REDIS_URL,
    prefix=PREFIX,
    default_job_options={"attempts": 2, "backoff": {"type": "fixed", "delay": 100}},
    dlq={"enabled": True, "queue_name": "payments-dlq", "notification_handler": alert_on_call},
)

gateway_up = False  # the payment gateway is down when the script starts


class GatewayUnavailable(Exception):
    pass


@queue.process("charge-card")
async def charge_card(job: Job) -> dict[str, Any]:
    if job.data["card"].startswith("0000"):
        # Retrying cannot help: straight to the DLQ, no attempts spent on it.
        raise NonRetryableError(f"invalid card number for order {job.data['order']}")
    if not gateway_up:
        raise GatewayUnavailable("payment gateway timed out")  # retried, then dead-lettered
    return {"order": job.data["order"], "charged": job.data["amount"]}


async def main() -> None:
    global gateway_up
    dead: set[str] = set()
    completed: set[str] = set()
    changed = asyncio.Event()

    async def on_failed(event: EventData) -> None:
        # Log the error (and send an alert) on every failed attempt.
        retry = "will retry" if not event.extra.get("final") else "no retries left"
        print(f"Job {event.job_id} failed: {event.error} ({retry})")

    async def on_dlq(event: EventData) -> None:
        # Handle the dead-letter queue entry, e.g. record it in a database. The failure
        # reason is on the job's stored record (`failed_reason`, with `stacktrace`).
        info = await queue.get_job_status(str(event.job_id))
        reason = info.failed_reason if info else None
        print(f"Job {event.job_id} dead-lettered, reason: {reason}")
        dead.add(str(event.job_id))
        changed.set()

    def on_completed(event: EventData) -> None:
        completed.add(str(event.job_id))
        changed.set()

    queue.on(QueueEvent.JOB_FAILED, on_failed)
    queue.on(QueueEvent.JOB_DLQ, on_dlq)
    queue.on(QueueEvent.JOB_COMPLETED, on_completed)

    async def wait_until(done: Any, timeout: float = 10) -> None:
        async def loop() -> None:
            while not done():
                changed.clear()
                await changed.wait()

        await asyncio.wait_for(loop(), timeout)

    orders = [
        ("A-1001", "4242-4242-4242-4242", 1999),
        ("A-1002", "5555-5555-5555-4444", 4500),
        ("A-1003", "0000-0000-0000-0000", 120),
        ("A-1004", "4000-0566-5566-5556", 7350),
    ]
    job_ids = [
        await queue.add_job("charge-card", {"order": order, "card": card, "amount": amount})
        for order, card, amount in orders
    ]

    await queue.start()
    try:
        await wait_until(lambda: len(dead) == len(job_ids))

        # Inspect the DLQ (newest first), as an operator would.
        dlq_jobs = await queue.get_dlq_jobs(100)
        print(f"{len(dlq_jobs)} jobs in the DLQ:")
        for info in dlq_jobs:
            print(f"  Failed job: {info.id} order={info.data['order']} "
                  f"attempts={info.attempts} - {info.failed_reason}")

        # The invalid card will never go through: drop it (after recording it elsewhere).
        for info in dlq_jobs:
            if info.failed_reason and info.failed_reason.startswith("NonRetryableError"):
                await queue.remove_job(info.id)
                print(f"Removed job {info.id} (order {info.data['order']})")

        # The gateway is back: move up to 50 DLQ jobs back into the main queue, with fresh
        # attempts. (`queue.retry_job(job_id)` does the same for one job.)
        gateway_up = True
        replayed = await queue.replay_dlq(50)
        print(f"Replayed {replayed} jobs")
        await wait_until(lambda: len(completed) == replayed)

        for job_id in job_ids:
            record = await queue.get_job_status(job_id)
            if record is None:
                print(f"  job {job_id}: removed")
            else:
                print(f"  job {job_id}: {record.status.value} {record.result}")
        stats = await queue.get_stats()
        print(f"DLQ now holds {stats.dlq} jobs; {stats.completed} completed")
    finally:
        await queue.clear(force=True)
        await queue.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
