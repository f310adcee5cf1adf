"""mode="process" children and the signals, timeouts and deaths around them.

* a SIGTERM or SIGINT to the worker's whole process group (Ctrl-C, a service manager
  stopping its unit) stops the worker gracefully: the children are not killed by it,
  their jobs complete; the same signal to the worker alone still stops it gracefully;
* a worker killed outright takes its children along (no job runs on as an orphan);
* starting a child (Python, the processor's module) is not charged to the job's
  timeout; a child that cannot start in time fails with ``ChildStartTimeout``, never
  blaming the processor;
* a timeout, or a stop past its grace period, kills what the processor started too; a
  child that died while a process it forked holds its pipe fails its run at once;
* a thread an earlier job left behind cannot log or report progress into a later job;
* a bound method is refused at registration; ``worker.max_jobs_per_child`` recycles
  children.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import procjobs_signals
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus, procpool

pytestmark = pytest.mark.redis_only

#: A child starts a Python interpreter, which takes seconds on a loaded machine (the
#: waits end as soon as the state is reached).
WAIT_S = 30.0
TESTS = Path(__file__).resolve().parent

WORKER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import procjobs_signals
from kitium_queue import JobQueue

async def main():
    q = JobQueue("sig", redis={url!r}, prefix={prefix!r}, worker={{"concurrency": 2}})
    q.process("nap", procjobs_signals.nap, mode="process")
    await q.run_worker()

asyncio.run(main())
"""


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return not Path("/proc").is_dir()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


async def _read(path: Path) -> str:
    await wait_until(path.exists, WAIT_S, interval=0.05, message=f"{path.name} not written")
    return path.read_text()


async def _pid_in(path: Path) -> int:
    return int(await _read(path))


async def _status(q: JobQueue, job_id: str, *statuses: JobStatus | str) -> Any:
    return await wait_for_status(q, job_id, *statuses, timeout=WAIT_S)


def _start_worker(tmp_path: Path, redis_url: str, prefix: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), url=redis_url, prefix=prefix))
    # A session of its own: its pid is its process group's, as a shell or a service
    # manager gives a worker.
    return subprocess.Popen([sys.executable, str(script)], start_new_session=True)


# ================================================================ signals


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGTERM, True), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGTERM-group", "SIGINT-group", "SIGTERM-worker"],
)
async def test_a_signal_to_the_worker_stops_it_gracefully_and_its_jobs_complete(
    make: QueueFactory,
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    sig: signal.Signals,
    to_group: bool,
) -> None:
    q = make("sig")
    files = [tmp_path / f"started{i}" for i in range(2)]
    ids = [
        await q.add_job("nap", {"file": str(f), "s": 1.5}, attempts=1, timeout=60_000)
        for f in files
    ]
    worker = _start_worker(tmp_path, redis_url, prefix)
    pids: list[int] = []
    try:
        pids = [await _pid_in(f) for f in files]  # both processors run
        if to_group:
            os.killpg(worker.pid, sig)
        else:
            os.kill(worker.pid, sig)
        assert await asyncio.to_thread(worker.wait, WAIT_S) == 0
        for job_id, child in zip(ids, pids, strict=True):
            info = await q.get_job_status(job_id)
            assert info is not None and info.status is JobStatus.COMPLETED, info
            assert info.result == child and info.attempts == 1
            assert not _alive(child)  # ended by the worker's stop
    finally:
        worker.kill()
        worker.wait()
        for child in pids:
            _kill(child)


async def test_a_worker_killed_outright_takes_its_children_along(
    make: QueueFactory, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    q = make("sig")
    started = tmp_path / "started"
    await q.add_job("nap", {"file": str(started), "s": 120}, attempts=1)
    worker = _start_worker(tmp_path, redis_url, prefix)
    child = 0
    try:
        child = await _pid_in(started)
        worker.kill()  # SIGKILL: the worker has no say
        worker.wait()
        await wait_until(lambda: not _alive(child), 10, message="the child outlived its worker")
    finally:
        worker.kill()
        worker.wait()
        _kill(child)


# ================================================================ timeouts


async def test_starting_a_child_is_not_charged_to_the_job_timeout(
    make: QueueFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Importing the processor's module takes 1.5 s in a child: three times the timeout.
    monkeypatch.setenv("KQ_TEST_SLOW_IMPORT_S", "1.5")
    q = make(worker={"concurrency": 1})
    q.process("nap", procjobs_signals.nap, mode="process")
    job_id = await q.add_job("nap", {"file": str(tmp_path / "ran")}, timeout=500, attempts=1)
    await q.start()
    info = await _status(q, job_id, JobStatus.COMPLETED, JobStatus.DLQ)
    assert info.status is JobStatus.COMPLETED, info.failed_reason
    assert info.result != os.getpid()


async def test_a_child_that_cannot_start_in_time_does_not_blame_the_processor(
    make: QueueFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procpool, "START_TIMEOUT_S", 1.0)
    monkeypatch.setenv("KQ_TEST_SLOW_IMPORT_S", "30")
    q = make(worker={"concurrency": 1})
    q.process("nap", procjobs_signals.nap, mode="process")
    ran = tmp_path / "ran"
    job_id = await q.add_job("nap", {"file": str(ran)}, timeout=500, attempts=1)
    await q.start()
    info = await _status(q, job_id, JobStatus.DLQ)
    reason = info.failed_reason or ""
    assert "ChildStartTimeout" in reason and "never ran" in reason, reason
    assert "TimeoutError" not in reason
    assert not ran.exists()


async def test_a_timeout_kills_what_the_processor_started(
    make: QueueFactory, tmp_path: Path
) -> None:
    q = make(worker={"concurrency": 1})
    q.process("spawn", procjobs_signals.spawn_and_sleep, mode="process")
    started = tmp_path / "grandchild"
    job_id = await q.add_job("spawn", {"file": str(started)}, timeout=1500, attempts=1)
    await q.start()
    grandchild = await _pid_in(started)
    try:
        info = await _status(q, job_id, JobStatus.DLQ)
        assert "TimeoutError" in (info.failed_reason or "")
        await wait_until(
            lambda: not _alive(grandchild), 10, message="the processor's `sleep` outlived it"
        )
    finally:
        _kill(grandchild)


async def test_a_stop_past_its_grace_kills_the_child_and_what_it_started(
    make: QueueFactory, tmp_path: Path
) -> None:
    q = make(worker={"concurrency": 1, "shutdown_timeout": 500})
    q.process("spawn", procjobs_signals.spawn_and_sleep, mode="process")
    q.process("pid", procjobs_signals.pid, mode="process")
    started = tmp_path / "grandchild"
    warm = await q.add_job("pid", None)
    job_id = await q.add_job("spawn", {"file": str(started)}, attempts=1)
    await q.start()
    child = (await _status(q, warm, JobStatus.COMPLETED)).result
    grandchild = await _pid_in(started)
    try:
        await q.close()
        info = await q.get_job_status(job_id)
        assert info is not None and info.status is JobStatus.WAITING and info.attempts == 0
        await wait_until(lambda: not _alive(child), 10, message="the child outlived the stop")
        await wait_until(lambda: not _alive(grandchild), 10, message="its `sleep` outlived it")
    finally:
        _kill(grandchild)


# ================================================================ deaths and strays


async def test_a_child_that_died_while_a_forked_helper_holds_its_pipe_fails_at_once(
    make: QueueFactory, tmp_path: Path
) -> None:
    q = make(worker={"concurrency": 1})
    q.process("fork", procjobs_signals.fork_helper_then_exit, mode="process")
    started = tmp_path / "helper"
    job_id = await q.add_job("fork", {"file": str(started)}, timeout=120_000, attempts=1)
    await q.start()
    helper = await _pid_in(started)
    try:
        # Within seconds, not at the job's 120 s timeout (the pipe stays open meanwhile).
        info = await wait_for_status(q, job_id, JobStatus.DLQ, timeout=15)
        reason = info.failed_reason or ""
        assert "ChildProcessDied" in reason and "exit code 5" in reason, reason
        await wait_until(lambda: not _alive(helper), 10, message="the helper outlived it")
    finally:
        _kill(helper)


async def test_a_thread_left_behind_cannot_write_into_the_next_job(
    make: QueueFactory, tmp_path: Path
) -> None:
    q = make(worker={"concurrency": 1})
    q.process("leave", procjobs_signals.leave_a_thread, mode="process")
    q.process("nap", procjobs_signals.nap, mode="process")
    said = tmp_path / "said"
    first = await q.add_job("leave", {"file": str(said)})
    # Runs next in the same child, while the thread of the first job wakes up.
    second = await q.add_job("nap", {"file": str(tmp_path / "ran"), "s": 1.0})
    await q.start()
    await _status(q, second, JobStatus.COMPLETED)
    assert await _read(said) == "LeaseLostError"
    for job_id in (first, second):
        info = await q.get_job_status(job_id)
        assert info is not None and info.progress is None
        assert await q.get_job_logs(job_id) == []


# ================================================================ registration, recycling


def test_a_bound_method_is_refused_for_process_mode() -> None:
    q = JobQueue("reg")
    with pytest.raises(ConfigurationError, match="bound to an instance"):
        q.process("m", procjobs_signals.HOLDER.method, mode="process")
    assert "m" not in q.processors
    q.process("c", procjobs_signals.Holder.make, mode="process")  # a classmethod: by name
    q.process("m", procjobs_signals.HOLDER.method)  # fine in a thread


async def test_max_jobs_per_child_replaces_each_child_after_that_many_jobs(
    make: QueueFactory,
) -> None:
    q = make(worker={"concurrency": 1, "max_jobs_per_child": 2})
    q.process("pid", procjobs_signals.pid, mode="process")
    ids = [await q.add_job("pid", None) for _ in range(5)]
    await q.start()
    pids = [(await _status(q, i, JobStatus.COMPLETED)).result for i in ids]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4], pids
    assert len(set(pids)) == 3
    assert not _alive(pids[0]) and not _alive(pids[2])


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3"])
def test_max_jobs_per_child_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"worker\.max_jobs_per_child"):
        JobQueue("cfg", worker={"max_jobs_per_child": bad})
