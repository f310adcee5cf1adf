"""The end of ``kitium-queue worker``'s event loop, and the warnings of runs that go on
after their timeout, on a real Redis.

* ``run_worker_loop`` (``cli/base.py``) cancels the tasks left at the loop's end, as
  ``asyncio.run`` does, and lets them end. It cancelled them again every 0.25 s: a task
  whose cancellation runs a cleanup (an app's background task flushing what it holds, a
  processor's ``except CancelledError``) had it cut short after 0.25 s, where
  ``asyncio.run`` let it finish. The stragglers are cancelled again only in the second
  half of the bound.
* ``overruns.py``: a plain ``def`` processor's thread past its timeout, and an ``async
  def`` processor that catches its timeout's cancellation, were each said in a WARNING
  per job: a dependency that hangs times out every job, and the log got a line per job.
  The first of each kind is named at once; those within ``OVERRUN_LOG_S`` after it are
  counted and said in one WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus, overruns

SRC = str(Path(__file__).resolve().parents[1] / "src")
_LOGGER = "kitium_queue.worker"

LOOP_END = """
import asyncio, sys
from kitium_queue.cli.base import run_worker_loop

async def cleanup_on_cancel():
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(0.6)  # e.g. flushing what it holds
        print("cleaned", flush=True)
        raise

async def main():
    asyncio.get_running_loop().create_task(cleanup_on_cancel())
    await asyncio.sleep(0.05)
    return "main-done"

print(run_worker_loop(main()), flush=True)
"""


def test_the_loops_end_lets_a_cancelled_task_finish_its_cleanup() -> None:
    """As ``asyncio.run``: cancelled once, a task gets to end (within the bound)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOOP_END)],
        env={"PYTHONPATH": SRC, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cleaned", "main-done"], (proc.stdout, proc.stderr)


@pytest.fixture
async def make(redis_url: str, prefix: str) -> Any:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _said(caplog: pytest.LogCaptureFixture, *parts: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == _LOGGER and all(p in r.getMessage() for p in parts)
    ]


N_JOBS = 12


@pytest.mark.redis_only
@pytest.mark.timeout(90)
async def test_threads_past_their_timeout_are_said_at_a_bounded_rate(
    make: QueueFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job hangs in its thread past its timeout: one WARNING names the first, one
    more counts the others (not a line per job)."""
    monkeypatch.setattr(overruns, "OVERRUN_LOG_S", 1.5, raising=False)
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    q = make("hung", worker={"concurrency": 4, "scheduler": False})
    release = threading.Event()

    def work(job: Any) -> None:
        release.wait(30)

    q.process("work", work)
    await q.start()
    ids = [
        await q.add_job("work", {"secret": "payload-xyz"}, timeout=100, attempts=1)
        for _ in range(N_JOBS)
    ]
    try:
        for jid in ids:
            await wait_for_status(q, jid, JobStatus.FAILED, JobStatus.DLQ, timeout=30)
        await wait_until(lambda: bool(_said(caplog, "more job(s)")), timeout=10)
    finally:
        release.set()
    named = _said(caplog, "was ended by its timeout", "still runs")
    counted = _said(caplog, "more job(s)", "thread")
    assert len(named) == 1, caplog.text
    assert len(counted) == 1 and f"{N_JOBS - 1} more job(s)" in counted[0], caplog.text
    assert "payload-xyz" not in caplog.text


@pytest.mark.redis_only
@pytest.mark.timeout(90)
async def test_processors_catching_their_timeout_are_said_at_a_bounded_rate(
    make: QueueFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overruns, "OVERRUN_LOG_S", 1.5, raising=False)
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    q = make("catching", worker={"concurrency": N_JOBS, "scheduler": False})

    async def work(job: Any) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)
        return "kept"

    q.process("work", work)
    await q.start()
    ids = [await q.add_job("work", {}, timeout=100, attempts=1) for _ in range(N_JOBS)]
    for jid in ids:
        await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=30)
    await wait_until(lambda: bool(_said(caplog, "more job(s)")), timeout=10)
    named = _said(caplog, "caught the cancellation of its timeout")
    counted = _said(caplog, "more job(s)", "caught the cancellation")
    assert len(named) == 1, caplog.text
    assert len(counted) == 1 and f"{N_JOBS - 1} more job(s)" in counted[0], caplog.text
