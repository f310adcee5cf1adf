"""Starting, stopping and registering processors the way people get them wrong.

* ``close()`` / ``worker.stop()`` awaited from inside a job of the worker: the stop
  cannot wait for the job awaiting it; it starts and returns, and the worker stops once
  the job ends (also under ``run_worker``). A ``stop()`` cancelled part-way never leaves
  the worker half-stopped: a later ``close()`` finishes.
* Two ``start()`` at once (two startup hooks): one worker, and ``close()`` stops it;
  ``close()`` while a ``start()`` is under way stops what it starts.
* ``@queue.process`` without the name, and names ``add_job`` refuses: refused at once.
* Registering while the worker runs (it would ignore a replacement and not announce a
  new name), and registering a name twice without ``replace=True``: refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus
from kitium_queue.presence import live_workers

# Generous bounds: a call that should return but hangs fails the test, never wedges it.
HANG_S = 15


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[QueueFactory]:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await asyncio.wait_for(factory.aclose(), HANG_S)


def _kq_tasks(q: JobQueue) -> list[str]:
    """The worker's loops still alive (every one is named ``kq-<part>-<queue>``)."""
    return sorted(
        name
        for t in asyncio.all_tasks()
        if (name := t.get_name()).startswith("kq-") and name.endswith(f"-{q.name}")
    )


# ================================================================ 1. stop from inside a job


@pytest.mark.parametrize("how", ["close", "stop", "close-in-task"])
async def test_a_job_that_closes_its_queue_stops_the_worker(make: QueueFactory, how: str) -> None:
    q = make("selfclose", worker={"shutdown_timeout": 2000})
    said: list[str] = []

    @q.process("quit")
    async def quit_(job: Any) -> str:
        if how == "close":
            await q.close()
        elif how == "stop":
            await q.worker.stop()
        else:  # a task the job starts and awaits is inside the worker too
            await asyncio.gather(q.close())
        said.append("returned")
        return "bye"

    @q.process("ok")
    async def ok(job: Any) -> str:
        return "ok"

    jid = await q.add_job("quit", {})
    await q.start()
    worker = q.worker
    await wait_until(worker.stopped.is_set, timeout=HANG_S, message="the worker to stop")
    assert said == ["returned"] and not worker.running
    # The close the job started releases the connections after the worker stopped
    # (calls under way end first: tests/test_graceful_close.py); waited for here as
    # run_worker() does, so the read below is not the one racing that release.
    await asyncio.wait_for(q.lifecycle.settled(), HANG_S)
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert info.result == "bye"  # the job ended normally: it is not run again
    # Nothing is left half-done: close() returns, start() starts a new worker.
    await asyncio.wait_for(q.close(), HANG_S)
    assert _kq_tasks(q) == []
    await asyncio.wait_for(q.start(), HANG_S)
    assert q.worker is not worker and q.worker.running
    again = await q.add_job("ok", {})
    assert (await wait_for_status(q, again, JobStatus.COMPLETED)).result == "ok"
    await asyncio.wait_for(q.close(), HANG_S)


class _SlowStart:
    """A service whose start awaits a while (a subscription, a first read)."""

    def __init__(self, name: str, delay: float) -> None:
        self.name, self.delay = name, delay
        self.running = False

    async def start(self, queue: Any) -> None:
        await asyncio.sleep(self.delay)
        self.running = True

    async def stop(self) -> None:
        self.running = False


async def test_a_stop_while_the_services_start_stops_them_all(make: QueueFactory) -> None:
    """A job that closes its queue, claimed while a service's start still awaited: the
    stop used to pass the services not started yet, which then started and ran on
    with no worker. The stop now waits for their start, then stops every one."""
    q = make("selfclose-services", worker={"shutdown_timeout": 2000})
    slow, after = _SlowStart("slow", 0.5), _SlowStart("after", 0.0)
    q.add_service(slow)
    q.add_service(after)

    @q.process("quit")
    async def quit_(job: Any) -> None:
        await q.close()

    await q.add_job("quit", {})
    await q.start()
    worker = q.worker
    await wait_until(worker.stopped.is_set, timeout=HANG_S, message="the worker to stop")
    await asyncio.wait_for(q.close(), HANG_S)
    await asyncio.sleep(0.2)
    assert not slow.running and not after.running, (slow.running, after.running)


class _SlowStop:
    """A service whose stop takes a while (a webhook batch letting its requests end)."""

    def __init__(self, name: str, delay: float) -> None:
        self.name, self.delay = name, delay

    async def start(self, queue: Any) -> None:
        return None

    async def stop(self) -> None:
        await asyncio.sleep(self.delay)


async def test_the_services_stop_is_taken_out_of_shutdown_timeout(make: QueueFactory) -> None:
    """shutdown_timeout bounds the whole graceful stop (what a pod's termination grace is
    sized by): a service's slow stop is taken out of the running jobs' grace, not added
    to it. 3 s of grace, 3 s of them in a service's stop, a job that would run 60 s: the
    stop ends after about 3 s (about 6 s when the grace began after the services)."""
    q = make("slowstop", worker={"shutdown_timeout": 3000})
    q.add_service(_SlowStop("slow-stop", 3.0))
    started = asyncio.Event()

    @q.process("long")
    async def long_(job: Any) -> None:
        started.set()
        await asyncio.sleep(60)

    jid = await q.add_job("long", {})
    await q.start()
    await asyncio.wait_for(started.wait(), HANG_S)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(q.worker.stop(), HANG_S)
    took = loop.time() - t0
    assert 2.9 <= took < 4.8, took
    await wait_for_status(q, jid, JobStatus.WAITING)  # handed back, not left leased


async def test_run_worker_returns_when_a_job_closes_the_queue(make: QueueFactory) -> None:
    q = make("selfclose-serve", worker={"shutdown_timeout": 1000})

    @q.process("quit")
    async def quit_(job: Any) -> str:
        await q.close()
        return "bye"

    jid = await q.add_job("quit", {})
    await asyncio.wait_for(q.run_worker(install_signal_handlers=False), HANG_S)
    assert (await wait_for_status(q, jid, JobStatus.COMPLETED)).result == "bye"
    assert not q.worker.running and _kq_tasks(q) == []


async def test_a_stop_cancelled_part_way_does_not_wedge_the_worker(make: QueueFactory) -> None:
    q = make("stop-cancelled", worker={"shutdown_timeout": 30_000})
    release = asyncio.Event()
    running = asyncio.Event()

    @q.process("slow")
    async def slow(job: Any) -> str:
        running.set()
        await release.wait()
        return "done"

    jid = await q.add_job("slow", {})
    await q.start()
    await asyncio.wait_for(running.wait(), HANG_S)
    worker = q.worker
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0.05)  # the stop is waiting for the running job
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    release.set()
    # The stop went on without its cancelled caller; a later close() finishes.
    await asyncio.wait_for(q.close(), HANG_S)
    assert worker.stopped.is_set() and not worker.running
    assert (await wait_for_status(q, jid, JobStatus.COMPLETED)).result == "done"
    assert _kq_tasks(q) == []


# ================================================================ 2. concurrent starts


async def test_two_starts_at_once_make_one_worker_that_close_stops(make: QueueFactory) -> None:
    q = make("twostarts", worker={"concurrency": 2})

    @q.process("j")
    async def j(job: Any) -> str:
        return "ok"

    await asyncio.gather(q.start(), q.start())
    assert [w.id for w in await live_workers(q)] == [q.worker.id]
    done = await q.add_job("j", {})
    await wait_for_status(q, done, JobStatus.COMPLETED)
    await asyncio.wait_for(q.close(), HANG_S)
    assert _kq_tasks(q) == []  # no second worker left running after close()
    assert await live_workers(q) == []
    left = await q.add_job("j", {})
    await asyncio.sleep(0.3)
    info = await q.get_job_status(left)
    assert info is not None and info.status is JobStatus.WAITING


async def test_close_during_a_start_stops_what_it_starts(make: QueueFactory) -> None:
    q = make("closestart")
    q.process("j", lambda job: "ok")
    starting = asyncio.create_task(q.start())
    await asyncio.sleep(0)  # the start is under way
    await asyncio.wait_for(q.close(), HANG_S)
    await starting
    assert q.worker is None or not q.worker.running
    assert _kq_tasks(q) == [] and await live_workers(q) == []


# ================================================================ 4. names


def test_a_bare_process_decorator_is_refused_naming_the_fix(make: QueueFactory) -> None:
    q = make("bare")
    with pytest.raises(ConfigurationError, match=r"@queue\.process\('send_email'\)"):

        @q.process  # type: ignore[call-overload]
        async def send_email(job: Any) -> str:
            return "sent"

    with pytest.raises(ConfigurationError, match=r"@queue\.process\('pack'\)"):

        @q.process_batch  # type: ignore[arg-type]
        async def pack(jobs: list[Any]) -> None:
            return None

    assert dict(q.processors) == {}


@pytest.mark.parametrize(
    "bad",
    [42, None, "", "x" * 300, "two\nlines", "a\udcffb"],
    ids=["int", "none", "empty", "too-long", "line-break", "surrogate"],
)
async def test_process_refuses_the_names_add_job_refuses(make: QueueFactory, bad: Any) -> None:
    q = make("badnames")
    with pytest.raises(ConfigurationError) as by_add:
        await q.add_job(bad, {})
    with pytest.raises(ConfigurationError) as by_process:
        q.process(bad, lambda job: None)
    assert str(by_process.value) == str(by_add.value)
    with pytest.raises(ConfigurationError) as by_batch:
        q.process_batch(bad, lambda jobs: None, size=2)
    assert str(by_batch.value) == str(by_add.value)
    assert dict(q.processors) == {}


# ================================================================ 3. registration


async def test_a_processor_registered_while_the_worker_runs_is_used_and_announced(
    make: QueueFactory,
) -> None:
    """Before, a replacement registered after start() was ignored (the old function kept
    running while ``queue.processors`` showed the new one), and a new name ran but its
    worker's presence still said no live worker had it."""
    q = make("late")

    @q.process("report")
    async def report_v1(job: Any) -> str:
        return "v1"

    await q.start()
    jid = await q.add_job("report", {})
    assert (await wait_for_status(q, jid, JobStatus.COMPLETED)).result == "v1"

    async def report_v2(job: Any) -> str:
        return "v2"

    with pytest.raises(ConfigurationError, match="replace=True"):
        q.process("report", report_v2)
    q.process("report", report_v2, replace=True)
    q.process("late", lambda job: "late")
    jid = await q.add_job("report", {})
    assert (await wait_for_status(q, jid, JobStatus.COMPLETED)).result == "v2"

    async def announced() -> bool:
        (me,) = await live_workers(q)
        return set(me.processors) == {"report", "late"}

    await wait_until(announced, 5)
    late = await q.add_job("late", {})
    assert (await wait_for_status(q, late, JobStatus.COMPLETED)).result == "late"
    why = await q.explain(await q.add_job("late", {}, delay=60_000))
    assert "no-worker" not in [r.code for r in why.reasons]


async def test_a_name_registered_twice_needs_replace(make: QueueFactory) -> None:
    q = make("twice")

    def first(job: Any) -> str:
        return "first"

    def second(job: Any) -> str:
        return "second"

    q.process("dup", first)
    with pytest.raises(ConfigurationError, match="replace=True"):
        q.process("dup", second)
    with pytest.raises(ConfigurationError, match="replace=True"):
        q.process_batch("dup", lambda jobs: None, size=2)
    assert q.processors["dup"] is first
    q.process("dup", second, replace=True)
    assert q.processors["dup"] is second
    jid = await q.add_job("dup", {})
    await q.start()
    assert (await wait_for_status(q, jid, JobStatus.COMPLETED)).result == "second"


async def test_a_partitioned_queue_refuses_a_bare_decorator_and_takes_replace(
    redis_url: str, prefix: str
) -> None:
    from kitium_queue import PartitionedQueue

    orders = PartitionedQueue("orders-p", partitions=2, redis=redis_url, prefix=prefix)
    try:
        with pytest.raises(ConfigurationError, match=r"@queue\.process\('send_email'\)"):

            @orders.process  # type: ignore[arg-type]
            async def send_email(job: Any) -> None:
                return None

        orders.process("n", lambda job: 1)
        with pytest.raises(ConfigurationError, match="replace=True"):
            orders.process("n", lambda job: 2)
        orders.process("n", lambda job: 3, replace=True)
        assert all(q.processors["n"](None) == 3 for q in orders.queues)
    finally:
        await orders.close()


async def test_a_start_refusing_its_concurrency_leaves_close_free(make: QueueFactory) -> None:
    """``start(concurrency=0)`` raised, but left a start marked under way that nothing
    ended: the next ``close()`` waited for it for good (the CLI's ``worker -c 0`` hung)."""
    q = make("bad-conc")
    q.process("n", lambda job: None)
    with pytest.raises(ConfigurationError, match="concurrency"):
        await q.start(concurrency=0)
    await asyncio.wait_for(q.close(), 5)
    await q.start()  # and it can start afterwards
    await asyncio.wait_for(q.close(), 10)


@pytest.mark.redis_only
@pytest.mark.parametrize("round_", range(3))
async def test_a_stop_hands_back_what_the_wake_up_claim_took(
    redis_url: str, prefix: str, round_: int
) -> None:
    """A job added just as a graceful stop begins, while the idle worker's wake-up wait
    (with its claim riding on it) is out: Redis runs the claim, and the stop used to
    cancel the exchange and throw its reply away, so the job stayed leased to the
    stopped worker until its lease ended (then counted a stall). The stop now ends the
    wait through the worker's wake key and hands the claimed job back at once."""
    import time

    from kitium_queue import SyncJobQueue

    q = JobQueue("stop-wake", redis=redis_url, prefix=prefix)
    q.process("work", lambda job: None)
    producer = SyncJobQueue("stop-wake", redis=redis_url, prefix=prefix)
    try:
        await q.start()
        await asyncio.sleep(0.3)  # idle: the waker blocks, its claim queued behind
        jid = producer.add_job("work", {})  # blocks the loop: Redis runs add, then claim
        time.sleep(0.01)  # the claim's reply waits in the waker's socket
        wake_key = q.worker.wake_key
        await asyncio.wait_for(q.close(), HANG_S)
        info = await q.get_job_status(jid)
        assert info is not None and info.status in (JobStatus.WAITING, JobStatus.COMPLETED), (
            info.status if info else None
        )
        assert info.attempts <= 1 and info.stalls == 0, (info.attempts, info.stalls)
        assert not await (await q.client()).exists(wake_key)
    finally:
        producer.close()
        await q.close()


@pytest.mark.redis_only
async def test_a_stop_sends_the_hand_backs_of_a_claim_redis_ran_after_it_began(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job is added after the stop began (so the pumps had no run left and ended):
    the claim riding on the waker's wait, run when the stop ends that wait, leases it;
    its hand-back must still be sent (the pumps wait for that claim), not left unsent
    with the job leased to a worker gone."""
    from kitium_queue import lifecycle

    q = JobQueue("stop-wake-late", redis=redis_url, prefix=prefix)
    producer = JobQueue("stop-wake-late", redis=redis_url, prefix=prefix)
    q.process("work", lambda job: None)
    added: list[str] = []
    end_waker = lifecycle.end_waker

    async def late_add(worker: Any) -> None:
        added.append(await producer.add_job("work", {}))
        await asyncio.sleep(0.05)  # the pumps see a stop with no run held
        await end_waker(worker)

    monkeypatch.setattr(lifecycle, "end_waker", late_add)
    try:
        await q.start()
        await asyncio.sleep(0.3)  # idle: the waker's wait is out, its claim behind it
        await asyncio.wait_for(q.close(), HANG_S)
        info = await producer.get_job_status(added[0])
        assert info is not None and info.status is JobStatus.WAITING, info
        assert info.stalls == 0 and info.attempts == 0, (info.stalls, info.attempts)
    finally:
        await q.close()
        await producer.close()


@pytest.mark.parametrize("use", ["wait_event", "bounded", "wait_for"])
async def test_a_loop_waiting_for_its_signal_ends_when_cancelled_as_it_is_set(use: str) -> None:
    """A worker loop waits for its signal with a timeout; ``asyncio.run`` ending cancels
    it. When the cancel lands as the signal is set, ``asyncio.wait_for`` (Python < 3.12)
    returns and drops the cancel: the loop ran on and ``asyncio.run`` never returned
    (seen about once in 6 runs of tests/test_embedding.py). ``wait_event`` keeps it, and
    so does ``bounded``, which the loops use for any call with a time limit."""
    import sys

    from kitium_queue.runends import bounded, wait_event

    if use == "wait_for" and sys.version_info >= (3, 12):
        pytest.skip("asyncio.wait_for keeps the cancel from Python 3.12 on")
    signal = asyncio.Event()

    async def loop_() -> None:
        while True:
            if use == "wait_event":
                await wait_event(signal, 10.0)
            elif use == "bounded":
                await bounded(signal.wait(), 10.0)
            else:
                await asyncio.wait_for(signal.wait(), 10.0)
            signal.clear()

    task = asyncio.ensure_future(loop_())
    await asyncio.sleep(0.01)
    signal.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    if use != "wait_for":
        assert task.cancelled()
    else:  # the defect, shown: the loop survived its cancel
        assert not task.done()
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


async def test_bounded_returns_raises_and_times_out_as_wait_for() -> None:
    from kitium_queue.runends import bounded

    async def value(v: int, after: float = 0.0) -> int:
        await asyncio.sleep(after)
        return v

    async def boom() -> None:
        raise ValueError("boom")

    assert await bounded(value(3), 1.0) == 3
    assert await bounded(value(4, 0.01), None) == 4
    with pytest.raises(ValueError, match="boom"):
        await bounded(boom(), 1.0)
    ended = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            ended.set()

    with pytest.raises(asyncio.TimeoutError):
        await bounded(slow(), 0.05)
    assert ended.is_set()  # cut off, and ended before the timeout was raised
