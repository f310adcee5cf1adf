"""A hostile or buggy processor, batch function or caller of the blocking client never
wedges a job, blames another job, leaks a process or hangs a thread.

* An exception whose ``__str__`` raises a ``BaseException`` (even one whose own
  ``__str__`` raises again) fails its job with a readable reason; the slot is freed.
* Process mode: a child that died while idle (a thread its last job left behind ended
  it) is replaced before the next job, which is not failed for it; job data a process
  middleware made unencodable fails that job alone and costs no child process; a killed
  child is reported with the signal that killed it.
* A batch function raising ``GeneratorExit`` fails every job of its batch at once.
* ``SyncJobQueue``: closing it ends the calls other threads still wait for, with a clear
  error; a blocking call from its own event-loop thread (a lifecycle subscriber) is
  refused instead of deadlocking the client.

Every test runs on the session's real Redis and reads the job's state back from it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import procjobs_hostile
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, SyncJobQueue

pytestmark = pytest.mark.timeout(60)

ENDED = (JobStatus.FAILED, JobStatus.DLQ)


class Evil(BaseException):
    """A BaseException whose ``__str__`` raises another of its kind."""

    def __str__(self) -> str:
        raise Evil()


class EvilError(Exception):
    def __str__(self) -> str:
        raise Evil()


#: How long a test waits for a state: a process-mode child starts a Python interpreter,
#: which takes seconds on a loaded machine (waits end as soon as the state is reached).
WAIT_S = 30.0


async def _status(q: JobQueue, job_id: str, *statuses: JobStatus | str) -> Any:
    return await wait_for_status(q, job_id, *statuses, timeout=WAIT_S)


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _queue(make: QueueFactory, concurrency: int = 1) -> JobQueue:
    return make(
        worker={"concurrency": concurrency, "shutdown_timeout": 2000},
        retry={"max_attempts": 1},
    )


def _children() -> list[int]:
    """Pids of this process's live process-mode children."""
    me, found = str(os.getpid()), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # Field 4 of /proc/<pid>/stat (after the command in parentheses) is the parent.
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[1] == me and fields[0] != "Z" and b"kitium_queue._child" in cmd:
            found.append(int(entry.name))
    return found


# ================================================================ runner


async def test_an_error_whose_str_raises_a_base_exception_fails_only_its_job(
    make: QueueFactory,
) -> None:
    q = _queue(make)

    @q.process("bad")
    async def bad(job: Any) -> None:
        raise Evil() if job.data == "base" else EvilError()

    @q.process("good")
    async def good(job: Any) -> str:
        return "ok"

    ids = [await q.add_job("bad", "base"), await q.add_job("bad", "error")]
    await q.start()
    for job_id, name in zip(ids, ("Evil", "EvilError"), strict=True):
        info = await _status(q, job_id, *ENDED)
        assert info.failed_reason == f"{name}: <unprintable {name}>"
    # The only slot was freed both times: the next job runs.
    good_id = await q.add_job("good", None)
    assert (await _status(q, good_id, JobStatus.COMPLETED)).result == "ok"


# ================================================================ process mode


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
async def test_a_child_that_died_idle_is_replaced_and_the_next_job_not_blamed(
    make: QueueFactory,
) -> None:
    q = _queue(make)
    q.process("exit-soon", procjobs_hostile.exit_soon_after, mode="process")
    q.process("pid", procjobs_hostile.pid, mode="process")
    first = await q.add_job("exit-soon", None)
    await q.start()
    old_pid = (await _status(q, first, JobStatus.COMPLETED)).result
    # The child, back in the pool, ends while idle.
    await wait_until(lambda: old_pid not in _children(), WAIT_S)
    second = await q.add_job("pid", None)
    info = await _status(q, second, JobStatus.COMPLETED, *ENDED)
    assert info.status is JobStatus.COMPLETED, info.failed_reason
    assert info.result != old_pid and info.attempts == 1


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
async def test_job_data_a_child_cannot_take_fails_alone_and_costs_no_child(
    make: QueueFactory,
) -> None:
    q = _queue(make, concurrency=2)
    q.process("pid", procjobs_hostile.pid, mode="process")

    async def unencodable(job: Any, call_next: Any) -> Any:
        if job.data == "bad":
            job.data = {"tags": {1, 2}}
        return await call_next()

    q.use_process(unencodable)
    ids = [await q.add_job("pid", "bad" if i % 2 else "fine") for i in range(6)]
    await q.start()
    for i, job_id in enumerate(ids):
        info = await _status(q, job_id, JobStatus.COMPLETED, *ENDED)
        if i % 2:
            assert info.status is JobStatus.DLQ
            assert (info.failed_reason or "").startswith(
                "NonRetryableError: job data cannot be sent to the child process: "
                "job data cannot be serialized to JSON"
            )
        else:
            assert info.status is JobStatus.COMPLETED
    assert len(_children()) <= 2  # one per slot at most
    await q.close()
    await wait_until(lambda: not _children(), WAIT_S, message="no child left after close()")


async def test_a_killed_child_is_reported_with_its_signal(make: QueueFactory) -> None:
    q = _queue(make)
    q.process("killed", procjobs_hostile.killed, mode="process")
    q.process("pid", procjobs_hostile.pid, mode="process")
    job_id = await q.add_job("killed", None)
    await q.start()
    info = await _status(q, job_id, *ENDED)
    assert "ChildProcessDied" in (info.failed_reason or "")
    assert "killed by signal 9 (SIGKILL)" in (info.failed_reason or "")
    after = await q.add_job("pid", None)
    assert (await _status(q, after, JobStatus.COMPLETED)).result != os.getpid()


@pytest.mark.parametrize("scope", ["queue", "job"])
async def test_rate_limited_in_a_child_keeps_its_hold(make: QueueFactory, scope: str) -> None:
    """``RateLimited`` raised in a process-mode child holds what it says, as in process:
    scope ``queue`` holds the whole queue, ``job`` defers only that job."""
    q = _queue(make)
    q.process("limited", procjobs_hostile.rate_limited_once, mode="process")
    job_id = await q.add_job("limited", {"limit": True, "scope": scope})
    await q.start()
    info = await _status(q, job_id, JobStatus.DELAYED)
    assert info.attempts == 0  # no attempt spent
    client = await q.client()
    held = await client.pttl(q.keys.hold())
    if scope == "queue":
        assert held > 0, "the queue is held"
        # Held: a job added now waits (the worker claims nothing during the hold).
        other = await q.add_job("limited", {"limit": False, "scope": scope})
        await asyncio.sleep(0.5)
        assert (await q.get_job_status(other)).status is JobStatus.WAITING  # type: ignore[union-attr]
    else:
        assert held < 0, "nothing is held"
        other = await q.add_job("limited", {"limit": False, "scope": scope})
        await _status(q, other, JobStatus.COMPLETED)


# ================================================================ batches


@pytest.mark.parametrize("kind", ["async", "thread"])
async def test_a_batch_function_raising_generator_exit_fails_every_job(
    make: QueueFactory, kind: str
) -> None:
    q = _queue(make, concurrency=3)
    if kind == "async":

        async def batch(jobs: list[Any]) -> None:
            raise GeneratorExit("batch gave up")

    else:

        def batch(jobs: list[Any]) -> None:  # type: ignore[misc]
            raise GeneratorExit("batch gave up")

    q.process_batch("b", batch, size=3, max_wait=50)
    ids = [await q.add_job("b", i) for i in range(3)]  # no timeout: nothing else ends them
    await q.start()
    for job_id in ids:
        info = await _status(q, job_id, *ENDED)
        assert "GeneratorExit: batch gave up" in (info.failed_reason or "")


# ================================================================ SyncJobQueue


@pytest.fixture
def sync_queue(redis_url: str, prefix: str) -> Iterator[SyncJobQueue]:
    q = SyncJobQueue("sync", redis=redis_url, prefix=prefix)
    try:
        yield q
    finally:
        closer = threading.Thread(target=q.close, daemon=True)
        closer.start()
        closer.join(10)


def test_closing_the_sync_client_ends_the_calls_under_way(sync_queue: SyncJobQueue) -> None:
    q = sync_queue
    entered = threading.Event()

    async def never_done(name: str, data: Any, options: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()

    q.queue.use_enqueue(never_done)  # add_job now waits on the loop thread
    outcome: list[BaseException | str] = []

    def add() -> None:
        try:
            outcome.append(q.add_job("x", 1))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=add, daemon=True)
    caller.start()
    assert entered.wait(5)
    q.close()
    caller.join(5)
    assert not caller.is_alive(), "the caller still waits after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError)
    assert "closed while the call was under way" in str(outcome[0])


def test_a_blocking_call_from_the_clients_own_loop_thread_is_refused(
    sync_queue: SyncJobQueue,
) -> None:
    q = sync_queue
    seen: list[BaseException | object] = []
    done = threading.Event()

    class Nested:
        def enqueued(self, queue: str, job_ids: Any, names: Any) -> None:
            try:
                seen.append(q.get_job_status(job_ids[0]))
            except BaseException as exc:
                seen.append(exc)
            done.set()

    q.queue.subscribe(Nested())
    job_id = q.add_job("x", 1)
    assert done.wait(5), "the subscriber's call never returned (deadlock)"
    assert isinstance(seen[0], RuntimeError)
    assert "own event-loop thread" in str(seen[0])
    # The client still works.
    info = q.get_job_status(job_id)
    assert info is not None and info.status is JobStatus.WAITING
