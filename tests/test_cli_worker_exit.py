"""How ``kitium-queue worker`` ends after SIGTERM, in subprocesses on a real Redis.

* A processor that ignores its cancellation: the stop gives up on it (an ERROR, its job
  left leased), and the process then ends at once with ``EXIT_STUCK``, which ends the
  processor too. Before, ``asyncio.run`` cancelled it again at its end and waited for it
  for ever: the process lived until a SIGKILL and the processor ran on past its lease.
  The same for a job's call in a thread (``asyncio.to_thread``) that outlives the stop.
* A second SIGTERM during the grace forces the stop (also with a stuck processor).
* SIGTERM while the worker starts (its services starting, its first job claimed): the
  handlers are in place before the first claim. Before, the process died at once and
  its first jobs stayed leased until their leases expired.
* ``run_worker()`` embedded in an app's own ``asyncio.run``: the documented pattern
  (``runends.ignoring_cancellation``) ends such a process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kitium_queue import JobQueue, JobStatus
from kitium_queue.cli import EXIT_CODES

pytestmark = pytest.mark.redis_only
SRC = str(Path(__file__).resolve().parents[1] / "src")
EXIT_STUCK = 5

# Each processor appends a line to MARK while it runs: the test sees it work.
APP = """
import asyncio, os, time
from kitium_queue import JobQueue

MARK = os.environ["KQT_MARK"]
queue = JobQueue(
    "wx",
    redis=os.environ["KQT_REDIS"],
    prefix=os.environ["KQT_PREFIX"],
    worker={"shutdown_timeout": int(os.environ.get("KQT_GRACE_MS", "1000"))},
    settings={"lock_duration": 30_000},
)


def mark(what="tick"):
    with open(MARK, "a") as f:
        f.write(what + "\\n")


@queue.process("stubborn")
async def stubborn(job):
    while True:
        try:
            mark()
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            mark("cancelled")


def spin():
    while True:
        mark()
        time.sleep(0.1)


@queue.process("threaded")
async def threaded(job):
    await asyncio.to_thread(spin)


@queue.process("long")
async def long(job):
    mark()
    await asyncio.sleep(120)


@queue.process("quick")
async def quick(job):
    mark("started")
    await asyncio.sleep(0.5)
    return "done"


class SlowStart:
    name = "slow-start"

    async def start(self, queue):
        await asyncio.sleep(float(os.environ.get("KQT_SLOW_START_S", "0")))

    async def stop(self):
        pass


queue.add_service(SlowStart())
"""


class Worker:
    """A worker subprocess on the test app, and the file its processors mark."""

    def __init__(self, tmp: Path, redis_url: str, prefix: str, argv: list[str], **env: str):
        self.mark = tmp / "mark.txt"
        self.err_path = tmp / "stderr.txt"
        self.err = self.err_path.open("w")
        full = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([SRC, str(tmp)]),
            "KQT_MARK": str(self.mark),
            "KQT_REDIS": redis_url,
            "KQT_PREFIX": prefix,
            **env,
        }
        self.proc = subprocess.Popen(argv, cwd=tmp, stderr=self.err, env=full)

    def marks(self) -> list[str]:
        return self.mark.read_text().split() if self.mark.exists() else []

    def wait_for(self, test: Any, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not test():
            assert self.proc.poll() is None, (what, self.stderr())
            assert time.monotonic() < deadline, (what, self.stderr())
            time.sleep(0.05)

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text()

    def exit_code(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "wxapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
def start_worker(app_dir: Path, redis_url: str, prefix: str) -> Iterator[Any]:
    started: list[Worker] = []

    def start(*extra: str, **env: str) -> Worker:
        argv = [sys.executable, "-m", "kitium_queue.cli", "worker", "wxapp:queue", *extra]
        w = Worker(app_dir, redis_url, prefix, argv, **env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def _add(redis_url: str, prefix: str, name: str) -> str:
    async def go() -> str:
        q = JobQueue("wx", redis=redis_url, prefix=prefix)
        try:
            return await q.add_job(name, {})
        finally:
            await q.close()

    return asyncio.run(go())


def _status(redis_url: str, prefix: str, jid: str) -> Any:
    async def go() -> Any:
        q = JobQueue("wx", redis=redis_url, prefix=prefix)
        try:
            return await q.get_job_status(jid)
        finally:
            await q.close()

    return asyncio.run(go())


# Past the stop's bound (grace 1 s, then half of the 5 s flush for the cancelled job,
# 2 s for the presence record, the close): the process has no reason to live then.
EXIT_WITHIN_S = 30.0


def _assert_ended_with_it(w: Worker) -> None:
    """The processor does not run on once the process has ended."""
    before = len(w.marks())
    time.sleep(0.5)
    assert len(w.marks()) == before


def test_a_processor_that_ignores_cancellation_ends_with_the_process(
    start_worker: Any, redis_url: str, prefix: str
) -> None:
    assert "did not end when cancelled" in EXIT_CODES[EXIT_STUCK]
    w = start_worker()
    jid = _add(redis_url, prefix, "stubborn")
    w.wait_for(lambda: len(w.marks()) >= 3, "the job runs")
    w.proc.send_signal(signal.SIGTERM)
    code = w.exit_code(EXIT_WITHIN_S)
    assert code == EXIT_STUCK, (code, w.stderr())
    err = w.stderr()
    assert "ignored its cancellation" in err and "exit code 5" in err, err
    assert "cancelled" in w.marks()  # it was cancelled (and ignored it)
    _assert_ended_with_it(w)
    info = _status(redis_url, prefix, jid)
    # Left leased (documented): recovered once the lease expires, never run twice at once.
    assert info.status is JobStatus.ACTIVE, info


def test_a_thread_that_outlives_the_stop_ends_with_the_process(
    start_worker: Any, redis_url: str, prefix: str
) -> None:
    w = start_worker()
    _add(redis_url, prefix, "threaded")
    w.wait_for(lambda: len(w.marks()) >= 3, "the job runs")
    w.proc.send_signal(signal.SIGTERM)
    code = w.exit_code(EXIT_WITHIN_S)
    assert code == EXIT_STUCK, (code, w.stderr())
    assert "asyncio.to_thread" in w.stderr()
    _assert_ended_with_it(w)


def test_a_clean_stop_still_exits_0_and_hands_the_job_back(
    start_worker: Any, redis_url: str, prefix: str
) -> None:
    w = start_worker()
    jid = _add(redis_url, prefix, "long")
    w.wait_for(lambda: w.marks(), "the job runs")
    w.proc.send_signal(signal.SIGTERM)
    code = w.exit_code(EXIT_WITHIN_S)
    assert code == 0, (code, w.stderr())
    assert "ERROR" not in w.stderr()
    info = _status(redis_url, prefix, jid)
    assert info.status is JobStatus.WAITING and info.attempts == 0, info


@pytest.mark.parametrize(
    ("stubborn", "again", "expected"),
    [(True, signal.SIGTERM, EXIT_STUCK), (False, signal.SIGINT, 0)],
    ids=["stuck-processor-sigterm", "clean-sigint"],
)
def test_a_second_signal_forces_the_stop(
    start_worker: Any,
    redis_url: str,
    prefix: str,
    stubborn: bool,
    again: signal.Signals,
    expected: int,
) -> None:
    # A grace of 60 s: only the second signal can end the stop within the bound below.
    w = start_worker(KQT_GRACE_MS="60000")
    long_id = _add(redis_url, prefix, "long")
    if stubborn:
        _add(redis_url, prefix, "stubborn")
    w.wait_for(lambda: len(w.marks()) >= (4 if stubborn else 1), "the jobs run")
    w.proc.send_signal(signal.SIGTERM)
    w.wait_for(lambda: "stopping gracefully" in w.stderr(), "the stop begins")
    time.sleep(0.3)
    assert w.proc.poll() is None  # the grace goes on
    w.proc.send_signal(again)
    code = w.exit_code(20.0)
    assert code == expected, (code, w.stderr())
    assert f"{again.name} received again: stopping 1 worker(s) at once" in w.stderr()
    _assert_ended_with_it(w)
    info = _status(redis_url, prefix, long_id)
    assert info.status is JobStatus.WAITING and info.attempts == 0, info


def test_sigterm_while_the_worker_starts_stops_it_gracefully(
    start_worker: Any, redis_url: str, prefix: str
) -> None:
    # Its services take 3 s to start; its loops claim meanwhile.
    jid = _add(redis_url, prefix, "quick")
    w = start_worker(KQT_SLOW_START_S="3")
    w.wait_for(lambda: "started" in w.marks(), "the first job starts")
    w.proc.send_signal(signal.SIGTERM)
    code = w.exit_code(EXIT_WITHIN_S)
    assert code == 0, (code, w.stderr())
    info = _status(redis_url, prefix, jid)
    assert info.status is JobStatus.COMPLETED, info  # not left leased by a dead process


EMBEDDED = """
import asyncio, logging, os, sys
from kitium_queue.runends import ignoring_cancellation
from wxapp import queue

logging.basicConfig(level=logging.INFO)


async def main():
    await queue.run_worker()
    stuck = ignoring_cancellation()
    print(f"stuck={len(stuck)}", flush=True)
    if stuck:  # asyncio.run would wait for them for ever
        logging.shutdown()
        os._exit(5)


asyncio.run(main())
"""


def test_embedded_run_worker_and_the_documented_pattern(
    app_dir: Path, start_worker: Any, redis_url: str, prefix: str
) -> None:
    (app_dir / "embedded.py").write_text(textwrap.dedent(EMBEDDED))
    w = Worker(app_dir, redis_url, prefix, [sys.executable, "embedded.py"])
    try:
        w.wait_for(lambda: "started on queue" in w.stderr(), "the worker starts")
        _add(redis_url, prefix, "stubborn")
        w.wait_for(lambda: len(w.marks()) >= 3, "the job runs")
        w.proc.send_signal(signal.SIGTERM)
        code = w.exit_code(EXIT_WITHIN_S)
        assert code == 5, (code, w.stderr())
        _assert_ended_with_it(w)
    finally:
        w.close()
