"""The blocking client, process mode and middleware/hooks under hostile use.

* Process mode: a processor's stdin ends at once (``sys.stdin.read()``, ``input()``, a
  ``subprocess`` that reads its inherited stdin), as under a service manager; it was
  the worker's frame pipe, so the run waited for ever (up to its timeout) for a frame.
* A lifecycle subscriber with an ``async def`` hook is refused when subscribed, naming
  the hook: the hook's coroutine was made on each call and never run.
* A process middleware that returns something not awaitable (a plain ``def`` returning
  a value) fails the run with a ``TypeError`` naming the middleware; a plain ``def``
  returning ``call_next()`` still works.
* ``SyncJobQueue.close()`` while another thread's ``add_job`` is on its way (in the
  caller's-thread path): the connection that add takes is not left open after it; and
  with many threads adding while close() runs, each add returns its id or raises the
  documented ``RuntimeError``, none is cut by another's connection being closed under it.

Every test runs against a real Redis and reads the job's state back from it.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from _redis import RedisServer
from helpers import QueueFactory, app_module, wait_for_status
from kitium_queue import JobQueue, JobStatus, SyncJobQueue, SyncPartitionedQueue
from kitium_queue.blocking import BlockingScripts
from kitium_queue.hooks import Subscriber
from kitium_queue.scripts import REPLY_TIMEOUT_S

pytestmark = pytest.mark.timeout(120)

#: How long a test waits for a state (a process-mode child starts a Python interpreter,
#: which takes seconds on a loaded machine; waits end as soon as the state is reached).
WAIT_S = 60.0
ENDED = (JobStatus.FAILED, JobStatus.DLQ)

#: Processors run in a child process, which imports them by module path.
PROCESSORS = """
import subprocess
import sys


def read_stdin(job):
    return sys.stdin.read()


def subprocess_reads_stdin(job):
    done = subprocess.run(
        [sys.executable, "-c", "import sys; print(len(sys.stdin.read()))"],
        capture_output=True,
        timeout=60,
    )
    return done.stdout.decode().strip()


def ask(job):
    try:
        input()
    except EOFError:
        return "eof"
    return "read"


def double(job):
    return job.data * 2
"""


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


@pytest.fixture
def processors(tmp_path: Path) -> Iterator[Any]:
    with app_module(tmp_path, PROCESSORS, "kq_stop57") as module:
        yield importlib.import_module(module)


def _queue(make: QueueFactory) -> JobQueue:
    return make(
        worker={"concurrency": 1, "shutdown_timeout": 2000},
        retry={"max_attempts": 1},
    )


# ================================================================ process mode


@pytest.mark.parametrize(
    ("fn", "expected"), [("read_stdin", ""), ("subprocess_reads_stdin", "0"), ("ask", "eof")]
)
async def test_a_process_mode_processor_reading_stdin_gets_its_end_at_once(
    make: QueueFactory, processors: Any, fn: str, expected: str
) -> None:
    q = _queue(make)
    q.process("read", getattr(processors, fn), mode="process")
    q.process("double", processors.double, mode="process")
    # A timeout long enough for a loaded machine: without it the run waited for ever.
    job_id = await q.add_job("read", None, timeout=30_000)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED, *ENDED, timeout=WAIT_S)
    assert info.status is JobStatus.COMPLETED, info.failed_reason
    assert info.result == expected
    # The same child serves the next job: its frames were not touched.
    after = await q.add_job("double", 21)
    info = await wait_for_status(q, after, JobStatus.COMPLETED, *ENDED, timeout=WAIT_S)
    assert (info.status, info.result) == (JobStatus.COMPLETED, 42), info.failed_reason


# ================================================================ hooks


class AsyncFinished(Subscriber):
    async def finished(self, queue: str, job: Any, outcome: Any) -> None:  # type: ignore[override]
        raise AssertionError("never awaited")


class AsyncCallable:
    async def __call__(self, queue: str, job: Any) -> None:
        raise AssertionError("never awaited")


class PlainWithAsyncStarted:
    def __init__(self) -> None:
        self.started = AsyncCallable()


@pytest.mark.parametrize(
    ("subscriber", "hook"), [(AsyncFinished, "finished"), (PlainWithAsyncStarted, "started")]
)
async def test_a_subscriber_with_an_async_hook_is_refused_naming_it(
    make: QueueFactory, subscriber: type, hook: str
) -> None:
    q = _queue(make)
    with pytest.raises(TypeError, match=f"its hook '{hook}' is an async def"):
        q.subscribe(subscriber())
    assert not any(isinstance(s, subscriber) for s in q.hooks.subscribers)
    # The queue goes on: its jobs run and are recorded as before.

    @q.process("n")
    async def n(job: Any) -> int:
        return 1

    job_id = await q.add_job("n", None)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED, *ENDED, timeout=WAIT_S)
    assert info.status is JobStatus.COMPLETED


# ================================================================ process middleware


@pytest.mark.parametrize("chain", [1, 2])
async def test_a_process_middleware_returning_a_plain_value_fails_naming_it(
    make: QueueFactory, chain: int
) -> None:
    q = _queue(make)

    @q.process("n")
    async def n(job: Any) -> str:
        return "processor"

    def plain_passing(job: Any, call_next: Any) -> Any:
        return call_next()  # an awaitable: works as before

    def plain_value(job: Any, call_next: Any) -> Any:
        return {"not": "awaitable"}

    if chain == 2:
        q.use_process(plain_passing)
    q.use_process(plain_value)
    job_id = await q.add_job("n", None)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED, *ENDED, timeout=WAIT_S)
    assert info.status is JobStatus.DLQ
    reason = info.failed_reason or ""
    assert reason.startswith("TypeError: process middleware "), reason
    assert "plain_value returned dict, not an awaitable" in reason


async def test_a_plain_process_middleware_returning_call_next_still_runs_the_processor(
    make: QueueFactory,
) -> None:
    q = _queue(make)

    @q.process("n")
    async def n(job: Any) -> str:
        return "processor"

    def plain_passing(job: Any, call_next: Any) -> Any:
        return call_next()

    q.use_process(plain_passing)
    q.use_process(plain_passing)
    job_id = await q.add_job("n", None)
    await q.start()
    info = await wait_for_status(q, job_id, JobStatus.COMPLETED, *ENDED, timeout=WAIT_S)
    assert (info.status, info.result) == (JobStatus.COMPLETED, "processor"), info.failed_reason


# ================================================================ blocking client


def _clients_but_this(admin: redis.Redis) -> list[dict[str, Any]]:
    """The client connections of ``admin``'s server other than ``admin``'s own, once the
    server has seen the closed ones end (a socket closed a moment ago may still be listed:
    looked at again for up to ``WAIT_S``, returned at once when none is left)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        me = admin.client_id()
        others = [c for c in admin.client_list() if int(c["id"]) != me]
        if not others or time.monotonic() > deadline:
            return others
        time.sleep(0.05)


@pytest.mark.redis_only
@pytest.mark.parametrize("kind", ["plain", "partitioned"])
def test_close_under_a_direct_add_leaves_no_connection_open(
    debug_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """An add on the caller's-thread path that passed its "closed?" check as another
    thread closed the client took a new connection after close() and kept it open for
    as long as the client object lived."""
    real = BlockingScripts.call
    inside, go = threading.Event(), threading.Event()

    def held(self: BlockingScripts, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "late-add":
            inside.set()
            go.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BlockingScripts, "call", held)
    admin = redis.Redis.from_url(debug_server.url)
    q: SyncJobQueue | SyncPartitionedQueue = (
        SyncJobQueue("late", redis=debug_server.url, prefix=prefix)
        if kind == "plain"
        else SyncPartitionedQueue("late", partitions=2, redis=debug_server.url, prefix=prefix)
    )
    try:
        q.add_job("warm-up")
        said: list[Any] = []

        def late_add() -> None:
            try:
                said.append(q.add_job("n", 1))
            except BaseException as exc:  # what the add ended with
                said.append(exc)

        t = threading.Thread(target=late_add, name="late-add")
        t.start()
        assert inside.wait(30)
        q.close()
        go.set()
        t.join(30)
        assert not t.is_alive()
        assert len(said) == 1
        # Written after close() began: its id, or the documented error.
        assert isinstance(said[0], str) or _closed_error(said[0]), repr(said[0])
        assert _clients_but_this(admin) == []  # the add's connection did not stay open
    finally:
        go.set()
        q.close()
        admin.close()


def _closed_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the documented error of a call ``close()`` ended or refused."""
    return isinstance(exc, RuntimeError) and (
        "is closed" in str(exc) or "was closed while the call was under way" in str(exc)
    )


#: Rounds of ``THREADS`` threads, each adding until close() ends its adds (at most ``ADDS``).
ROUNDS, THREADS, ADDS = 8, 50, 500
#: How long the adds under way may take to end once close() returned: less than the
#: blocking connections' reply deadline (``scripts.REPLY_TIMEOUT_S``), which an add whose
#: connection was closed under it as it read waited out (no hang is shorter).
HUNG_S = REPLY_TIMEOUT_S - 5


def _client(kind: str, name: str, url: str, prefix: str) -> SyncJobQueue | SyncPartitionedQueue:
    if kind == "plain":
        return SyncJobQueue(name, redis=url, prefix=prefix)
    return SyncPartitionedQueue(name, partitions=2, redis=url, prefix=prefix)


def _adds_under_close(q: SyncJobQueue | SyncPartitionedQueue) -> tuple[list[Any], bool]:
    """``THREADS`` threads adding jobs on the caller's-thread path until one of their
    adds fails (``ADDS`` at most), ``q.close()`` once each has added one: what every add
    ended with (its id or its error), and whether every thread ended within ``HUNG_S``
    of close()'s return."""
    start = threading.Barrier(THREADS + 1)
    outcomes: list[Any] = []  # list.append is atomic
    added = threading.Semaphore(0)

    def adder() -> None:
        start.wait()
        for i in range(ADDS):
            try:
                outcomes.append(q.add_job("n", i))
            except BaseException as exc:  # what the add ended with
                outcomes.append(exc)
                return
            added.release()

    threads = [threading.Thread(target=adder, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    start.wait()
    for _ in range(THREADS):  # close() while the adds are under way
        assert added.acquire(timeout=WAIT_S)
    q.close()
    deadline = time.monotonic() + HUNG_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return outcomes, not [t for t in threads if t.is_alive()]


@pytest.mark.redis_only
@pytest.mark.parametrize("kind", ["plain", "partitioned"])
def test_close_under_many_direct_adds_ends_each_and_leaves_no_connection_open(
    debug_server: RedisServer, prefix: str, kind: str
) -> None:
    """Many threads adding on the caller's-thread path while close() runs, round after
    round: every add returns its id or raises the documented ``RuntimeError`` (never
    another error), none hangs, every id returned names a job written, and no client
    connection of the closed client stays open. Closing the pool from an add ending
    under close() (and close() closing the connections adds were using) cut other
    threads' calls: ``AttributeError`` from redis-py, a thread waiting in a read."""
    url = debug_server.url
    admin = redis.Redis.from_url(url)
    try:
        for n in range(ROUNDS):
            q = _client(kind, f"storm{n}", url, prefix)
            q.add_job("warm-up")
            outcomes, ended = _adds_under_close(q)
            assert ended, f"round {n}: an add hung"
            wrong = [o for o in outcomes if not isinstance(o, str) and not _closed_error(o)]
            assert not wrong, f"round {n}: {wrong[:3]!r}"
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(errors) == THREADS, f"round {n}: {len(errors)} adds ended by close()"
            assert _clients_but_this(admin) == [], f"round {n}: connections left open"
            ids = [o for o in outcomes if isinstance(o, str)]
            with _client(kind, f"storm{n}", url, prefix) as check:
                missing = [i for i in ids if check.get_job_status(i) is None]
            assert not missing, f"round {n}: ids returned of jobs not written: {missing[:3]}"
    finally:
        admin.close()
