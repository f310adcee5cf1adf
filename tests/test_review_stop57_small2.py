"""Small leftovers of the admin and runtime paths:

* ``register_backoff`` refuses what the worker could never use (not callable, an
  ``async def``, a partial of one, an object whose ``__call__`` is one) with a
  ``TypeError`` at registration, not a fallback at the first failure;
* deleting jobs (``remove_job``, ``drain``, ``clear``: lua/lib_jobs.lua) UNLINKs their
  records, so a big log list is freed in the background, not inside the script call;
* ``SyncQueueClient._run_announcements`` run by two threads at once (close() and a late
  add after the loop closed) never raises into an add whose job was written;
* process mode: a processor module that raises ``SystemExit`` at import (argparse at
  its top level) fails its job with a reason naming the module;
* ``clear()`` keeps the queue's settings: a paused queue stays paused.
"""

from __future__ import annotations

import collections
import functools
import importlib
import os
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, SyncJobQueue

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def queues(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


# ------------------------------------------------------------------ register_backoff
def _plain(attempts_made: int, error: BaseException, job: Any) -> int:
    return attempts_made * 10


async def _coro(attempts_made: int, error: BaseException, job: Any) -> int:
    return attempts_made * 10


class _Callable:
    def __call__(self, attempts_made: int, error: BaseException, job: Any) -> int:
        return 5


class _AsyncCallable:
    async def __call__(self, attempts_made: int, error: BaseException, job: Any) -> int:
        return 5


@pytest.mark.parametrize(
    ("strategy", "says"),
    [
        (_coro, "is an async def"),
        (functools.partial(_coro), "is an async def"),
        (_AsyncCallable(), "is an async def"),
        (5, "is not callable (a int)"),
        ("linear", "is not callable (a str)"),
    ],
    ids=["async-def", "partial-of-async-def", "async-call", "int", "str"],
)
def test_register_backoff_refuses_what_the_worker_cannot_call(
    queues: QueueFactory, strategy: Any, says: str
) -> None:
    """Before: accepted; at each failure the worker fell back to the default backoff."""
    q = queues("bo")
    with pytest.raises(TypeError, match="def strategy\\(attempts_made, error, job\\)") as info:
        q.register_backoff("mine", strategy)
    assert says in str(info.value) and "'mine'" in str(info.value)
    assert "mine" not in q.backoff_strategies


async def test_register_backoff_still_takes_partials_and_callable_objects(
    queues: QueueFactory,
) -> None:
    q = queues("bo-ok")
    for name, fn in [
        ("plain", _plain),
        ("partial", functools.partial(_plain)),
        ("object", _Callable()),
        ("lambda", lambda attempts, error, job: None),
    ]:
        q.register_backoff(name, fn)
        assert q.backoff_strategies[name] is fn
    # And a registered partial is used: the retry waits its delay.
    runs: list[int] = []

    @q.process("n")
    async def n(job: Any) -> None:
        runs.append(job.attempts)
        if len(runs) == 1:
            raise RuntimeError("once")

    jid = await q.add_job("n", 1, attempts=2, backoff={"type": "custom", "strategy": "partial"})
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=30)
    assert info.attempts == 2 and len(runs) == 2


# ------------------------------------------------------------------ UNLINK of job records
BIG_LOG = 2000  # lines of 500 bytes: a quicklist of ~125 nodes, freed lazily by UNLINK


async def _big_log(q: JobQueue, job_id: str) -> str:
    client = await q.client()
    key = q.keys.logs(job_id)
    await client.rpush(key, *(["x" * 500] * BIG_LOG))
    return key


async def _delete(q: JobQueue, how: str, job_id: str) -> None:
    if how == "remove_job":
        assert await q.remove_job(job_id) is True
    elif how == "drain":
        assert await q.drain() == 1
    else:
        await q.clear()


HOW = ["remove_job", "drain", "clear"]


@pytest.mark.parametrize("how", HOW)
async def test_deleting_a_job_deletes_its_log_list(make_queue: QueueFactory, how: str) -> None:
    """On both backends (the memory:// one runs UNLINK in Lua too)."""
    q = make_queue()
    jid = await q.add_job("n", {"x": 1})
    key = await _big_log(q, jid)
    await _delete(q, how, jid)
    client = await q.client()
    assert await client.exists(key, q.keys.job(jid)) == 0
    assert await q.get_job_status(jid) is None


async def _lazyfree(client: aioredis.Redis) -> tuple[int, int]:
    info = await client.info("memory")
    return int(info["lazyfree_pending_objects"]), int(info["lazyfreed_objects"])


@pytest.mark.redis_only
@pytest.mark.parametrize("how", HOW)
async def test_a_big_log_list_is_freed_in_the_background(
    queues: QueueFactory, redis_client: aioredis.Redis, how: str
) -> None:
    """Before: ``DEL`` freed each job's log list (up to max_log_lines = 1,000,000 lines)
    inside the script call, so a remove, drain or clear of 1000 jobs blocked Redis that
    long. Now ``UNLINK``: Redis counts the list among ``lazyfreed_objects``."""
    info = await redis_client.info("memory")
    if "lazyfreed_objects" not in info:
        pytest.skip("this Redis does not report lazyfreed_objects (before 7.0)")
    config = await redis_client.config_get("lazyfree-lazy-user-del")
    if config.get("lazyfree-lazy-user-del") == "yes":
        pytest.skip("lazyfree-lazy-user-del: DEL frees in the background too")
    q = queues("unlink")
    jid = await q.add_job("n", {"x": 1})
    key = await _big_log(q, jid)
    # Frees an earlier test left pending would be counted during this one.
    await wait_until(lambda: _pending_none(redis_client), 30)
    before = (await _lazyfree(redis_client))[1]
    await _delete(q, how, jid)
    assert await redis_client.exists(key) == 0

    async def freed() -> bool:
        pending, done = await _lazyfree(redis_client)
        return pending == 0 and done > before

    await wait_until(freed, 30, interval=0.02, message="the log list was not freed lazily")


async def _pending_none(client: aioredis.Redis) -> bool:
    return (await _lazyfree(client))[0] == 0


# ------------------------------------------------------------------ SyncQueueClient hooks
class _Racing(collections.deque):  # type: ignore[type-arg]
    """A deque whose first emptiness check, in ``owner``, lets ``other`` run and take
    every item before answering: the moment another thread runs the same hooks between
    the check of ``while pending`` and its ``popleft()``."""

    def __init__(self, items: list[Callable[[], None]], other: Callable[[], None]) -> None:
        super().__init__(items)
        self.other = other
        self.owner = threading.current_thread()
        self.raced = False

    def __bool__(self) -> bool:
        nonempty = len(self) > 0
        if nonempty and not self.raced and threading.current_thread() is self.owner:
            self.raced = True
            t = threading.Thread(target=self.other)
            t.start()
            t.join(30)
        return nonempty


def test_announcements_emptied_by_another_thread_do_not_raise(redis_url: str, prefix: str) -> None:
    """Before: ``popleft()`` raised IndexError into the add whose job was written."""
    client = SyncJobQueue("hooks", redis=redis_url, prefix=prefix)
    try:
        ran: list[int] = []
        client._announcements = _Racing(  # type: ignore[assignment]
            [lambda: ran.append(1)], client._run_announcements
        )
        client._run_announcements()  # the other thread takes the hook under this one
        assert ran == [1]
        assert not client._announcements
    finally:
        client._announcements = collections.deque()
        client.close()


def test_announcements_run_by_two_threads_run_each_hook_once(redis_url: str, prefix: str) -> None:
    """The same race without a rigged deque: two threads drain one deque at once, many
    times. (The GIL makes the window small: this rarely failed before the fix.)"""
    client = SyncJobQueue("hooks2", redis=redis_url, prefix=prefix)
    try:
        errors: list[BaseException] = []
        for _ in range(200):
            ran: list[int] = []
            lock = threading.Lock()

            def hook(i: int, ran: list[int] = ran, lock: threading.Lock = lock) -> None:
                with lock:
                    ran.append(i)

            client._announcements.extend(functools.partial(hook, i) for i in range(50))
            gate = threading.Barrier(2)

            def drain(gate: threading.Barrier = gate) -> None:
                gate.wait(30)
                try:
                    client._run_announcements()
                except BaseException as exc:  # what the test looks for
                    errors.append(exc)

            threads = [threading.Thread(target=drain) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert errors == []
            assert sorted(ran) == list(range(50))
    finally:
        client.close()


# ------------------------------------------------------------------ process mode imports
def _module(tmp_path: Path, name: str, top: str) -> Any:
    """Module ``name`` in ``tmp_path`` (on sys.path) whose top level runs ``top`` in any
    process but this one (the worker's child processes), with a processor ``work``."""
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import argparse
            import os

            if os.getpid() != {os.getpid()}:
                {top}


            def work(job):
                return "ran"
            """
        )
    )
    return importlib.import_module(name)


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.redis_only
async def test_a_processor_module_exiting_at_import_is_named(
    queues: QueueFactory, on_path: Path
) -> None:
    """Before: the child ended, a second one was started and ended too, and the job
    failed with "a new child process exited before it started the processor (exit code
    2)", the module never named."""
    name = "kq_small2_argparse_at_top"
    mod = _module(on_path, name, 'argparse.ArgumentParser(prog="report").parse_args(["-x"])')
    try:
        q = queues("imp", worker={"concurrency": 1}, retry={"max_attempts": 1})
        q.process("work", mod.work, mode="process")
        jid = await q.add_job("work", None)
        await q.start()
        info = await wait_for_status(q, jid, JobStatus.FAILED, JobStatus.DLQ, timeout=60)
        reason = info.failed_reason or ""
        assert "SystemExit: importing the processor's module" in reason, reason
        assert repr(name) in reason and "SystemExit with exit code 2" in reason, reason
        assert "if __name__ == '__main__':" in reason
    finally:
        sys.modules.pop(name, None)


@pytest.mark.redis_only
async def test_a_child_dying_at_import_names_the_module(
    queues: QueueFactory, on_path: Path
) -> None:
    """A module that ends the process outright (``os._exit``) at import: the reason says
    the child died while starting Python or importing that module."""
    name = "kq_small2_exit_at_top"
    mod = _module(on_path, name, "os._exit(3)")
    try:
        q = queues("imp2", worker={"concurrency": 1}, retry={"max_attempts": 1})
        q.process("work", mod.work, mode="process")
        jid = await q.add_job("work", None)
        await q.start()
        info = await wait_for_status(q, jid, JobStatus.FAILED, JobStatus.DLQ, timeout=60)
        reason = info.failed_reason or ""
        assert "ChildProcessDied: a new child process exited" in reason, reason
        assert f"importing the processor's module {name!r}" in reason, reason
        assert "exit code 3" in reason, reason
    finally:
        sys.modules.pop(name, None)


# ------------------------------------------------------------------ clear keeps settings
async def test_clear_keeps_a_paused_queue_paused(make_queue: QueueFactory) -> None:
    """Before: clear() deleted the meta hash, the pause flag with it: clearing a queue
    paused for that let its workers claim the next job added."""
    q = make_queue()
    await q.add_jobs([("n", i) for i in range(5)])
    await q.pause()
    client = await q.client()
    # What meta counts goes with the jobs; its settings stay.
    await client.hset(q.keys.meta, mapping={"missing": 3, "missing_at": 1, "outbox_cap": 7})
    await q.clear()
    assert await client.hgetall(q.keys.meta) == {b"paused": b"1", b"outbox_cap": b"7"}
    stats = await q.get_stats()
    assert stats.is_paused and stats.waiting == 0 and stats.missing_records == 0

    ran: list[str] = []

    @q.process("n")
    async def n(job: Any) -> None:
        ran.append(job.id)

    jid = await q.add_job("n", 1)
    await q.start()
    info = await q.get_job_status(jid)
    assert info is not None and info.status in (JobStatus.WAITING, JobStatus.PAUSED)
    assert ran == []
    await q.resume()
    await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=30)
    assert ran == [jid]


async def test_clear_of_a_queue_not_paused_leaves_no_meta(make_queue: QueueFactory) -> None:
    q = make_queue()
    await q.add_jobs([("n", i) for i in range(3)])
    client = await q.client()
    await client.hset(q.keys.meta, "missing", 2)
    await q.clear()
    assert await client.exists(q.keys.meta) == 0
    assert not (await q.get_stats()).is_paused


async def test_clear_drops_a_damaged_meta_key(make_queue: QueueFactory) -> None:
    """A meta key of another type goes as before (its settings cannot be read)."""
    q = make_queue()
    await q.add_job("n", 1)
    client = await q.client()
    await client.set(q.keys.meta, "junk")
    await q.clear()
    assert await client.exists(q.keys.meta) == 0
