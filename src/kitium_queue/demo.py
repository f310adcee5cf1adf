"""``kitium-queue demo``: a tour of the queue on the embedded ``memory://`` backend."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .connection import redact_url
from .errors import NonRetryableError
from .events import EventData
from .job import Job
from .queue import JobQueue

__all__ = ["run_demo"]


async def run_demo(redis: str = "memory://demo", echo: Callable[[str], Any] = print) -> None:
    """Run the demo against ``redis`` and narrate it through ``echo``."""
    # Failures in the tour are on purpose; keep the worker's error log out of it, and
    # give the caller its logging back afterwards.
    logger = logging.getLogger("kitium_queue")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        await _tour(redis, echo)
    finally:
        logger.setLevel(previous)


async def _tour(redis: str, echo: Callable[[str], Any]) -> None:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        echo(f"[{(time.monotonic() - t0) * 1000:7.1f} ms] {msg}")

    queue = JobQueue(
        "demo",
        redis=redis,
        prefix=f"kqdemo{int(time.time() * 1000)}",
        worker={"concurrency": 4},
        default_job_options={"backoff": {"type": "exponential", "delay": 100}},
    )
    flaky_runs: dict[str, int] = {}

    @queue.process("send-email")
    async def send_email(job: Job) -> dict[str, Any]:
        await job.update_progress(50)
        await asyncio.sleep(0.02)
        await job.log(f"sent to {job.data['to']}")
        return {"sent": True, "to": job.data["to"]}

    @queue.process("resize-image")
    def resize_image(job: Job) -> str:  # a plain function runs in the thread pool
        time.sleep(0.01)
        return f"{job.data['file']} -> 256x256"

    @queue.process("flaky-api")
    async def flaky(job: Job) -> str:
        flaky_runs[job.id] = flaky_runs.get(job.id, 0) + 1
        if job.attempts < 3:
            raise ConnectionError(f"upstream timeout (attempt {job.attempts})")
        return "ok on attempt 3"

    @queue.process("heartbeat")
    async def heartbeat(job: Job) -> str:
        return f"beat for {job.data['svc']}"

    @queue.process("charge-card")
    async def charge(job: Job) -> None:
        raise NonRetryableError("card declined: do not retry")

    def on_event(e: EventData) -> None:
        if e.event == "job-completed":
            say(f"job-completed  {e.job_id:>3} {e.job.name:<13} result={e.result!r}")
        elif e.event == "job-retrying":
            say(f"job-retrying   {e.job_id:>3} {e.job.name:<13} in {e.delay_ms} ms ({e.error})")
        elif e.event == "job-dlq":
            say(f"job-dlq        {e.job_id:>3} moved to the dead-letter queue")
        elif e.event == "job-progress":
            say(f"job-progress   {e.job_id:>3} {e.progress}%")
        elif e.event == "schedule-fired":
            say(f"schedule-fired {e.extra['schedule_id']} -> job {e.job_id}")

    for ev in ("job-completed", "job-retrying", "job-dlq", "job-progress", "schedule-fired"):
        queue.on(ev, on_event)

    echo(f"kitium-queue demo on {redact_url(redis)}\n")
    ids = [
        await queue.add_job("send-email", {"to": "ada@example.com"}, priority=10),
        await queue.add_job("resize-image", {"file": "cat.png"}),
        await queue.add_job("flaky-api", {"call": "GET /rates"}, attempts=5),
        await queue.add_job("charge-card", {"amount": 4200}),
        await queue.add_job("send-email", {"to": "later@example.com"}, delay=300),
    ]
    dup = await queue.add_job(
        "send-email", {"to": "ada@example.com"}, idempotency_key="welcome-ada"
    )
    again = await queue.add_job(
        "send-email", {"to": "ada@example.com"}, idempotency_key="welcome-ada"
    )
    ids.append(dup)
    say(f"added jobs {ids} (a repeated idempotency key returned the same id: {again == dup})")

    # A schedule: the worker's scheduler fires it (any number of workers may run one;
    # each tick is enqueued once).
    beat = await queue.schedule_every("heartbeat", {"svc": "api"}, 250, limit=3)
    say(f"scheduled {beat.id!r}: every 250 ms, 3 runs")

    await queue.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = await queue.get_stats()
        done = s.completed >= 8 and s.dlq >= 1 and s.delayed == 0 and s.waiting == 0
        if done and s.active == 0 and (await queue.get_schedule(beat.id) or beat).finished:
            break
        await asyncio.sleep(0.02)

    stats = await queue.get_stats()
    say(f"stats: {stats.to_dict()}")
    dead = await queue.get_dlq_jobs()
    for info in dead:
        say(
            f"in DLQ: job {info.id} {info.name} attempts={info.attempts} "
            f"reason={info.failed_reason!r}"
        )
    first = await queue.get_job_status(ids[0])
    if first is not None:
        say(
            f"job {first.id}: status={first.status.value} progress={first.progress} "
            f"logs={await queue.get_job_logs(first.id)}"
        )
    replayed = await queue.replay_dlq()
    say(f"replayed {replayed} job(s) from the DLQ (it will fail again: the card is declined)")
    await asyncio.sleep(0.2)
    events: list[str] = []
    async for entry in queue.events(last_id="0", block_ms=50, follow=False):
        events.append(entry.event)
    say(f"durable event stream holds {len(events)} events, e.g. {sorted(set(events))}")
    await _cleanup(queue)
    echo(
        "\ndone: the README (the project's page, or README.md in its source) shows the API; "
        "`kitium-queue --help` lists the commands"
    )


async def _cleanup(queue: JobQueue) -> None:
    await queue.clear(force=True)
    await queue.close()
