"""The queue and its processors: imported by the web app (which adds jobs) and by the
worker (which runs them), so both agree on names, options and connection.

Configuration comes from the environment, as in any deployment:

* ``KQ_REDIS_URL``: the Redis URL (default ``memory://fastapi-example``: no server; the
  web app then runs the worker in its own process, since memory:// data lives there);
* ``KQ_PREFIX``: the key prefix (default ``kq-fastapi-example``).
"""

from __future__ import annotations

import os
from typing import Any

from kitium_queue import Job, JobQueue, NonRetryableError

REDIS_URL = os.environ.get("KQ_REDIS_URL", "").strip() or "memory://fastapi-example"
PREFIX = os.environ.get("KQ_PREFIX", "kq-fastapi-example")

queue = JobQueue(
    "orders",
    redis=REDIS_URL,
    prefix=PREFIX,
    default_job_options={"attempts": 3, "backoff": {"type": "exponential", "delay": 200}},
    worker={"concurrency": 10},
)


@queue.process("charge")
async def charge(job: Job) -> dict[str, Any]:
    """Charge an order (a payment provider call in real life), then queue its receipt."""
    order = job.data
    await job.log(f"charging order {order['order_id']}")
    if order["amount_cents"] > 1_000_000:
        # Retrying cannot help: straight to the dead-letter queue, inspectable there.
        raise NonRetryableError(f"amount {order['amount_cents']} is over the card limit")
    await job.update_progress(50)
    receipt = f"rcpt-{order['order_id']}"
    # One receipt per order, however often this job runs: the key makes it so.
    await queue.add_job(
        "receipt-email",
        {"to": order["email"], "receipt": receipt},
        idempotency_key=f"receipt-{order['order_id']}",
    )
    await job.update_progress(100)
    return {"charged_cents": order["amount_cents"], "receipt": receipt}


@queue.process("receipt-email")
async def receipt_email(job: Job) -> dict[str, Any]:
    """Send the receipt (an email provider call in real life)."""
    await job.log(f"receipt {job.data['receipt']} sent")
    return {"sent": True}
