"""Circuit breakers: jobs that call a failing dependency are held, not failed.

A circuit breaker at work: a payments API goes down, its
breaker opens after 5 failures in a row, the charges added meanwhile wait (status
``pending``, no attempt spent) while other jobs run, inline calls are refused with
``CircuitOpenError``; the API recovers, a probe succeeds, the breaker closes and the
held charges run.

    python examples/circuit_breaker.py                                 # memory://
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/circuit_breaker.py
"""

from __future__ import annotations

import asyncio
import os

from kitium_queue import CircuitBreakerManager, CircuitOpenError, Job, JobQueue

queue = JobQueue("payments", redis=os.environ.get("KQ_REDIS_URL", "").strip() or "memory://",
                 prefix=f"kq-examples-{os.getpid()}", worker={"scheduler": False})
breakers = CircuitBreakerManager(queue)  # in every process of the queue
healthy = False
others: list[int] = []


@queue.process("charge")
async def charge(job: Job) -> str:
    if not healthy:
        raise ConnectionError("payments API down")
    return "charged"


@queue.process("email")
async def email(job: Job) -> None:
    others.append(job.data["n"])  # not bound to the breaker: runs all along


async def main() -> None:
    global healthy
    api = await breakers.create_breaker({
        "id": "payments-api", "job_name": "charge",
        "failure_threshold": {"percentage": 50, "min_requests": 5},
        "timeout": 300, "window": 60_000, "half_open_probes": 1,
    })
    await queue.add_jobs([("charge", {"n": n}, {"attempts": 1}) for n in range(5)])
    await queue.start()
    while await api.get_state() != "open":
        await asyncio.sleep(0.02)
    print(f"breaker {api.id}: open after 5 failures")
    held = await queue.add_jobs([("charge", {"n": n}) for n in range(20)])
    await queue.add_jobs([("email", {"n": n}) for n in range(3)])
    while len(others) < 3:
        await asyncio.sleep(0.02)
    info = await queue.get_job_status(held[0])
    assert info is not None
    print(f"held charge: status={info.status.value} attempts={info.attempts}; other jobs ran: "
          f"{len(others)}")
    try:
        await api.execute(lambda: "inline call")
    except CircuitOpenError as exc:
        print(f"inline call refused: breaker {exc.breaker_id} is {exc.state}")
    healthy = True  # the dependency recovers: the next probe succeeds
    while (await api.get_stats()).state != "closed":
        await asyncio.sleep(0.02)
    for jid in held:
        while (done := await queue.get_job_status(jid)) is None or done.status.value != "completed":
            await asyncio.sleep(0.02)
    print(f"breaker closed; {len(held)} held charges completed")
    await breakers.remove_breaker(api.id)
    await queue.clear(force=True)
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
