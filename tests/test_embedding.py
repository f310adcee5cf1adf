"""A queue embedded in an application: several event loops, the app's signal handlers,
blocking threads, and a stop that must not outlive its grace period.

* Several loops using a fresh ``JobQueue`` at once (threads running ``asyncio.run``,
  asgiref's ``async_to_sync``): the first binds it, the others are refused at once with
  nothing written (7 of 8 hung for ever, their jobs written).
* ``run_worker()`` keeps the app's SIGTERM handler: it is still called (the app shuts
  down too) and put back afterwards (it was lost, and SIGTERM reset to kill the
  process). A second SIGTERM during the stop forces it. Under ``asyncio.run`` the
  SIGINT handler it had is put back too.
* A plain ``def`` job still running in its thread when the grace period ends is not
  handed back (it ran twice at once on another worker), and its thread does not hold
  the process at exit (it exited after the job's whole run).
* With Redis unreachable, a stop gives up its outcomes after what is left of its grace
  period (at least 5 s), not 30 s more.
* ``close()`` from another loop than the worker's: a worker whose loop ended is
  forgotten and the queue serves the next loop (``Event loop is closed`` for ever); a
  worker running in another thread's loop is stopped there (it blocked 35 s, then
  failed).
* ``SyncJobQueue.add_job`` racing ``close()``: the job written, its caller gets its id
  and its hooks run (``Event loop is closed``, hooks lost).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from _redis import RedisServer
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobQueue, JobStatus, SyncJobQueue

# Bounds for calls that should return: one that hangs fails the test, never wedges it.
HANG_S = 15
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await asyncio.wait_for(factory.aclose(), HANG_S)


def _in_threads(n: int, fn: Any) -> list[str]:
    """Run ``fn()`` in ``n`` threads released at the same moment; what each got."""
    out: list[str] = ["still waiting"] * n
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        gate.wait()
        try:
            out[i] = f"ok {fn()}"
        except BaseException as exc:
            out[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + HANG_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return out


# ====================================================================== event loops


@pytest.mark.parametrize("call", ["add_job", "get_stats"])
def test_loops_racing_for_a_fresh_queue_are_refused_at_once(
    redis_url: str, prefix: str, call: str
) -> None:
    q = JobQueue("racing", redis=redis_url, prefix=prefix)

    def use() -> Any:
        if call == "add_job":
            return asyncio.run(q.add_job("n", {}))
        return asyncio.run(q.get_stats()).waiting

    t0 = time.monotonic()
    got = _in_threads(8, use)
    assert time.monotonic() - t0 < HANG_S, got
    ok = [g for g in got if g.startswith("ok ")]
    refused = [g for g in got if "another event loop" in g and g.startswith("RuntimeError")]
    assert len(ok) == 1 and len(refused) == 7, got

    async def count() -> int:
        await q.close()  # frees the queue for this loop
        try:
            return (await q.get_stats()).waiting
        finally:
            await q.close()

    # Nothing written by the refused calls.
    assert asyncio.run(count()) == (1 if call == "add_job" else 0)


# ====================================================================== signals


@pytest.fixture
def own_sigterm() -> Any:
    """Whatever the test does to SIGTERM's handler is undone afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.usefixtures("own_sigterm")
async def test_run_worker_chains_and_gives_back_the_apps_sigterm_handler(
    make: QueueFactory,
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    heard: list[int] = []

    def app_handler(signum: int, frame: Any) -> None:  # a web server's, say
        heard.append(signum)

    signal.signal(signal.SIGTERM, app_handler)
    q = make("signals")
    serving = asyncio.ensure_future(q.run_worker())
    await wait_until(lambda: q.worker is not None and q.worker.running, HANG_S)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, HANG_S)  # the worker stopped gracefully
    assert not q.worker.running
    await wait_until(lambda: heard, HANG_S, message="the app's handler to be called")
    assert heard == [signal.SIGTERM]  # the app heard it too: it shuts down as well
    # Given back: SIGTERM is the app's again (it was SIG_DFL, which kills the process).
    assert signal.getsignal(signal.SIGTERM) is app_handler
    os.kill(os.getpid(), signal.SIGTERM)
    await wait_until(lambda: len(heard) == 2, HANG_S)


@pytest.mark.usefixtures("own_sigterm")
async def test_a_second_sigterm_forces_the_stop(make: QueueFactory) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    q = make("forced", worker={"shutdown_timeout": 20_000})
    started = asyncio.Event()

    @q.process("long")
    async def long(job: Any) -> str:
        started.set()
        await asyncio.sleep(60)
        return "done"

    jid = await q.add_job("long", {})
    serving = asyncio.ensure_future(q.run_worker())
    await asyncio.wait_for(started.wait(), HANG_S)
    os.kill(os.getpid(), signal.SIGTERM)  # graceful: the job may take 20 s
    await asyncio.sleep(0.3)
    assert not serving.done()
    t0 = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)  # again: at once
    await asyncio.wait_for(serving, HANG_S)
    assert time.monotonic() - t0 < 5
    info = await wait_for_status(q, jid, JobStatus.WAITING)  # handed back, unspent
    assert info.attempts == 0


def _run_script(body: str, timeout: float = 90) -> tuple[str, float]:
    """Run ``body`` in a fresh interpreter; its output and how long it took."""
    env = dict(os.environ, PYTHONPATH=SRC)
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, took


def test_asyncio_runs_sigint_handler_is_put_back(redis_url: str, prefix: str) -> None:
    out, _ = _run_script(
        f"""
        import asyncio, os, signal
        from kitium_queue import JobQueue

        async def main():
            before = signal.getsignal(signal.SIGINT)  # asyncio.run's own
            q = JobQueue("sigint", redis={redis_url!r}, prefix={prefix!r})
            serving = asyncio.ensure_future(q.run_worker())
            while q.worker is None or not q.worker.running:
                await asyncio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            await serving  # a graceful stop, not asyncio.run's cancellation
            print("given back", signal.getsignal(signal.SIGINT) == before)

        asyncio.run(main())
        """
    )
    assert "given back True" in out, out


# ====================================================================== threads


async def test_a_thread_job_running_past_the_grace_is_left_leased_not_handed_back(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    q = make("threadgrace", worker={"shutdown_timeout": 300})
    running, release = threading.Event(), threading.Event()

    @q.process("blocking")
    def blocking(job: Any) -> str:
        running.set()
        release.wait(HANG_S)
        return "late"

    jid = await q.add_job("blocking", {})
    await q.start()
    try:
        await asyncio.wait_for(asyncio.to_thread(running.wait, HANG_S), HANG_S)
        pool = [t for t in threading.enumerate() if t.name.startswith("kq-threadgrace")]
        assert pool and all(t.daemon for t in pool)  # they do not hold the process at exit
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            await asyncio.wait_for(q.close(), HANG_S)
        # Not handed back while its thread runs on: another worker would start it now.
        info = await q.get_job_status(jid)
        assert info is not None and info.status == JobStatus.ACTIVE
        messages = [r.getMessage() for r in caplog.records]
        assert any("left running there" in m for m in messages), messages
    finally:
        release.set()
    await asyncio.sleep(0.3)  # its late result is not recorded: the lease says who runs it
    info = await q.get_job_status(jid)
    assert info is not None and info.status == JobStatus.ACTIVE and info.result is None


def test_a_process_exits_at_the_grace_with_a_thread_job_running(
    redis_url: str, prefix: str
) -> None:
    out, took = _run_script(
        f"""
        import asyncio, threading, time
        from kitium_queue import JobQueue

        q = JobQueue("exit", redis={redis_url!r}, prefix={prefix!r},
                     worker={{"shutdown_timeout": 300}})
        running = threading.Event()

        @q.process("sleepy")
        def sleepy(job):
            running.set()
            time.sleep(40)

        async def main():
            await q.add_job("sleepy", {{}})
            await q.start()
            await asyncio.to_thread(running.wait, 10)
            await q.close()
            print("closed")

        asyncio.run(main())
        """
    )
    assert "closed" in out
    assert took < 20, f"the process exited {took:.1f} s after start (its job runs 40 s)"


# ====================================================================== Redis down


async def test_a_stop_with_redis_unreachable_gives_up_after_its_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisServer() as srv:
        q = JobQueue("down", redis=srv.url, worker={"shutdown_timeout": 500})
        finish = asyncio.Event()

        @q.process("n")
        async def n(job: Any) -> str:
            await finish.wait()
            return "ok"

        await q.add_job("n", {})
        await q.start()
        await wait_until(lambda: q.worker.leases.runs, HANG_S)
        srv.kill()
        finish.set()  # its outcome cannot reach Redis
        await wait_until(lambda: not q.worker.leases.runs, HANG_S)
        t0 = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="kitium_queue"):
            await asyncio.wait_for(q.close(), 60)
        took = time.monotonic() - t0
    # At least 5 s to flush, the grace being shorter; it was 30 s more.
    assert 4 < took < 12, took
    assert any("could not flush 1 outcome" in r.getMessage() for r in caplog.records)


# ====================================================================== close elsewhere


def test_close_in_a_new_loop_forgets_a_worker_whose_loop_ended(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    q = JobQueue("leftover", redis=redis_url, prefix=prefix)

    @q.process("n")
    async def n(job: Any) -> int:
        return 1

    async def a_test_that_fails_before_close() -> None:
        await q.start()
        jid = await q.add_job("n", {})
        await wait_for_status(q, jid, JobStatus.COMPLETED)

    asyncio.run(a_test_that_fails_before_close())  # its loop ends, the worker with it

    async def the_next_test() -> int:
        await q.close()  # frees the queue for this loop (README)
        try:
            return (await q.get_stats()).completed
        finally:
            await q.close()

    with caplog.at_level(logging.WARNING, logger="kitium_queue"):
        assert asyncio.run(asyncio.wait_for(the_next_test(), HANG_S)) == 1
    assert any("left running when its event loop ended" in r.getMessage() for r in caplog.records)
    assert q.worker is None and not q.lifecycle.running


def test_close_from_another_loop_stops_the_worker_in_its_own(redis_url: str, prefix: str) -> None:
    q = JobQueue("elsewhere", redis=redis_url, prefix=prefix)
    started, ended = threading.Event(), threading.Event()

    @q.process("n")
    async def n(job: Any) -> int:
        return 1

    def worker_thread() -> None:
        async def serve() -> None:
            await q.start()
            started.set()
            await q.worker.stopped.wait()

        asyncio.run(serve())
        ended.set()

    thread = threading.Thread(target=worker_thread, daemon=True)
    thread.start()
    assert started.wait(HANG_S)
    worker = q.worker
    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(q.close(), HANG_S))  # the app's shutdown hook
    assert time.monotonic() - t0 < 5
    assert ended.wait(HANG_S) and not worker.running

    async def after() -> int:
        try:
            return (await q.get_stats()).waiting
        finally:
            await q.close()

    assert asyncio.run(after()) == 0  # and the queue serves this loop


# ====================================================================== blocking client


@pytest.mark.redis_only
def test_sync_add_racing_close_returns_its_id_and_runs_its_hooks(
    redis_url: str, prefix: str
) -> None:
    q = SyncJobQueue("race", redis=redis_url, prefix=prefix)
    heard: list[str] = []
    q.queue.on("job-added", lambda e: heard.append(e.job_id))
    assert q._blocking is not None  # the direct path: a plain Redis server
    real = q._blocking.call
    written, go_on = threading.Event(), threading.Event()

    def slow_reply(*args: Any, **kwargs: Any) -> Any:
        reply = real(*args, **kwargs)  # the job is written
        written.set()
        go_on.wait(HANG_S)  # close() runs meanwhile
        return reply

    q._blocking.call = slow_reply  # type: ignore[method-assign]
    got: list[str] = []
    adder = threading.Thread(target=lambda: got.append(q.add_job("n", {})), daemon=True)
    adder.start()
    assert written.wait(HANG_S)
    q.close()
    go_on.set()
    adder.join(HANG_S)
    assert got and got == heard, (got, heard)


async def test_a_batch_in_a_thread_past_the_grace_is_left_leased_not_handed_back(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain ``def`` batch function runs in the batches' daemon threads, and its jobs
    are known to run there: a stop past its grace leaves them leased (before, they ran
    in the loop's default executor and were handed back while the batch ran on)."""
    q = make("batchgrace", worker={"shutdown_timeout": 300})
    running, release = threading.Event(), threading.Event()

    @q.process_batch("b", size=2, min_size=2)
    def batch(jobs: list[Any]) -> list[str]:
        running.set()
        release.wait(HANG_S)
        return ["late"] * len(jobs)

    ids = await q.add_jobs([("b", {"i": 0}), ("b", {"i": 1})])
    await q.start()
    try:
        await asyncio.wait_for(asyncio.to_thread(running.wait, HANG_S), HANG_S)
        pool = [t for t in threading.enumerate() if t.name.startswith("kq-batch")]
        assert pool and all(t.daemon for t in pool)
        with caplog.at_level(logging.WARNING, logger="kitium_queue"):
            await asyncio.wait_for(q.close(), HANG_S)
        for jid in ids:
            info = await q.get_job_status(jid)
            assert info is not None and info.status == JobStatus.ACTIVE, info
        assert any("left running there" in r.getMessage() for r in caplog.records)
    finally:
        release.set()


def test_an_apps_handler_that_exits_runs_after_the_stop_has_finished(
    redis_url: str, prefix: str
) -> None:
    """An app's SIGTERM handler that calls ``sys.exit`` (a common one) is chained after
    the worker's graceful stop has finished: called at once, it ended the loop mid-stop
    and left the running job active."""
    out, _ = _run_script(
        f"""
        import asyncio, os, signal, sys
        from kitium_queue import JobQueue

        def app_handler(signum, frame):
            print("app handler", flush=True)
            sys.exit(0)

        signal.signal(signal.SIGTERM, app_handler)

        async def main():
            q = JobQueue("exits", redis={redis_url!r}, prefix={prefix!r},
                         worker={{"shutdown_timeout": 10_000}})

            @q.process("slow")
            async def slow(job):
                os.kill(os.getpid(), signal.SIGTERM)  # while it runs
                await asyncio.sleep(1.0)
                return "done"

            jid = await q.add_job("slow", {{}})
            print("job", jid, flush=True)
            await q.run_worker()

        asyncio.run(main())
        """
    )
    assert "app handler" in out, out
    job_id = out.split("job ", 1)[1].split()[0]

    async def status() -> Any:
        q = JobQueue("exits", redis=redis_url, prefix=prefix)
        try:
            return await q.get_job_status(job_id)
        finally:
            await q.close()

    info = asyncio.run(status())
    assert info is not None and info.status == JobStatus.COMPLETED, info
