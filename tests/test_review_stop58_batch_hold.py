"""``worker={"thread_overrun": "hold"}`` for plain ``def`` batch functions, on a real Redis.

A batch function that is a plain ``def`` runs in a thread of its processor's own pool
(``features/batches.py``). Before, a batch past its jobs' timeout released them at once
whatever ``thread_overrun`` said: their retries ran beside the thread still running the
first batch. With ``"hold"`` every job of such a batch now stays leased (renewed,
fenced) and its slot taken until the batch's thread returns (``overruns.hold``, reached
through ``runends.thread_of``), bounded by ``thread_overrun_max`` (one ERROR naming the
jobs, then they are released together). The default ``"release"`` is unchanged: the
retries may run beside the thread.

The batch pool no longer clogs: once every job of a running batch left it (timeout,
``cancel_job()``, a stop) while its thread runs on, the processor takes a fresh pool (as
the runner does for plain processors), and a batch whose call had not started yet is
dropped instead of running later for jobs that left it.

Each batch function counts the runs of each job inside it with a lock (``Runs``):
``most`` is the most runs of one job at once, ``seen`` the order of starts and ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

import test_review_stop57_overrun
from helpers import QueueFactory, wait_for_status, wait_until
from kitium_queue import JobStatus
from kitium_queue.features import batches

_LOGGER = "kitium_queue.worker"
SECRET = "payload-batch-hold-5c1"
TIMEOUT_MS = 300
JOBS = 3

pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(120)]


#: test_review_stop57_overrun's fixture: a QueueFactory on the test's Redis.
make = test_review_stop57_overrun.make


class Runs:
    """The runs of each job inside a batch function, and its calls: thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.most = 0
        self.seen: list[tuple[str, str, int]] = []
        self.calls: list[list[str]] = []
        self.second = threading.Event()  # a second attempt of some job started

    def enter(self, jobs: list[Any]) -> None:
        with self.lock:
            self.calls.append([j.id for j in jobs])
            for j in jobs:
                self.active[j.id] = self.active.get(j.id, 0) + 1
                self.most = max(self.most, self.active[j.id])
                self.seen.append(("start", j.id, j.attempts))
        if any(j.attempts >= 2 for j in jobs):
            self.second.set()

    def leave(self, jobs: list[Any]) -> None:
        with self.lock:
            for j in jobs:
                self.active[j.id] -= 1
                self.seen.append(("end", j.id, j.attempts))

    def ended(self, attempt: int) -> bool:
        with self.lock:
            return any(e[0] == "end" and e[2] == attempt for e in self.seen)

    def starts(self, attempt: int) -> list[str]:
        with self.lock:
            return [e[1] for e in self.seen if e[0] == "start" and e[2] == attempt]


def _batch_fn(runs: Runs, release: threading.Event) -> Any:
    """A plain ``def`` batch function: a batch holding a first attempt blocks until
    ``release`` (30 s at most) or a second attempt of some job starts beside it; the
    others return at once."""

    def work(jobs: list[Any]) -> list[str]:
        runs.enter(jobs)
        try:
            if any(j.attempts == 1 for j in jobs):
                for _ in range(1500):
                    if release.is_set() or runs.second.is_set():
                        break
                    release.wait(0.02)
            return ["done"] * len(jobs)
        finally:
            runs.leave(jobs)

    return work


def _said(caplog: pytest.LogCaptureFixture, *parts: str, level: int = 0) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == _LOGGER and r.levelno >= level and all(p in r.getMessage() for p in parts)
    ]


def _worker(hold: bool, **more: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"concurrency": 8, "scheduler": False, **more}
    if hold:
        config["thread_overrun"] = "hold"
    return config


async def _started(q: Any, runs: Runs, release: threading.Event) -> list[str]:
    """Register the batch function, add ``JOBS`` jobs (claimed together: one batch),
    start ``q`` and wait until their first batch ran past its timeout."""
    q.process_batch("work", _batch_fn(runs, release), size=JOBS, max_wait=2000)
    opts = {"timeout": TIMEOUT_MS, "attempts": 2, "backoff": {"type": "fixed", "delay": 0}}
    ids = [await q.add_job("work", {"secret": SECRET, "n": n}, **opts) for n in range(JOBS)]
    await q.start()
    worker = q.worker
    assert worker is not None

    def past_timeout() -> bool:
        return bool(runs.calls) and all(
            r.reason == "timeout" for j in runs.calls[0] if (r := worker.leases.runs.get(j))
        )

    await wait_until(lambda: runs.calls, timeout=30)
    assert sorted(runs.calls[0]) == sorted(ids), runs.calls  # one batch of them all
    await wait_until(past_timeout, timeout=30)
    return ids


async def _all(q: Any, ids: list[str], *statuses: JobStatus) -> None:
    for jid in ids:
        await wait_for_status(q, jid, *statuses, timeout=30)


# ---------------------------------------------------------------------- the default
async def test_by_default_the_retries_run_beside_the_batch_thread(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``"release"`` (the default) as before: the batch's jobs are failed by their
    timeout at once and retried while the first batch's thread still runs."""
    caplog.set_level(logging.INFO, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    q = make("release", worker=_worker(False))
    try:
        ids = await _started(q, runs, release)
        await _all(q, ids, JobStatus.COMPLETED)
        await wait_until(lambda: runs.ended(1), timeout=30)
    finally:
        release.set()
    assert runs.most == 2, runs.seen  # a job ran twice at once
    first_end = runs.seen.index(next(e for e in runs.seen if e[0] == "end" and e[2] == 1))
    second_start = runs.seen.index(next(e for e in runs.seen if e[0] == "start" and e[2] == 2))
    assert second_start < first_end, runs.seen
    assert not _said(caplog, "was held"), caplog.text
    assert SECRET not in caplog.text


# ---------------------------------------------------------------------- hold
async def test_hold_keeps_every_job_of_the_batch_until_its_thread_returns(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``"hold"`` the batch's jobs stay held past their timeout over several lease
    lengths, while a second worker sweeps for expired leases and claims: nobody takes
    them, their slots stay taken, and no retry starts before the batch's thread returned."""
    caplog.set_level(logging.INFO, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    settings = {"lock_duration": 1000, "max_stalled_interval": 200}
    first = make("hold", worker=_worker(True, thread_overrun_max=120_000), settings=settings)
    other = make("hold", worker=_worker(True, thread_overrun_max=120_000), settings=settings)
    try:
        ids = await _started(first, runs, release)
        worker = first.worker
        assert worker is not None
        other.process_batch("work", _batch_fn(runs, release), size=JOBS, max_wait=2000)
        await other.start()  # sweeps every 200 ms: an expired lease would be recovered
        client = await first.client()
        tokens = [await client.hget(first.keys.job(j), "lt") for j in ids]
        for _ in range(30):  # three lease lengths
            await asyncio.sleep(0.1)
            for jid in ids:
                info = await first.get_job_status(jid)
                assert info is not None and info.status is JobStatus.ACTIVE, info
                assert jid in worker.leases.runs
            assert runs.starts(2) == [], runs.seen
            assert worker.slots_taken() >= JOBS
        assert [await client.hget(first.keys.job(j), "lt") for j in ids] == tokens
    finally:
        release.set()
    await _all(first, ids, JobStatus.COMPLETED)
    assert runs.most == 1, runs.seen  # never two runs of one job at once
    assert not runs.second.is_set() or runs.ended(1)
    for jid in ids:
        info = await first.get_job_status(jid)
        assert info is not None and info.attempts == 2, info
        assert len(_said(caplog, f"job {jid} (work) was held", "returned")) == 1, caplog.text
        ends = [i for i, e in enumerate(runs.seen) if e[1] == jid]
        assert [runs.seen[i][0::2] for i in ends] == [
            ("start", 1),
            ("end", 1),
            ("start", 2),
            ("end", 2),
        ], runs.seen
    assert SECRET not in caplog.text


async def test_the_cap_gives_up_on_the_batch_with_one_error_naming_its_jobs(
    make: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Past ``thread_overrun_max`` the worker gives up holding the batch's jobs: one
    ERROR names them all (never their payloads), their timeouts are recorded, and the
    retries may then run beside the thread, as by default."""
    caplog.set_level(logging.INFO, logger=_LOGGER)
    runs, release = Runs(), threading.Event()
    q = make("capped", worker=_worker(True, thread_overrun_max=700))
    try:
        ids = await _started(q, runs, release)
        await _all(q, ids, JobStatus.COMPLETED)
        await wait_until(lambda: runs.ended(1), timeout=30)
    finally:
        release.set()
    errors = _said(caplog, "gives up holding", level=logging.ERROR)
    assert len(errors) == 1, caplog.text
    assert f"{JOBS} jobs, " in errors[0], errors
    assert all(f"{jid} (work)" in errors[0] for jid in ids), errors
    assert "thread_overrun_max=700 ms" in errors[0]
    assert runs.most == 2, runs.seen  # released after the cap: the retries ran beside it
    assert SECRET not in caplog.text


async def test_cancel_job_ends_the_hold_of_a_batch_job(make: QueueFactory) -> None:
    """``cancel_job()`` of one held job of the batch ends its hold at once (failed for
    good); the others stay held until the thread returns."""
    runs, release = Runs(), threading.Event()
    settings = {"lock_duration": 30_000, "lock_renew_time": 500}
    q = make("cancel", worker=_worker(True, thread_overrun_max=120_000), settings=settings)
    try:
        ids = await _started(q, runs, release)
        await q.cancel_job(ids[0])
        await wait_for_status(q, ids[0], JobStatus.DLQ, JobStatus.FAILED, timeout=30)
        for jid in ids[1:]:
            info = await q.get_job_status(jid)
            assert info is not None and info.status is JobStatus.ACTIVE, info
        assert runs.starts(2) == [], runs.seen
    finally:
        release.set()
    await _all(q, ids[1:], JobStatus.COMPLETED)
    assert runs.most == 1, runs.seen


async def test_a_stop_leaves_held_batch_jobs_leased(make: QueueFactory) -> None:
    """A stop while the batch's jobs are held: the thread is waited for up to the grace,
    then its jobs are left leased (nothing recorded), as any plain ``def`` run's."""
    runs, release = Runs(), threading.Event()
    q = make("stop", worker=_worker(True, thread_overrun_max=120_000, shutdown_timeout=500))
    worker = None
    try:
        ids = await _started(q, runs, release)
        worker = q.worker
        assert worker is not None
        await asyncio.wait_for(worker.stop(), 60)
        for jid in ids:
            info = await q.get_job_status(jid)
            assert info is not None and info.status is JobStatus.ACTIVE, info
            assert info.attempts == 1 and not info.failed_reason, info
    finally:
        release.set()
    await wait_until(lambda: runs.ended(1), timeout=30)
    assert runs.starts(2) == [], runs.seen


# ---------------------------------------------------------------------- the pool
async def test_a_hung_batch_thread_does_not_keep_later_batches_waiting(
    make: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once every job of a running batch left it while its thread runs on, the next
    batch runs in a fresh pool: before, it waited behind the hung thread (here the only
    one) until its own jobs timed out."""
    monkeypatch.setattr(batches, "_BATCH_THREADS", 1)
    hang, ran = threading.Event(), threading.Event()

    def work(jobs: list[Any]) -> list[str]:
        if any(j.data == "hang" for j in jobs):
            ran.set()
            hang.wait(30)
        return ["done"] * len(jobs)

    q = make("clog", worker=_worker(False))
    q.process_batch("work", work, size=1, max_wait=0)
    await q.start()
    try:
        stuck = await q.add_job("work", "hang", timeout=TIMEOUT_MS, attempts=1)
        await wait_for_status(q, stuck, JobStatus.DLQ, JobStatus.FAILED, timeout=30)
        assert ran.is_set() and not hang.is_set()
        later = await q.add_job("work", "quick", timeout=10_000, attempts=1)
        await wait_for_status(q, later, JobStatus.COMPLETED, timeout=30)
        assert not hang.is_set()  # the hung thread still runs
    finally:
        hang.set()


async def test_a_batch_whose_call_never_started_is_dropped_once_its_jobs_left(
    make: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch queued behind a busy pool whose jobs all timed out before its call
    started is dropped: before, its function ran later for jobs that had left it (and
    were failed, or retried elsewhere)."""
    monkeypatch.setattr(batches, "_BATCH_THREADS", 1)
    hang = threading.Event()
    seen: list[Any] = []

    def work(jobs: list[Any]) -> list[str]:
        seen.extend(j.data for j in jobs)
        hang.wait(30)
        return ["done"] * len(jobs)

    q = make("queued", worker=_worker(False))
    q.process_batch("work", work, size=1, max_wait=0)
    ids = [await q.add_job("work", n, timeout=TIMEOUT_MS, attempts=1) for n in range(2)]
    await q.start()
    try:
        await _all(q, ids, JobStatus.DLQ, JobStatus.FAILED)
        assert len(seen) == 1, seen  # one call runs, the other waits for a thread
    finally:
        hang.set()
    await asyncio.sleep(0.5)  # the queued call would start within a few ms
    assert len(seen) == 1, seen
