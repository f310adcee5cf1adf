"""Job tracking: progress, logs, job status, jobs by status, queue statistics and health.

Status tracking, progress reporting and monitoring: long-running jobs report progress
and write log lines while the script inspects them from the outside, as a dashboard or
an API endpoint would.

    python examples/job_tracking.py                                # embedded memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/job_tracking.py
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from kitium_queue import EventData, Job, JobQueue, JobStatus, QueueEvent, QueueStats

REDIS_URL = os.environ.get("KQ_REDIS_URL", "").strip() or "memory://"
# A key prefix of its own per run, so runs never collide on a shared Redis.
PREFIX = f"kq-examples-{os.getpid()}"

# Two jobs at a time, so that while we look some jobs are active and others wait.
queue = JobQueue("my-queue", redis=REDIS_URL, prefix=PREFIX, worker={"concurrency": 2})


@queue.process("big-task")
async def big_task(job: Job) -> dict[str, Any]:
    rows = 0
    for step in range(5):
        await asyncio.sleep(0.1)  # stand-in for real work
        rows += job.data["rows"] // 5
        await job.log(f"step {step + 1}: {rows} rows imported")
        await job.update_progress((step + 1) * 20)  # report progress (0-100, or any JSON)
    return {"imported": rows}


@queue.process("send-report")
async def send_report(job: Job) -> str:
    return f"report sent to {job.data['to']}"


def show_stats(stats: QueueStats) -> None:
    print(f"  stats: active={stats.active} waiting={stats.waiting} delayed={stats.delayed} "
          f"completed={stats.completed} failed={stats.failed} dlq={stats.dlq} "
          f"paused={stats.is_paused} latency_ms={stats.latency_ms}")


async def main() -> None:
    tracked: list[str] = []  # the job we follow closely
    halfway = asyncio.Event()
    completed: set[str] = set()
    all_completed = asyncio.Event()
    expected = 4

    def on_started(event: EventData) -> None:
        print(f"Job {event.job_id} started ({event.job.name})")

    def on_progress(event: EventData) -> None:
        print(f"Progress: job {event.job_id} at {event.progress}%")
        if tracked and event.job_id == tracked[0] and event.progress >= 40:
            halfway.set()

    def on_completed(event: EventData) -> None:
        print(f"Job {event.job_id} completed: {event.result}")
        completed.add(str(event.job_id))
        if len(completed) == expected:
            all_completed.set()

    queue.on(QueueEvent.JOB_STARTED, on_started)
    queue.on(QueueEvent.JOB_PROGRESS, on_progress)
    queue.on(QueueEvent.JOB_COMPLETED, on_completed)

    imports = [
        await queue.add_job("big-task", {"source": f"customers-{n}.csv", "rows": 1000 * n})
        for n in (1, 2, 3)
    ]
    tracked.append(imports[0])
    report = await queue.add_job("send-report", {"to": "ops@example.com"}, delay=300)

    await queue.start()
    try:
        # Look at the queue while the first import is half done.
        await asyncio.wait_for(halfway.wait(), timeout=10)
        info = await queue.get_job_status(imports[0])
        assert info is not None
        print(f"Status of job {info.id}: {info.status.value}, progress {info.progress}%, "
              f"attempt {info.attempts}/{info.max_attempts}")
        active = await queue.get_jobs_by_status(JobStatus.ACTIVE)
        waiting = await queue.get_jobs_by_status(JobStatus.WAITING)
        delayed = await queue.get_jobs_by_status(JobStatus.DELAYED, 50)
        print(f"  active: {[j.id for j in active]}  waiting: {[j.id for j in waiting]}  "
              f"delayed: {[j.id for j in delayed]}")
        show_stats(await queue.get_stats())
        health = await queue.health_check()
        latency = health.redis_latency_ms
        print(f"  healthy={health.healthy} backend={health.backend} "
              f"redis_latency_ms={'n/a' if latency is None else round(latency, 2)}")

        await asyncio.wait_for(all_completed.wait(), timeout=15)

        # The stored record of a finished job, as get_job_status() returns it.
        info = await queue.get_job_status(imports[0])
        assert info is not None and info.started_at and info.finished_at
        print(f"Final status of job {info.id}: name={info.name} status={info.status.value} "
              f"progress={info.progress} attempts={info.attempts}/{info.max_attempts} "
              f"result={info.result} took={info.finished_at - info.started_at} ms")
        for line in await queue.get_job_logs(imports[0]):
            print(f"  log: {line}")
        done = await queue.get_jobs_by_status(JobStatus.COMPLETED)  # newest first
        print(f"  completed: {sorted(j.id for j in done)} (report job {report} included)")
        show_stats(await queue.get_stats())
    finally:
        await queue.clear(force=True)
        await queue.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
