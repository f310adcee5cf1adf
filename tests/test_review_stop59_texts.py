"""Job-text filters, sealed progress values and log lines, and the event-loop watchdog:
defects found in review, each against a real Redis where Redis is involved.

* A rotation round that meets only an active job's log list (several sealed lines)
  counts it as one cell found and one conflict, so that the pass waits between rounds
  for the job to end (it re-read the whole queue without a pause while the job ran).
* A processor in a child process reporting a progress value within the limit in clear
  but above it once sealed: the value is refused (nothing written, said in the log) and
  the run goes on (the parent's refusal ended the run, killing the child).
* The workers of a partitioned queue share one event-loop watchdog (one thread, one
  warning per blocked episode, counted by each), not one each: 1,024 partitions ran
  1,024 threads, each waking every 25 ms, and one blocked loop was said by every one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

import test_encryption
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus
from kitium_queue.features.encryption import rotation
from kitium_queue.features.partitioned import PartitionedQueue
from test_encryption_failures_sealed import rotation_queue
from test_encryption_progress_logs_sealed import enc_queue

rq = test_encryption.rq


def big_child_progress(job: Any) -> dict[str, Any]:
    """A processor run in a child process (``mode="process"``): 60,000 bytes of progress
    (within the limit in clear, above it sealed), then a small value and a log line."""
    job.update_progress_sync("x" * 59_998)
    job.update_progress_sync(7)
    job.log_sync("after the big value")
    return {"ok": True}


async def test_a_round_counts_an_active_jobs_log_list_once(
    rq: QueueFactory, redis_client: aioredis.Redis
) -> None:
    q, m = rotation_queue(rq)
    release = asyncio.Event()
    logged = asyncio.Event()

    @q.process("charge")
    async def charge(job: Any) -> Any:
        for n in range(3):
            await job.log(f"line {n}")
        logged.set()
        await release.wait()
        return 1

    job_id = await q.add_job("charge", {}, encrypted=True)
    await q.start()
    try:
        await asyncio.wait_for(logged.wait(), 10)
        await m.rotate_key("k1", "k2")
        n = int((await redis_client.hget(q.keys.extra("enc:rotation"), "n")).decode())
        res = await rotation.RotationPass(m)._round(n, 1, 0)
        assert res is not None
        # Only the active job's cells are left, each one a conflict: the pass then waits
        # before its next round (RotationPass.run: found == conflicts).
        assert res.conflicts > 0 and res.found == res.conflicts
    finally:
        release.set()
    await wait_for_status(q, job_id, JobStatus.COMPLETED)


async def test_a_child_progress_value_too_large_once_sealed_does_not_end_the_run(
    rq: QueueFactory, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    q, _ = enc_queue(rq, "childbig")
    q.process("big", big_child_progress, mode="process")
    job_id = await q.add_job("big", {}, encrypted=True, attempts=1)
    caplog.set_level(logging.WARNING)
    await q.start()
    info = await wait_for_status(
        q, job_id, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ, timeout=60
    )
    assert info.status == JobStatus.COMPLETED, info.failed_reason
    assert info.progress == 7 and info.result == {"ok": True}
    assert await q.get_job_logs(job_id) == ["after the big value"]
    pg = await redis_client.hget(q.keys.job(job_id), "pg")
    assert pg.startswith(b'"(sealed: key k1) ') and len(pg) <= 65_536
    await wait_until(lambda: any("60000 bytes encoded" in r.getMessage() for r in caplog.records))


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kq-loopwatch-")]


async def test_the_workers_of_a_partitioned_queue_share_one_watchdog(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(_watch_threads())
    pq = PartitionedQueue(
        "lwp",
        partitions=4,
        redis=redis_url,
        prefix=prefix,
        worker={"concurrency": 4, "scheduler": False, "loop_block_warn": 200},
    )
    blocked = asyncio.Event()

    @pq.process("n")
    async def sleepy(job: Any) -> str:
        time.sleep(0.6)  # blocks the loop every partition's worker runs on
        blocked.set()
        return "ok"

    try:
        with caplog.at_level(logging.WARNING, "kitium_queue"):
            await pq.start()
            await wait_until(lambda: set(_watch_threads()) - before, timeout=5)
            assert len(set(_watch_threads()) - before) == 1
            await pq.add_job("n", {})
            await asyncio.wait_for(blocked.wait(), 15)
            watches = [w.leases.loopwatch for w in pq.workers]
            await wait_until(lambda: all(w.blocked == 1 for w in watches), timeout=5)
            await asyncio.sleep(0.3)
        said = [r for r in caplog.records if "was blocked for at least" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        # One worker's stop hands the beat and the thread to another.
        first = pq.workers[0]
        await first.stop()
        mine = set(_watch_threads()) - before
        assert len(mine) == 1 and all(t.is_alive() for t in mine)
    finally:
        await pq.close()
    assert set(_watch_threads()) <= before
