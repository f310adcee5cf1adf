"""Effectively-once: a repeated payment request returns the first result, runs nothing.

Exactly-once at work: the same idempotency key added
twice (a client retrying, two services racing) charges once; the result is kept under
the key after the job itself was removed, and a processor that crashed after its side
effect would find its execution record instead of charging again.

    python examples/effectively_once.py                                 # memory://
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/effectively_once.py
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kitium_queue import DeliveryGuarantee, IdempotencyManager, Job, JobQueue

queue = JobQueue("payments", redis=os.environ.get("KQ_REDIS_URL", "").strip() or "memory://",
                 prefix=f"kq-examples-{os.getpid()}")
idem = IdempotencyManager(queue)
charges: list[str] = []


@queue.process("charge")
async def charge(job: Job) -> dict[str, Any]:
    done = await idem.get_execution_result(f"side-effect:{job.idempotency_key}")
    if done is not None:  # a re-run after a crash: the charge was already made
        return dict(done.result)
    charges.append(job.data["order"])  # the side effect
    receipt = {"receipt": f"rcpt-{job.data['order']}", "amount": job.data["amount"]}
    await idem.record_execution(f"side-effect:{job.idempotency_key}", job.id, job.name, receipt)
    return receipt


async def main() -> None:
    eo = {"delivery_guarantee": DeliveryGuarantee.EXACTLY_ONCE, "idempotency_key": "order-1001"}
    first = await queue.add_job("charge", {"order": "1001", "amount": 25}, **eo,
                                remove_on_complete=True)
    second = await queue.add_job("charge", {"order": "1001", "amount": 25}, **eo)
    print(f"same job for a repeated key: {first == second}")
    await queue.start()
    while (result := await idem.get_result("order-1001")) is None:
        await asyncio.sleep(0.01)
    third = await queue.add_job("charge", {"order": "1001", "amount": 25}, **eo)
    await asyncio.sleep(0.1)
    print(f"after completion: same job={third == first}, charges made={len(charges)}")
    print(f"result by key ({result.source}): {result.result}")
    await queue.clear(force=True)
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
