"""Scheduling: cron and interval schedules, with jitter.

``schedule_job`` (cron) and ``schedule_every`` (interval with jitter). Schedules live in
Redis and fire once per tick however many workers run them (docs/scheduling.md has
every option).

A daily report (02:00) and a heartbeat every 30 s fire too rarely to watch here, so this
script declares them, shows when they will run next, and also declares two fast ones that
it waits for: a cron pattern with a seconds field and a 500 ms interval.

    python examples/scheduling.py                                  # embedded memory:// backend
    KQ_REDIS_URL=redis://localhost:6379/0 python examples/scheduling.py
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from datetime import datetime, timezone

from kitium_queue import Job, JobQueue

REDIS_URL = os.environ.get("KQ_REDIS_URL", "").strip() or "memory://"
# A key prefix of its own per run, so runs never collide on a shared Redis.
PREFIX = f"kq-examples-{os.getpid()}"

queue = JobQueue("my-queue", redis=REDIS_URL, prefix=PREFIX)

# Runs per schedule, and a signal for main() whenever one finishes.
runs: Counter[str] = Counter()
ran = asyncio.Event()


def schedule_of(job: Job) -> str:
    # Each tick's job has the id "sched:<schedule id>:<tick ms>" (docs/scheduling.md).
    return job.id.removeprefix("sched:").rsplit(":", 1)[0]


@queue.process("daily-report")
async def daily_report(job: Job) -> str:
    runs[schedule_of(job)] += 1
    print(f"[{now()}] daily-report {job.data} (schedule {schedule_of(job)!r})")
    ran.set()
    return "report sent"


@queue.process("heartbeat")
async def heartbeat(job: Job) -> str:
    runs[schedule_of(job)] += 1
    print(f"[{now()}] heartbeat from {job.data['service']} (schedule {schedule_of(job)!r})")
    ran.set()
    return "ok"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def at(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def main() -> None:
    # Run daily at 2 AM (UTC unless tz= is given, e.g. tz="Europe/Berlin").
    daily = await queue.schedule_job("daily-report", {"type": "full"}, "0 2 * * *")
    # Run every 30 seconds with up to 2 seconds of jitter.
    beat = await queue.schedule_every("heartbeat", {"service": "api"}, 30_000, jitter=2000)
    for s in (daily, beat):
        print(f"declared {s.id!r}: next run at {at(s.next_run_at)} UTC")

    # Two fast schedules to watch: 6 cron fields put seconds first ("every second"),
    # `limit` ends a schedule after that many runs.
    fast_cron = await queue.schedule_job(
        "daily-report", {"type": "preview"}, "* * * * * *", limit=2, schedule_id="report-preview"
    )
    fast_beat = await queue.schedule_every(
        "heartbeat", {"service": "worker"}, 500, jitter=100, limit=3, schedule_id="heartbeat-fast"
    )
    expected = {fast_cron.id: 2, fast_beat.id: 3}

    # Every worker also runs the scheduler: no separate beat process.
    await queue.start()
    try:
        async def all_ran() -> None:
            while any(runs[sid] < n for sid, n in expected.items()):
                ran.clear()
                await ran.wait()

        await asyncio.wait_for(all_ran(), timeout=15)

        for s in await queue.get_schedules():
            print(f"schedule {s.id!r}: runs={s.runs} finished={s.finished} "
                  f"next={at(s.next_run_at)}")
        print(f"preview reports: {runs[fast_cron.id]}, fast heartbeats: {runs[fast_beat.id]}")
    finally:
        # Schedules outlive the process (and `clear()` keeps them): remove them first.
        for s in await queue.get_schedules():
            await queue.remove_schedule(s.id)
        await queue.clear(force=True)
        await queue.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
