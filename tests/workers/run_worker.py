"""A standalone worker process for the crash, fencing and reconnect tests.

    python run_worker.py --url redis://127.0.0.1:PORT/0 --prefix P --queue Q \
        --log /tmp/w1.log --behaviour sleep [--concurrency 4] [--lock-duration 2000] ...

It runs ``JobQueue.run_worker()`` (so SIGTERM/SIGINT take the library's graceful path)
with one processor for every job name. The processor appends a line to ``--log`` when a
job starts and when its processor returns::

    ready  - <pid> 0 <unix time>
    start  <job id> <pid> <attempt> <unix time>
    finish <job id> <pid> <attempt> <unix time>
    exit   - <pid> 0 <unix time>

Each line is written with one ``O_APPEND`` write followed by ``fsync``, so a SIGKILL loses
nothing already logged and several processes may share one file. ``finish`` means the
processor returned; the outcome becomes durable only when the worker flushes it.

Behaviours (``--behaviour``), using ``job.data["ms"]`` (default 0) as the job's length:

    sleep   ``await asyncio.sleep(ms)``: a well-behaved async job
    block   ``time.sleep(ms)`` inside ``async def``: blocks the event loop (no renewals)
    thread  ``time.sleep(ms)`` in a plain function (run in the worker's thread pool)
    fast    return at once, ignoring ``ms``
    kill    SIGKILL its own process as soon as the job starts
    exit    ``os._exit(3)`` as soon as the job starts

The result of every job is ``{"pid": <pid>, "attempt": <attempt>}``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from kitium_queue import JobQueue

BEHAVIOURS = ("sleep", "block", "thread", "fast", "kill", "exit")


class EventLog:
    """Append-only, crash-safe line log shared by processes."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.pid = os.getpid()

    def write(self, event: str, job_id: str = "-", attempt: int = 0) -> None:
        line = f"{event} {job_id} {self.pid} {attempt} {time.time():.6f}\n".encode()
        os.write(self.fd, line)
        os.fsync(self.fd)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--behaviour", choices=BEHAVIOURS, default="sleep")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--lock-duration", type=int, default=30_000)
    p.add_argument("--lock-renew", type=int, default=None)
    p.add_argument("--stalled-interval", type=int, default=5000)
    p.add_argument("--max-stalled", type=int, default=2)
    p.add_argument("--shutdown-timeout", type=int, default=30_000)
    return p.parse_args(argv)


def build_queue(args: argparse.Namespace, log: EventLog) -> JobQueue:
    settings: dict[str, Any] = {
        "lock_duration": args.lock_duration,
        "max_stalled_interval": args.stalled_interval,
        "max_stalled_count": args.max_stalled,
    }
    if args.lock_renew is not None:
        settings["lock_renew_time"] = args.lock_renew
    queue = JobQueue(
        args.queue,
        redis=args.url,
        prefix=args.prefix,
        settings=settings,
        worker={"concurrency": args.concurrency, "shutdown_timeout": args.shutdown_timeout},
    )
    behaviour = args.behaviour

    def length_s(job: Any) -> float:
        data = job.data if isinstance(job.data, dict) else {}
        return float(data.get("ms", 0)) / 1000

    def result(job: Any) -> dict[str, int]:
        return {"pid": log.pid, "attempt": job.attempts}

    if behaviour == "thread":

        def plain(job: Any) -> dict[str, int]:
            log.write("start", job.id, job.attempts)
            time.sleep(length_s(job))
            log.write("finish", job.id, job.attempts)
            return result(job)

        queue.process("*", plain)
        return queue

    async def processor(job: Any) -> dict[str, int]:
        log.write("start", job.id, job.attempts)
        if behaviour == "sleep":
            await asyncio.sleep(length_s(job))
        elif behaviour == "block":
            time.sleep(length_s(job))  # deliberately blocks the event loop
        elif behaviour == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif behaviour == "exit":
            os._exit(3)
        log.write("finish", job.id, job.attempts)
        return result(job)

    queue.process("*", processor)
    return queue


async def main(args: argparse.Namespace) -> int:
    log = EventLog(args.log)
    queue = build_queue(args, log)

    async def announce() -> None:
        while queue.worker is None or not queue.worker.running:
            await asyncio.sleep(0.005)
        log.write("ready")

    announcer = asyncio.create_task(announce())
    try:
        await queue.run_worker()
    finally:
        announcer.cancel()
        await queue.close()
    log.write("exit")
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(main(parse_args())))
