"""mode="process": plain processors in child processes, with hard timeouts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import procjobs
from kitium_queue import ConfigurationError, JobQueue, JobStatus

pytestmark = pytest.mark.redis_only


async def _settle(queue: JobQueue, ids: list[str], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    final = {JobStatus.COMPLETED, JobStatus.DLQ, JobStatus.FAILED}
    while loop.time() < deadline:
        infos = [await queue.get_job_status(i) for i in ids]
        if all(i is not None and i.status in final for i in infos):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"jobs did not finish: {[await queue.get_job_status(i) for i in ids]}")


async def test_process_mode_runs_in_a_child_with_progress_and_logs(redis_url: str, prefix: str):
    queue = JobQueue("proc", redis=redis_url, prefix=prefix, worker={"concurrency": 2})
    queue.process("double", procjobs.double, mode="process")
    job_id = await queue.add_job("double", {"x": 21})
    await queue.start()
    try:
        await _settle(queue, [job_id])
        info = await queue.get_job_status(job_id)
        assert info is not None and info.status is JobStatus.COMPLETED
        assert info.result["value"] == 42
        assert info.result["pid"] != os.getpid()
        assert info.progress == 40
        assert await queue.get_job_logs(job_id) == ["doubling 21"]
    finally:
        await queue.close()


async def test_hard_timeout_kills_the_child_and_frees_the_slot(redis_url: str, prefix: str):
    queue = JobQueue("proc", redis=redis_url, prefix=prefix, worker={"concurrency": 1})
    queue.process("spin", procjobs.spin, mode="process")
    queue.process("double", procjobs.double, mode="process")
    hung = await queue.add_job("spin", None, timeout=500, attempts=1)
    after = await queue.add_job("double", {"x": 1})
    await queue.start()
    try:
        await _settle(queue, [hung, after])
        info = await queue.get_job_status(hung)
        assert info is not None and info.status is JobStatus.DLQ
        assert "TimeoutError" in (info.failed_reason or "")
        done = await queue.get_job_status(after)
        assert done is not None and done.status is JobStatus.COMPLETED
    finally:
        await queue.close()


async def test_outcome_signals_cross_the_process_boundary(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    queue = JobQueue("proc", redis=redis_url, prefix=prefix, worker={"concurrency": 2})
    for name in ("refuse", "later", "crash", "unserializable"):
        queue.process(name, getattr(procjobs, name), mode="process")
    refused = await queue.add_job("refuse", None, attempts=5)
    later = await queue.add_job("later", {"marker": str(tmp_path / "seen")})
    crashed = await queue.add_job("crash", None, attempts=2, backoff={"type": "fixed", "delay": 10})
    bad = await queue.add_job("unserializable", None, attempts=3)
    await queue.start()
    try:
        await _settle(queue, [refused, later, crashed, bad])
        r = await queue.get_job_status(refused)
        assert r is not None and r.status is JobStatus.DLQ and r.attempts == 1
        assert r.failed_reason == "NonRetryableError: bad input"
        # The recorded traceback holds the child's frames, where the processor raised.
        detail = await queue.get_job_detail(refused)
        assert detail is not None and detail.stacktrace is not None
        assert "in the child process:" in detail.stacktrace
        assert "procjobs.py" in detail.stacktrace and "in refuse" in detail.stacktrace
        lt = await queue.get_job_status(later)
        assert lt is not None and lt.status is JobStatus.COMPLETED and lt.result == "ran"
        assert lt.attempts == 1  # RetryLater spent no attempt
        c = await queue.get_job_status(crashed)
        assert c is not None and c.status is JobStatus.DLQ and c.attempts == 2
        assert "ChildProcessDied" in (c.failed_reason or "")
        b = await queue.get_job_status(bad)
        assert b is not None and b.status is JobStatus.DLQ and b.attempts == 1
        assert "cannot be serialized" in (b.failed_reason or "")
    finally:
        await queue.close()


def test_process_mode_rejects_what_a_child_cannot_import() -> None:
    queue = JobQueue("proc")
    with pytest.raises(ConfigurationError, match="module-level function"):
        queue.process("x", lambda job: None, mode="process")

    async def coro(job: object) -> None: ...

    with pytest.raises(ConfigurationError, match="plain function"):
        queue.process("y", coro, mode="process")
    with pytest.raises(ConfigurationError, match="mode must be"):
        queue.process("z", procjobs.double, mode="fork")
