"""A worker's stop, as a deployment drives it (SIGTERM, a second one), and its restart.

* a ``Worker`` starts once: started again once stopped it counted as running but never
  claimed, and its queue's ``start()`` then took it for running and started none, so the
  queue's jobs waited for good; started again while running it got a second set of loops.
  ``queue.start()`` after a stop makes a new worker, which runs the jobs;
* a second SIGTERM during the stop of a worker running a ``mode="process"`` job hands
  that job back at once (waiting, no attempt spent, no stall) and kills its child. The
  run used to wait for its child's exit after killing it, and the forced stop gave up
  on it first: the job was left leased (a stall once its lease expired), with an ERROR
  blaming a processor that ignores cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus
from kitium_queue.presence import live_workers
from test_procpool_signals import _alive

WAIT_S = 30.0  # a child or a worker process starts Python: seconds on a loaded machine
TESTS = Path(__file__).resolve().parent

WORKER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import procjobs_signals
from kitium_queue import JobQueue

async def main():
    q = JobQueue("sd", redis={url!r}, prefix={prefix!r},
                 worker={{"concurrency": 2, "shutdown_timeout": 60000}})
    q.process("nap", procjobs_signals.nap, mode="process")
    await q.run_worker()

asyncio.run(main())
"""


async def test_a_worker_starts_once_and_the_queue_starts_a_new_one(
    redis_url: str, prefix: str
) -> None:
    factory = QueueFactory(redis_url, prefix)
    try:
        q = factory("once", worker={"shutdown_timeout": 1000})

        @q.process("j")
        async def j(job: Any) -> str:
            return "done"

        await q.start()
        first = q.worker
        assert first is not None
        with pytest.raises(RuntimeError, match="started already"):
            await first.start()  # running: no second set of loops
        assert await wait_for_status(q, await q.add_job("j", {}), JobStatus.COMPLETED)
        await first.stop()
        with pytest.raises(RuntimeError, match="started already"):
            await first.start()  # stopped: never a worker that counts as running, idle
        assert not first.running
        await q.start()  # a new worker
        second = q.worker
        assert second is not None and second is not first and second.running
        info = await wait_for_status(q, await q.add_job("j", {}), JobStatus.COMPLETED)
        assert info.result == "done"
        await q.close()
        await q.start()  # after close() as well
        info = await wait_for_status(q, await q.add_job("j", {}), JobStatus.COMPLETED)
        assert info.result == "done"
    finally:
        await factory.aclose()


@pytest.mark.redis_only
async def test_a_second_sigterm_hands_back_a_process_mode_job_at_once(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    factory = QueueFactory(redis_url, prefix)
    started = tmp_path / "started"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), url=redis_url, prefix=prefix))
    worker: subprocess.Popen[bytes] | None = None
    child = 0
    try:
        q = factory("sd")
        job_id = await q.add_job("nap", {"file": str(started), "s": 120}, attempts=1)
        worker = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
        await wait_until(started.exists, WAIT_S, interval=0.05, message="the job never ran")
        child = int(started.read_text())
        os.kill(worker.pid, signal.SIGTERM)  # a graceful stop: 60 s of grace for the job

        async def stopping() -> bool:
            return any(w.stopping for w in await live_workers(q))

        await wait_until(stopping, WAIT_S, interval=0.05, message="the stop never began")
        os.kill(worker.pid, signal.SIGTERM)  # forced: the job is handed back now
        assert await asyncio.to_thread(worker.wait, WAIT_S) == 0
        info = await q.get_job_status(job_id)
        assert info is not None
        assert info.status is JobStatus.WAITING, info  # before: active, left to stall
        assert info.attempts == 0 and info.stalls == 0, info
        await wait_until(lambda: not _alive(child), 10, message="the child outlived the stop")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        if child:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        await factory.aclose()
