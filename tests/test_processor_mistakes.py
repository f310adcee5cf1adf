"""Processors written a little wrong, and a worker without a processor a live peer has.

* ``job.update_progress_sync()`` / ``job.log_sync()`` called from an ``async def``
  processor (on the worker's own loop) raise ``RuntimeError`` at once instead of
  blocking that loop for good.
* A processor whose call returns an awaitable (a ``def`` or lambda returning a
  coroutine, a sync ``functools.wraps`` decorator around an ``async def``, an
  ``async def`` returning a coroutine it did not await) has it awaited on the worker's
  loop; an async generator function is refused when the worker starts.
* A ``GeneratorExit`` the processor raises itself is a failure like any other, with no
  internal-error log.
* An ``async def`` processor that blocks the loop past its timeout and then returns
  keeps its result, and a warning names the job (never its data).
* Rolling deploy: a worker without the processor of a job's name hands it to a live
  worker that has one, without spending an attempt.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

import kitium_queue.handoff as handoff
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus

ENDED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DLQ)


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


# ================================================================ 1. *_sync on the loop


@pytest.mark.timeout(30)  # without the check, the worker's loop (the test's) hangs for good
@pytest.mark.parametrize(
    ("call", "hint"),
    [
        ("update_progress_sync", "await job.update_progress(...)"),
        ("log_sync", "await job.log(...)"),
    ],
)
async def test_sync_updates_from_an_async_processor_raise_at_once(
    make: QueueFactory, call: str, hint: str
) -> None:
    q = make("mistakes", default_job_options={"attempts": 1})
    seen: list[str] = []

    @q.process("a")
    async def a(job: Any) -> str:
        try:
            getattr(job, call)(50 if call == "update_progress_sync" else "hello")
        except RuntimeError as exc:
            seen.append(str(exc))
        await job.update_progress(60)  # the async forms still work
        return "ok"

    @q.process("other")
    async def other(job: Any) -> str:
        return "other-ok"

    await q.start()
    jid = await q.add_job("a", {})
    oid = await q.add_job("other", {})
    info = await wait_for_status(q, jid, *ENDED, timeout=10)
    assert info.status is JobStatus.COMPLETED and info.result == "ok"
    assert info.progress == 60
    assert (await wait_for_status(q, oid, *ENDED, timeout=10)).result == "other-ok"
    assert len(seen) == 1
    assert hint in seen[0] and "event loop" in seen[0] and "plain `def` processors" in seen[0]


async def test_sync_updates_from_a_plain_processor_still_work(make: QueueFactory) -> None:
    q = make("mistakes", default_job_options={"attempts": 1})

    @q.process("t")
    def t(job: Any) -> str:
        job.update_progress_sync(40)
        job.log_sync("from a thread")
        return "done"

    await q.start()
    jid = await q.add_job("t", {})
    info = await wait_for_status(q, jid, *ENDED, timeout=10)
    assert info.status is JobStatus.COMPLETED and info.progress == 40
    assert await q.get_job_logs(jid) == ["from a thread"]


# ================================================================ 2. awaitables returned


async def _doubled(job: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"x": job.data["x"] * 2, "thread": threading.get_ident()}


def _returns_coroutine(job: Any) -> Coroutine[Any, Any, dict[str, Any]]:
    return _doubled(job)


async def _forgets_await(job: Any) -> Any:
    return _doubled(job)


def _sync_decorator(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(job: Any) -> Any:
        return fn(job)

    return wrapper


@_sync_decorator
async def _decorated(job: Any) -> dict[str, Any]:
    return await _doubled(job)


@pytest.mark.parametrize(
    "processor",
    [
        _returns_coroutine,
        lambda job: _doubled(job),
        _decorated,
        _forgets_await,
    ],
    ids=["def-returning-coroutine", "lambda", "sync-decorator", "async-def-not-awaiting"],
)
async def test_an_awaitable_a_processor_returns_is_awaited_on_the_loop(
    make: QueueFactory, processor: Any
) -> None:
    q = make("mistakes", default_job_options={"attempts": 1})
    q.process("p", processor)
    await q.start()
    loop_thread = threading.get_ident()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jid = await q.add_job("p", {"x": 21})
        info = await wait_for_status(q, jid, *ENDED, timeout=10)
    assert info.status is JobStatus.COMPLETED, info.failed_reason
    # Awaited on the worker's loop, never in the processor's thread.
    assert info.result == {"x": 42, "thread": loop_thread}
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_an_async_generator_function_is_refused_at_registration(
    make: QueueFactory,
) -> None:
    q = make("mistakes")

    with pytest.raises(ConfigurationError) as err:

        @q.process("gen")
        async def gen(job: Any) -> Any:
            yield job.data

    text = str(err.value)
    assert "'gen'" in text and "an async generator is not" in text
    assert "a processor must be a function or coroutine function returning the result" in text
    assert "gen" not in q.processors
    # One that got in another way (the processors mapping edited by hand) is refused
    # when the worker starts.

    async def gen2(job: Any) -> Any:
        yield job.data

    q.processors["gen"] = gen2
    with pytest.raises(ConfigurationError, match="an async generator is not"):
        await q.start()
    assert q.worker is None


# ================================================================ 3. GeneratorExit


@pytest.mark.parametrize("kind", ["async", "thread"])
async def test_a_generator_exit_the_processor_raises_is_an_ordinary_failure(
    make: QueueFactory, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = make("mistakes", default_job_options={"attempts": 2, "backoff": 10})
    runs: list[int] = []

    if kind == "async":

        @q.process("g")
        async def g(job: Any) -> None:
            runs.append(job.attempts)
            raise GeneratorExit("stop reading")

    else:

        @q.process("g")
        def g_sync(job: Any) -> None:
            runs.append(job.attempts)
            raise GeneratorExit("stop reading")

    @q.process("good")
    async def good(job: Any) -> str:
        return "ok"

    await q.start()
    jid = await q.add_job("g", {})
    info = await wait_for_status(q, jid, *ENDED, timeout=10)
    assert info.status is JobStatus.DLQ
    assert info.failed_reason == "GeneratorExit: stop reading"
    assert "GeneratorExit" in (info.stacktrace or "")
    assert runs == [1, 2]  # retried like any failure
    good_id = await q.add_job("good", {})
    assert (await wait_for_status(q, good_id, *ENDED, timeout=10)).result == "ok"
    assert not [m for m in _messages(caplog, logging.ERROR) if "escaped its run" in m]


# ================================================================ 4. blocking past timeout


async def test_a_run_that_blocks_the_loop_past_its_timeout_keeps_its_result_and_warns(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    q = make("mistakes", default_job_options={"attempts": 1})

    @q.process("blocker")
    async def blocker(job: Any) -> str:
        time.sleep(0.6)  # blocks the loop: the timeout's timer cannot fire
        return "finished"

    @q.process("quick")
    async def quick(job: Any) -> str:
        return "fine"

    await q.start()
    jid = await q.add_job("blocker", {"secret": "s3cr3t-payload"}, timeout=200)
    info = await wait_for_status(q, jid, *ENDED, timeout=10)
    assert info.status is JobStatus.COMPLETED and info.result == "finished"
    warned = [m for m in _messages(caplog, logging.WARNING) if "past its timeout" in m]
    assert len(warned) == 1
    line = warned[0]
    assert f"job {jid} (blocker)" in line
    assert "past its timeout of 0.2 s while blocking the event loop" in line
    assert "could not interrupt it" in line and "`await`" in line
    assert "s3cr3t-payload" not in line

    # A run that ends within its timeout says nothing.
    qid = await q.add_job("quick", {}, timeout=5000)
    assert (await wait_for_status(q, qid, *ENDED, timeout=10)).result == "fine"
    assert len([m for m in _messages(caplog, logging.WARNING) if "past its timeout" in m]) == 1


async def test_a_run_its_timeout_interrupts_still_fails(make: QueueFactory) -> None:
    q = make("mistakes", default_job_options={"attempts": 1})

    @q.process("slow")
    async def slow(job: Any) -> str:
        await asyncio.sleep(5)
        return "never"

    await q.start()
    jid = await q.add_job("slow", {}, timeout=100)
    info = await wait_for_status(q, jid, *ENDED, timeout=10)
    assert info.status is JobStatus.DLQ
    assert "exceeded its timeout of 100 ms" in (info.failed_reason or "")


# ================================================================ 5. rolling deploy


async def test_a_worker_without_the_processor_hands_jobs_to_a_live_worker_with_it(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kitium_queue")
    options = {"attempts": 1}
    # Twelve jobs at once for two slots on each side: the old worker certainly claims
    # some of them.
    new = make("deploy", default_job_options=options, worker={"concurrency": 2})
    old = make("deploy", default_job_options=options, worker={"concurrency": 2})
    ran: list[tuple[str, int]] = []

    @new.process("work")
    @old.process("work")
    async def work(job: Any) -> str:
        return "work"

    @new.process("newtype")
    async def newtype(job: Any) -> str:
        ran.append((job.id, job.attempts))
        await asyncio.sleep(0.02)
        return "new"

    await new.start()
    await old.start()
    ids = await new.add_jobs([("newtype", {"i": i}) for i in range(12)])

    async def all_ended() -> bool:
        infos = [await new.get_job_status(j) for j in ids]
        return all(i is not None and i.status in ENDED for i in infos)

    await wait_until(all_ended, 60, interval=0.1)
    infos = [await new.get_job_status(j) for j in ids]
    assert [i.status for i in infos if i is not None] == [JobStatus.COMPLETED] * len(ids)
    assert all(i is not None and i.attempts == 1 for i in infos)  # none spent by the old one
    assert sorted(a for _, a in ran) == [1] * len(ids)  # each ran once, on its first attempt
    assert (await new.get_stats()).dlq == 0
    # The old worker did take some, and said so once for the name, not per job.
    noted = [m for m in _messages(caplog, logging.WARNING) if "no processor for 'newtype'" in m]
    assert len(noted) == 1
    assert old.worker.id in noted[0] and new.worker.id in noted[0]
    assert "without spending an attempt" in noted[0]


async def test_without_a_live_worker_that_has_it_the_job_is_retried_then_dead_lettered(
    make: QueueFactory,
) -> None:
    q = make("deploy", default_job_options={"attempts": 2, "backoff": 10})

    @q.process("work")
    async def work(job: Any) -> str:
        return "work"

    await q.start()
    jid = await q.add_job("nope", {})
    info = await wait_for_status(q, jid, *ENDED, timeout=10)
    assert info.status is JobStatus.DLQ and info.attempts == 2
    assert "no processor registered for job name 'nope'" in (info.failed_reason or "")


async def test_the_live_workers_are_read_at_most_every_few_seconds(
    make: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    q: JobQueue = make("deploy")
    q.process("work", lambda job: "work")
    await q.start()
    reads: list[int] = []
    real = handoff.live_workers

    async def counted(queue: Any, limit: int = 1000) -> Any:
        reads.append(1)
        return await real(queue, limit)

    monkeypatch.setattr(handoff, "live_workers", counted)
    now = [100.0]
    h = handoff.Handoff(q, "someone-else", clock=lambda: now[0])
    peers = await asyncio.gather(*(h.peer("work") for _ in range(20)))
    assert peers == [q.worker.id] * 20
    assert await h.peer("nope") is None
    assert len(reads) == 1  # one read shared by the concurrent asks, then cached
    now[0] += handoff.PEERS_REFRESH_S
    await h.peer("work")
    assert len(reads) == 2
