"""``worker={"thread_overrun": "hold"}``: a plain ``def`` processor past its timeout keeps
its job leased and its slot taken until its thread returns, on a real Redis.

A thread cannot be stopped: by default (``"release"``) the timeout's failure is recorded
at once and the slot freed, so the job's retry may run beside the thread still running
(README, "Timeouts of plain functions"; a WARNING says so). With ``"hold"`` the run's
task waits for its thread (``overruns.hold``): the lease is renewed with the others (no
other worker can take the job), the timeout's failure is recorded only once the thread
returned, so the retry never starts beside it; ``thread_overrun_max`` bounds the wait
(an ERROR names the job, then the run is released as by default). A stop, a lost lease
and ``cancel_job()`` end a hold as they end any run.

Each processor counts the runs inside it with a lock (``Runs``): ``most`` is the most
that ran at once, ``seen`` the order in which they started and ended.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import ConfigurationError, JobQueue, JobStatus, WorkerConfig

_LOGGER = "kitium_queue.worker"
SECRET = "payload-overrun-7f3"
TIMEOUT_MS = 200

pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(120)]


@pytest.fixture
async def make(redis_url: str, prefix: str) -> Any:
    factory = QueueFactory(redis_url, prefix)
    yield factory
    await factory.aclose()


class Runs:
    """The runs inside a processor: thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.seen: list[tuple[str, int]] = []
        self.second = threading.Event()  # the second attempt started

    def enter(self, attempt: int) -> None:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.seen.append(("start", attempt))
        if attempt >= 2:
            self.second.set()

    def leave(self, attempt: int) -> None:
        with self.lock:
            self.active -= 1
            self.seen.append(("end", attempt))

    def ended(self, attempt: int) -> bool:
        with self.lock:
            return ("end", attempt) in self.seen


def _processor(runs: Runs, release: threading.Event) -> Any:
    """A plain ``def`` processor: its first attempt blocks until ``release`` (30 s at
    most) or the job's second attempt starts beside it; later attempts return at once."""

    def work(job: Any) -> str:
        runs.enter(job.attempts)
        try:
            if job.attempts == 1:
                while not release.is_set() and not runs.second.is_set():
                    release.wait(0.02)
            return "done"
        finally:
            runs.leave(job.attempts)

    return work


def _said(caplog: pytest.LogCaptureFixture, *parts: str, level: int = 0) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == _LOGGER and r.levelno >= level and all(p in r.getMessage() for p in parts)
    ]


def _worker(hold: bool, **more: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"concurrency": 2, "scheduler": False, **more}
    if hold:
        config["thread_overrun"] = "hold"
    return config


async def _add(q: Any) -> str:
    return await q.add_job(
        "work",
        {"secret": SECRET},
        timeout=TIMEOUT_MS,
        attempts=2,
        backoff={"type": "fixed", "delay": 0},
    )


async def _held(q: Any, job_id: str) -> None:
    """Wait until ``job_id``'s first run is past its timeout and held by ``q``'s worker."""
    worker = q.worker
    assert worker is not None

    def held() -> bool:
        run = worker.leases.runs.get(job_id)
        return run is not None and run.reason == "timeout"

    await wait_until(held, timeout=30)


# ---------------------------------------------------------------------- the default
async def test_by_default_the_retry_runs_beside_the_thread_with_a_warning(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Today's behaviour is the default: the slot is freed at the timeout, the retry
    starts while the first run's thread still runs, and a WARNING says so."""
    assert WorkerConfig().thread_overrun == "release"
    caplog.set_level(logging.INFO, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    q = make("release", worker=_worker(False))
    q.process("work", _processor(runs, release))
    await q.start()
    jid = await _add(q)
    try:
        await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=30)
        await wait_until(lambda: runs.ended(1), timeout=30)
    finally:
        release.set()
    assert runs.most == 2, runs.seen  # the two runs of one job overlapped
    assert runs.seen.index(("start", 2)) < runs.seen.index(("end", 1)), runs.seen
    warned = _said(caplog, jid, "was ended by its timeout", "a retry may run beside")
    assert len(warned) == 1, caplog.text
    assert not _said(caplog, "was held"), caplog.text
    assert SECRET not in caplog.text


# ---------------------------------------------------------------------- hold
async def test_hold_keeps_the_lease_and_the_slot_until_the_thread_returns(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``"hold"`` the first run holds its job past its timeout, over several lease
    lengths, while a second worker sweeps for expired leases and claims: nobody takes the
    job, the slot stays taken, and the retry starts only after the thread returned."""
    caplog.set_level(logging.INFO, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    settings = {"lock_duration": 1000, "max_stalled_interval": 200}
    first = make("hold", worker=_worker(True, thread_overrun_max=120_000), settings=settings)
    other = make("hold", worker=_worker(True, thread_overrun_max=120_000), settings=settings)
    first.process("work", _processor(runs, release))
    await first.start()
    jid = await _add(first)
    try:
        await _held(first, jid)
        worker = first.worker
        assert worker is not None
        other.process("work", _processor(runs, release))
        await other.start()  # sweeps every 200 ms: an expired lease would be recovered
        client = await first.client()
        token = await client.hget(first.keys.job(jid), "lt")
        # Three lease lengths: the lease is renewed (else the sweep recovers the job and
        # a worker runs it again at once), the job stays active, its slot taken.
        for _ in range(30):
            await asyncio.sleep(0.1)
            info = await first.get_job_status(jid)
            assert info is not None and info.status is JobStatus.ACTIVE, info
            assert runs.seen == [("start", 1)], runs.seen
            assert jid in worker.leases.runs and worker.slots_taken() >= 1
        assert await client.hget(first.keys.job(jid), "lt") == token  # one lease all along
    finally:
        release.set()
    await wait_for_status(first, jid, JobStatus.COMPLETED, timeout=30)
    assert runs.most == 1, runs.seen  # never two runs of the job at once
    assert runs.seen == [("start", 1), ("end", 1), ("start", 2), ("end", 2)], runs.seen
    info = await first.get_job_status(jid)
    assert info is not None and info.attempts == 2
    held = _said(caplog, jid, "was held", "until its plain `def` processor's thread returned")
    assert len(held) == 1, caplog.text
    assert not _said(caplog, "a retry may run beside"), caplog.text
    assert SECRET not in caplog.text


async def test_the_cap_gives_up_holding_with_an_error_naming_the_job(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Past ``thread_overrun_max`` the worker gives up: an ERROR names the job (never
    its payload), the timeout is recorded and the slot freed, and the retry may then run
    beside the thread, as by default."""
    caplog.set_level(logging.INFO, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    q = make("capped", worker=_worker(True, thread_overrun_max=600))
    q.process("work", _processor(runs, release))
    await q.start()
    jid = await _add(q)
    try:
        await _held(q, jid)
        await wait_for_status(q, jid, JobStatus.COMPLETED, timeout=30)
        await wait_until(lambda: runs.ended(1), timeout=30)
    finally:
        release.set()
    errors = _said(caplog, jid, "gives up holding", level=logging.ERROR)
    assert len(errors) == 1, caplog.text
    assert "thread_overrun_max=600 ms" in errors[0]
    # Released after the cap: its retry started while the first thread still ran (the
    # first attempt returns only once the second started).
    assert runs.most == 2, runs.seen
    # The ERROR said it all: no WARNING for the same run on top.
    assert not _said(caplog, "was ended by its timeout"), caplog.text
    assert SECRET not in caplog.text


async def test_a_stop_waits_for_a_held_thread_up_to_its_grace_then_leaves_it_leased(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop while a run is held: the held thread is waited for up to the grace, then
    left leased as any plain ``def`` run still in its thread (nothing recorded: it runs
    again once its lease expired); the retry never starts beside it."""
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    q = make("stop-held", worker=_worker(True, thread_overrun_max=120_000, shutdown_timeout=500))
    q.process("work", _processor(runs, release))
    await q.start()
    jid = await _add(q)
    worker = q.worker
    assert worker is not None
    try:
        await _held(q, jid)
        await asyncio.wait_for(worker.stop(), 60)
        info = await q.get_job_status(jid)
        assert info is not None and info.status is JobStatus.ACTIVE, info  # left leased
        assert info.attempts == 1
        left = _said(caplog, jid, "still running in a thread at the end of shutdown_timeout")
        assert len(left) == 1, caplog.text
        assert runs.seen == [("start", 1)], runs.seen
    finally:
        release.set()
    await wait_until(lambda: runs.ended(1), timeout=30)
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.ACTIVE  # what it returned: ignored


async def test_a_held_thread_that_returns_within_the_grace_has_its_timeout_recorded(
    make: QueueFactory,
) -> None:
    """A stop while a run is held and its thread returns within the grace: the stop
    records the timeout's failure (the retry waits in the queue, attempts spent: 1)."""
    runs, release = Runs(), threading.Event()
    q = make("stop-back", worker=_worker(True, thread_overrun_max=120_000))
    q.process("work", _processor(runs, release))
    await q.start()
    jid = await _add(q)
    worker = q.worker
    assert worker is not None
    try:
        await _held(q, jid)
        stop = asyncio.ensure_future(worker.stop())
        await wait_until(lambda: worker.stopping, timeout=30)
        assert not stop.done()  # it waits for the held thread
        release.set()
        await asyncio.wait_for(stop, 60)
    finally:
        release.set()
    info = await q.get_job_status(jid)
    assert info is not None, jid
    assert info.status in (JobStatus.WAITING, JobStatus.DELAYED), info
    assert info.attempts == 1
    assert "exceeded its timeout" in (info.failed_reason or ""), info
    assert runs.seen == [("start", 1), ("end", 1)], runs.seen


async def test_a_held_run_that_lost_its_lease_records_nothing(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Fencing: the lease of a held run taken away (its token replaced, as when another
    worker took the job): the next renewal finds it lost, the hold ends, and neither the
    timeout nor what the thread returns is recorded."""
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    settings = {"lock_duration": 1000}
    q = make("fenced", worker=_worker(True, thread_overrun_max=120_000), settings=settings)
    q.process("work", _processor(runs, release))
    await q.start()
    jid = await _add(q)
    worker = q.worker
    assert worker is not None
    client = await q.client()
    try:
        await _held(q, jid)
        await client.hset(q.keys.job(jid), "lt", "someone-else")
        await wait_until(lambda: jid not in worker.leases.runs, timeout=30)
        assert _said(caplog, jid, "abandoning this run"), caplog.text
    finally:
        release.set()
    await wait_until(lambda: runs.ended(1), timeout=30)
    await asyncio.sleep(0.3)  # an outcome would be flushed within a few ms
    assert await client.hget(q.keys.job(jid), "lt") == b"someone-else"
    info = await q.get_job_status(jid)
    assert info is not None and info.status is JobStatus.ACTIVE, info
    assert info.attempts == 1 and not info.failed_reason, info
    assert runs.seen == [("start", 1), ("end", 1)], runs.seen


async def test_cancel_job_ends_a_hold_and_fails_the_job_for_good(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``cancel_job()`` of a held run ends the hold at once, as it ends any run: the job
    fails for good (no retry follows it), and the WARNING says its thread runs on."""
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    # cancel_job() reaches a worker with its lease renewal: renewed every 500 ms (the
    # lease itself stays 30 s), the cancellation arrives within a renewal, not 15 s.
    settings = {"lock_duration": 30_000, "lock_renew_time": 500}
    q = make("cancel-held", worker=_worker(True, thread_overrun_max=120_000), settings=settings)
    q.process("work", _processor(runs, release))
    await q.start()
    jid = await _add(q)
    try:
        await _held(q, jid)
        await q.cancel_job(jid)
        await wait_for_status(q, jid, JobStatus.DLQ, JobStatus.FAILED, timeout=30)
        assert runs.seen == [("start", 1)], runs.seen  # the thread still runs
        assert _said(caplog, jid, "was ended by cancel_job()"), caplog.text
    finally:
        release.set()
    await wait_until(lambda: runs.ended(1), timeout=30)
    assert runs.most == 1


# ---------------------------------------------------------------------- the options
def test_the_options_are_checked_when_given() -> None:
    assert WorkerConfig(thread_overrun="hold").thread_overrun_max is None
    assert WorkerConfig(thread_overrun_max=timedelta(seconds=2)).thread_overrun_max == 2000
    assert WorkerConfig(thread_overrun_max=0.4).thread_overrun_max == 1
    for bad in ("HOLD", "kill", None, True, ["hold"]):
        with pytest.raises(ConfigurationError, match=r"worker\.thread_overrun must be"):
            WorkerConfig(thread_overrun=bad)  # type: ignore[arg-type]
    for cap in (0, -1, float("nan"), "10s", True):
        with pytest.raises(ConfigurationError, match=r"worker\.thread_overrun_max"):
            WorkerConfig(thread_overrun_max=cap)
    with pytest.raises(ConfigurationError, match="did you mean 'thread_overrun'"):
        JobQueue("opts", worker={"thread_overun": "hold"})
    # The checks that moved with them still hold.
    with pytest.raises(ConfigurationError, match=r"worker\.scheduler must be True or False"):
        WorkerConfig(scheduler="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"worker\.max_jobs_per_child"):
        WorkerConfig(max_jobs_per_child=0)
